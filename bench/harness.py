"""What `make bench` runs against: Erlang nodes, the Python server, statistics, machine info.

:class:`Env` starts (and always stops) everything the messaging and scale benchmarks need:

- ``srv``: an ``erl`` node running ``bench/erl/fabric_bench.erl`` with two fabric_peer
  servers (extended; legacy authentication allowed) serving ``bench_echo``,
  ``bench_counter`` and ``bench_pids``;
- ``cli``: a second ``erl`` node, the Erlang-side driver: fabric_peer clients of ``srv``
  (extended and ``mode => legacy``) and, as the reference, plain Erlang distribution to
  ``srv`` (both nodes run with ``-sname`` and a random ``-setcookie``);
- ``pysrv``: ``bench/pyserver.py``, a pyfabric server and a bare asyncio echo (the
  Python ceiling) in their own process;
- the raw Erlang ceiling: a gen_tcp ``{packet,4}`` nodelay echo on ``srv``, a client on ``cli``;
- with ``orig_ebin`` (``ORIG_EBIN=dir make bench``: a directory holding the original 2010
  implementation's compiled ``fabric.beam`` and ``fabric_auth.beam``, never part of this
  repository): the original's server on ``srv`` and its client on ``cli``.

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
import secrets
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from measure import AUTO_PLACEMENT, pin_process, placement, process_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
EBIN = ROOT / "erlang_peer" / "_build" / "default" / "lib" / "fabric_peer" / "ebin"
# bench/erl's drivers and fabric_peer_cli (its line parser), a test-support module that the
# app does not ship (erlang_peer/test_support/)
ERL_SOURCES = sorted((BENCH / "erl").glob("*.erl")) + [ROOT / "erlang_peer" / "test_support" / "fabric_peer_cli.erl"]
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

    def __init__(self, label: str, beam_dirs: list[str], *, sname: str | None, cookie: str) -> None:
        self.label = label
        self.beam_dirs = beam_dirs
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
        for path in [str(EBIN), *self.beam_dirs]:
            cmd += ["-pa", path]
        cmd += ["-run", "fabric_bench", "main"]
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        LIVE.add(self.proc)
        self._stderr_task = asyncio.get_running_loop().create_task(self._read_stderr())
        line = await self._readline(timeout)
        if not line.startswith("ready "):
            raise BenchError(f"{self.label}: unexpected first line {line!r}; stderr: {self.stderr_tail()}")
        self.node = line.split(None, 1)[1]
        if process_name(self.proc.pid) != "beam.smp":  # the CPU readings would miss the VM
            raise BenchError(f"{self.label}: pid {self.proc.pid} is {process_name(self.proc.pid)!r}, not beam.smp")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

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
        self.echo_port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

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
        self.port, self.echo_port = int(line.split()[1]), int(line.split()[3])

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

    def __init__(self, orig_ebin: str | None = None, pin: str = "none") -> None:
        self.orig_ebin = orig_ebin
        self.pin = pin
        self.placed: dict[str, str] = {}  # part -> the placement it ran with
        self.orig = False
        self.orig_error = ""
        self.secret = secrets.token_hex(8)
        self.cookie = "bench" + secrets.token_hex(8)
        self.tmp = tempfile.mkdtemp(prefix="fabric_bench_")
        self.srv: ErlNode | None = None
        self.cli: ErlNode | None = None
        self.pysrv: PyServer | None = None
        self.ext_port = 0
        self.legacy_port = 0
        self.raw_port = 0
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
        paths = [self.tmp]
        if self.orig_ebin:
            if (pathlib.Path(self.orig_ebin) / "fabric.beam").exists():
                paths.append(str(pathlib.Path(self.orig_ebin).resolve()))
            else:
                self.orig_error = f"ORIG_EBIN={self.orig_ebin} holds no fabric.beam (the original's compiled beams)"
        try:
            self.srv = ErlNode("erl server node", paths, sname=f"fbsrv{suffix}", cookie=self.cookie)
            await self.srv.start()
            self.cli = ErlNode("erl client node", paths, sname=f"fbcli{suffix}", cookie=self.cookie)
            await self.cli.start()
            self.dist = True
        except BenchError as exc:
            # No distribution here (no epmd, no resolvable host name): everything but the
            # Erlang-distribution reference still runs.
            self.dist_error = str(exc)
            for node in (self.srv, self.cli):
                if node is not None:
                    await node.stop()
            self.srv = ErlNode("erl server node", paths, sname=None, cookie=self.cookie)
            await self.srv.start()
            self.cli = ErlNode("erl client node", paths, sname=None, cookie=self.cookie)
            await self.cli.start()
        served = await self.srv.command(f'{{serve, "{self.secret}"}}')
        self.ext_port, self.legacy_port, self.otp = served["ext_port"], served["legacy_port"], served["otp"]
        self.raw_port = served["raw_port"]
        self.pysrv = PyServer(self.secret)
        await self.pysrv.start()
        await self.cli.command(f'{{connect, ext, {self.ext_port}, "{self.secret}", extended}}')
        await self.cli.command(f'{{connect, legacy, {self.legacy_port}, "{self.secret}", legacy}}')
        await self.cli.command(f'{{connect, plain, {self.ext_port}, "{self.secret}", plain}}')
        await self.cli.command(f"{{raw_connect, raw, {self.raw_port}}}")
        if self.orig_ebin and not self.orig_error:
            try:
                port = (await self.srv.command(f'{{orig_serve, "{self.secret}"}}', timeout=30))["port"]
                await self.cli.command(f'{{orig_connect, orig, {port}, "{self.secret}"}}', timeout=30)
                self.orig = True
            except BenchError as exc:
                self.orig_error = f"the original (ORIG_EBIN={self.orig_ebin}) did not start: {exc}"
        if self.dist:
            try:
                await self.cli.command(f"{{dist_connect, dist, '{self.srv.node}'}}", timeout=30)
            except BenchError as exc:
                self.dist, self.dist_error = False, str(exc)

    def place(self, part: str) -> None:
        """Pin the runner, both erl nodes and the Python server for ``part`` (see measure.PIN_MODES)."""
        mode = AUTO_PLACEMENT[part] if self.pin == "auto" else self.pin
        cpus = placement(mode)
        assert self.cli is not None and self.srv is not None and self.pysrv is not None
        for pid, role in ((os.getpid(), "client"), (self.cli.pid, "client"), (self.srv.pid, "server"),
                          (self.pysrv.pid, "server")):
            pin_process(pid, cpus[role])
        self.placed[part] = mode

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
