"""What `make bench` runs against: Erlang nodes, the Python server, statistics, machine info.

:class:`Env` starts (and always stops) everything the messaging and scale benchmarks need:

- ``srv``: an ``erl`` node running ``bench/erl/fabric_bench.erl`` with two fabric_peer
  servers (extended; legacy authentication allowed) serving ``bench_echo``,
  ``bench_counter`` and ``bench_pids``;
- ``cli``: a second ``erl`` node, the Erlang-side driver: fabric_peer clients of ``srv``
  (extended and ``mode => legacy``) and, as the reference, plain Erlang distribution to
  ``srv`` (both nodes run with ``-sname`` and a random ``-setcookie``);
- ``pysrv``: ``bench/pyserver.py``, a pyfabric server in its own process.

Everything listens on 127.0.0.1 with OS-picked ports. Both erl nodes run without
scheduler busy-waiting (``+sbwt none``...), so an idle node does not steal a core from the
pairing being measured.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import pathlib
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
EBIN = ROOT / "erlang_peer" / "_build" / "default" / "lib" / "fabric_peer" / "ebin"
ERL_SOURCES = sorted((BENCH / "erl").glob("*.erl"))
ERL_FLAGS = ["+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none"]


class BenchError(RuntimeError):
    pass


LIVE: set[asyncio.subprocess.Process] = set()
"""Every subprocess started here and not yet stopped (see :func:`kill_leftovers`)."""
STARTED_EPMD = False


def kill_leftovers() -> None:
    """Last resort (the runner interrupted): kill whatever is still running, by pid."""
    global STARTED_EPMD
    for proc in list(LIVE):
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
    LIVE.clear()
    if STARTED_EPMD:
        STARTED_EPMD = False
        stop_epmd_if_idle()


# -- statistics and machine ------------------------------------------------------------


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (same rule as the Erlang side)."""
    n = len(sorted_values)
    return sorted_values[max(1, min(n, round(p * n))) - 1]


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over repetitions of every numeric field (samples with an error are skipped)."""
    good = [s for s in samples if "error" not in s]
    out: dict[str, Any] = {"repetitions": len(good)}
    if len(good) != len(samples):
        out["errors"] = [s["error"] for s in samples if "error" in s]
    if not good:
        return out
    for key, value in good[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(s[key] for s in good if key in s)
        elif isinstance(value, str):
            out[key] = value
    return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else [0.0, 0.0, 0.0]


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "loadavg": loadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "event_loop": event_loop_name(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def event_loop_name() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    return f"uvloop {uvloop.__version__}"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (as pyfabric's blocking facade does), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# -- the Erlang nodes ---------------------------------------------------------------------


def compile_erl(outdir: str) -> None:
    erlc = shutil.which("erlc")
    if erlc is None:
        raise BenchError("erlc not found: make erlang")
    if not (EBIN / "fabric_peer.beam").exists():
        raise BenchError(f"{EBIN} has no fabric_peer.beam: make peer")
    subprocess.run([erlc, "-o", outdir, "-pa", str(EBIN), *map(str, ERL_SOURCES)], check=True, capture_output=True, timeout=120)


def epmd_running() -> bool:
    epmd = shutil.which("epmd")
    if epmd is None:
        return False
    return subprocess.run([epmd, "-names"], capture_output=True, timeout=10).returncode == 0


def stop_epmd_if_idle() -> None:
    """Stop an epmd this run started, unless some node registered with it meanwhile."""
    epmd = shutil.which("epmd")
    if epmd is None:
        return
    names = subprocess.run([epmd, "-names"], capture_output=True, text=True, timeout=10)
    if names.returncode == 0 and "name " not in names.stdout:
        subprocess.run([epmd, "-kill"], capture_output=True, timeout=10)


class ErlNode:
    """One ``erl`` running ``fabric_bench`` (one command per line; ``ok <JSON>`` replies)."""

    def __init__(self, label: str, beam_dir: str, *, sname: str | None, cookie: str) -> None:
        self.label = label
        self.beam_dir = beam_dir
        self.sname = sname
        self.cookie = cookie
        self.node = ""
        self.proc: asyncio.subprocess.Process | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=50)
        self._stderr_task: asyncio.Task[None] | None = None
        self.broken = ""  # set when a reply did not come: later replies would be out of step

    async def start(self, timeout: float = 30.0) -> None:
        cmd = [shutil.which("erl") or "erl", "-noshell", *ERL_FLAGS]
        if self.sname:
            cmd += ["-sname", self.sname, "-setcookie", self.cookie]
        cmd += ["-pa", str(EBIN), "-pa", self.beam_dir, "-run", "fabric_bench", "main"]
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        LIVE.add(self.proc)
        self._stderr_task = asyncio.get_running_loop().create_task(self._read_stderr())
        line = await self._readline(timeout)
        if not line.startswith("ready "):
            raise BenchError(f"{self.label}: unexpected first line {line!r}; stderr: {self.stderr_tail()}")
        self.node = line.split(None, 1)[1]

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self._stderr.append(line.decode(errors="replace").rstrip())

    def stderr_tail(self) -> str:
        return " | ".join(self._stderr)

    async def _readline(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                raw = await self.proc.stdout.readline()
        except TimeoutError:
            self.broken = f"{self.label}: no answer within {timeout} s"
            raise BenchError(f"{self.broken}; stderr: {self.stderr_tail()}") from None
        if not raw:
            raise BenchError(f"{self.label}: the node exited; stderr: {self.stderr_tail()}")
        return raw.decode(errors="replace").rstrip("\n")

    async def command(self, term: str, timeout: float = 900.0) -> Any:
        """Send one command (an Erlang term); return its decoded JSON result."""
        assert self.proc is not None and self.proc.stdin is not None
        if self.broken:
            raise BenchError(f"not sent ({self.broken} earlier): {term}")
        self.proc.stdin.write(term.encode() + b"\n")
        await self.proc.stdin.drain()
        line = await self._readline(timeout)
        if line.startswith("ok "):
            return json.loads(line[3:])
        raise BenchError(f"{self.label}: {term} -> {line}")

    async def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.returncode is None:
            try:
                if proc.stdin is not None and not proc.stdin.is_closing():
                    proc.stdin.write(b"quit.\n")
                    proc.stdin.close()
                async with asyncio.timeout(5):
                    await proc.wait()
            except (TimeoutError, OSError, ConnectionError):
                pass
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        LIVE.discard(proc)
        if self._stderr_task is not None:
            self._stderr_task.cancel()


class PyServer:
    """``bench/pyserver.py`` in its own process."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self, timeout: float = 30.0) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(BENCH / "pyserver.py"),
            self.secret,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        LIVE.add(self.proc)
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            line = (await self.proc.stdout.readline()).decode()
        if not line.startswith("port "):
            raise BenchError(f"pyserver: unexpected first line {line!r}")
        self.port = int(line.split()[1])

    async def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.returncode is None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                async with asyncio.timeout(5):
                    await proc.wait()
            except (TimeoutError, OSError):
                pass
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        LIVE.discard(proc)


class Env:
    """The running nodes and servers; ``async with Env() as env``."""

    def __init__(self) -> None:
        self.secret = secrets.token_hex(8)
        self.cookie = "bench" + secrets.token_hex(8)
        self.tmp = tempfile.mkdtemp(prefix="fabric_bench_")
        self.srv: ErlNode | None = None
        self.cli: ErlNode | None = None
        self.pysrv: PyServer | None = None
        self.ext_port = 0
        self.legacy_port = 0
        self.otp = ""
        self.dist = False
        self.dist_error = ""
        self._started_epmd = False

    async def __aenter__(self) -> Env:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(self) -> None:
        global STARTED_EPMD
        compile_erl(self.tmp)
        self._started_epmd = not epmd_running()
        STARTED_EPMD = STARTED_EPMD or self._started_epmd
        suffix = f"{os.getpid()}_{secrets.token_hex(2)}"
        try:
            self.srv = ErlNode("erl server node", self.tmp, sname=f"fbsrv{suffix}", cookie=self.cookie)
            await self.srv.start()
            self.cli = ErlNode("erl client node", self.tmp, sname=f"fbcli{suffix}", cookie=self.cookie)
            await self.cli.start()
            self.dist = True
        except BenchError as exc:
            # No distribution here (no epmd, no resolvable host name): everything but the
            # Erlang-distribution reference still runs.
            self.dist_error = str(exc)
            for node in (self.srv, self.cli):
                if node is not None:
                    await node.stop()
            self.srv = ErlNode("erl server node", self.tmp, sname=None, cookie=self.cookie)
            await self.srv.start()
            self.cli = ErlNode("erl client node", self.tmp, sname=None, cookie=self.cookie)
            await self.cli.start()
        served = await self.srv.command(f'{{serve, "{self.secret}"}}')
        self.ext_port, self.legacy_port, self.otp = served["ext_port"], served["legacy_port"], served["otp"]
        self.pysrv = PyServer(self.secret)
        await self.pysrv.start()
        await self.cli.command(f'{{connect, ext, {self.ext_port}, "{self.secret}", extended}}')
        await self.cli.command(f'{{connect, legacy, {self.legacy_port}, "{self.secret}", legacy}}')
        if self.dist:
            try:
                await self.cli.command(f"{{dist_connect, dist, '{self.srv.node}'}}", timeout=30)
            except BenchError as exc:
                self.dist, self.dist_error = False, str(exc)

    async def close(self) -> None:
        for thing in (self.cli, self.srv, self.pysrv):
            if thing is not None:
                try:
                    await thing.stop()
                except Exception as exc:  # keep stopping the others
                    print(f"warning: stopping {thing}: {exc}", file=sys.stderr)
        self.cli = self.srv = self.pysrv = None
        global STARTED_EPMD
        if self._started_epmd:
            self._started_epmd = STARTED_EPMD = False
            stop_epmd_if_idle()
        shutil.rmtree(self.tmp, ignore_errors=True)
