"""Run the Erlang helper module etf_gen.erl for the ETF interop tests.

It is compiled with erlc into a temporary directory at test time. A missing ``erl``
or ``erlc`` is a test failure, never a skip: the interop suite exists to prove
compatibility with a real Erlang.
"""

from __future__ import annotations

import os
import pathlib
import select
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

SUPPORT_DIR = pathlib.Path(__file__).resolve().parent
TIMEOUT = 120

# Option sets in the order etf_gen.erl's ?OPTION_SETS lists them, as
# (compressed, minor_version) for pyfabric.etf.encode. OTP 25's default minor is 1.
OPTION_SETS = [
    ("[]", False, 1),
    ("[{minor_version,0}]", False, 0),
    ("[{minor_version,1}]", False, 1),
    ("[{minor_version,2}]", False, 2),
    ("[compressed]", True, 1),
    ("[{compressed,9},{minor_version,1}]", 9, 1),
    ("[{compressed,1},{minor_version,0}]", 1, 0),
    ("[{minor_version,2},{compressed,6}]", 6, 2),
]


def find_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: the ETF interop tests need Erlang/OTP (make erlang)")
    return path


class Erl:
    """A compiled etf_gen module and ways to call it."""

    def __init__(self, beam_dir: pathlib.Path) -> None:
        self.beam_dir = beam_dir
        self.erl = find_tool("erl")

    def run(self, function: str, *args: str) -> str:
        cmd = [self.erl, "-noshell", "-pa", str(self.beam_dir), "-run", "etf_gen", function, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def echo(self) -> EchoProcess:
        return EchoProcess(self)


class EchoProcess:
    """One long-running erl that decodes each frame and re-encodes it ({ok, Term})."""

    def __init__(self, erl: Erl) -> None:
        # -noinput: the Erlang shell must not compete with etf_gen for stdin.
        cmd = [erl.erl, "-noinput", "-pa", str(erl.beam_dir), "-run", "etf_gen", "echo"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)

    def _read_exact(self, size: int, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        chunks, remaining = [], size
        while remaining:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                pytest.fail(f"erl echo process did not answer within {timeout}s")
            chunk = os.read(fd, remaining)
            if not chunk:
                pytest.fail(f"erl echo process died (exit code {self.proc.poll()})")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def roundtrip(self, data: bytes, timeout: float = 30.0) -> bytes:
        assert self.proc.stdin is not None
        self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        self.proc.stdin.flush()
        (size,) = struct.unpack(">I", self._read_exact(4, timeout))
        return self._read_exact(size, timeout)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def compile_helpers() -> Iterator[Erl]:
    erlc = find_tool("erlc")
    with tempfile.TemporaryDirectory(prefix="etf_interop_") as tmp:
        proc = subprocess.run(
            [erlc, "-o", tmp, str(SUPPORT_DIR / "etf_gen.erl")],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            pytest.fail(f"erlc etf_gen.erl failed:\n{proc.stdout}\n{proc.stderr}")
        yield Erl(pathlib.Path(tmp))


def read_records(path: pathlib.Path) -> list[bytes]:
    """<<Size:32, Bin/binary>> records."""
    data = path.read_bytes()
    records, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos)
        records.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return records


def write_records(path: pathlib.Path, records: list[bytes]) -> None:
    path.write_bytes(b"".join(struct.pack(">I", len(r)) + r for r in records))
