"""Shared fixtures and helpers of the Python <-> Erlang interop suites (``test_interop_*.py``).

Every test here talks to a real ``erl`` running the ``fabric_peer_cli`` harness (see
erlang_peer/README.md, "Harness") through :class:`erlnode.ErlangNode`; a missing ``erl``
makes the fixture, and so the test, fail (never skip). Everything listens on 127.0.0.1 with
OS-picked ports, and every fixture stops what it started in a ``finally``.

Test modules import the fixtures they use by name (``from interop_support import erl``):
there is deliberately no conftest.py.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from erlnode import ErlangNode, erl_string

from pyfabric import ANY, Atom, Pid, ProcessExit

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SECRET = "interop-secret"
WAIT = 5.0
"""Seconds to wait for something that must happen (generous: CI machines are slow)."""
QUIET_MS = 300
"""Milliseconds to wait before concluding that something did not happen."""

PAYLOAD = Atom("payload")
PONG = Atom("pong")
DOWN = Atom("DOWN")
EXIT = Atom("EXIT")
PROCESS = Atom("process")
DIE = Atom("die")
CRASH = Atom("crash")
KILL = Atom("kill")
KILLED = Atom("killed")
NORMAL = Atom("normal")
NOPROC = Atom("noproc")
NOCONNECTION = Atom("noconnection")
CUSTOM_REASON = (Atom("custom_failure"), 2.5, "text", b"\x07")
"""The seed's custom exit reason, ``{custom_failure, 2.5, "text", <<7>>}``, as Python."""
CUSTOM_REASON_ERL = '{custom_failure,2.5,"text",<<7>>}'
"""The same reason as the harness prints it (``~0tp``)."""

# An Erlang process for link/monitor/exit tests (registered by ``Harness.register_victim``):
# `{die, R}` ends it with R (`normal` included), `{From, M}` is echoed as `{self(), M}`,
# and with trap_exit every other message (an `{'EXIT', From, R}` in particular) goes to the
# collector named by `Report`.
_ERL_VICTIM = (
    "Report = {report}, Trap = {trap}, "
    "V = spawn(fun() -> process_flag(trap_exit, Trap), "
    "(fun L() -> receive {{die, R}} -> exit(R); "
    "{{F, M}} when is_pid(F) -> F ! {{self(), M}}, L(); "
    "M -> Report =/= none andalso (Report ! M), L() end end)() end), "
    "register({name}, V), pid_to_list(V)."
)


ERL_ARGS = ("+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none")
"""No scheduler busy-waiting: on a small, busy CI machine a spinning erl starves the Python
side it is talking to (and vice versa)."""


def require_erl() -> None:
    """Fail (never skip) when Erlang is missing: these suites exist to run against it."""
    assert shutil.which("erl") is not None, "erl is not installed: run `make setup` (interop tests need Erlang)"


class Harness:
    """A running ``erl`` with the CLI harness, with typed helpers over its commands."""

    def __init__(self, node: ErlangNode) -> None:
        self.node = node
        self.servers: list[int] = []
        self.conns: list[int] = []

    def cleanup(self) -> None:
        """Close the connections and stop the servers this harness started (best effort)."""
        for conn in self.conns:
            self.cmd_raw(f"{{close, {conn}}}")
        for server in self.servers:
            self.cmd_raw(f"{{stop_server, {server}}}")
        self.conns.clear()
        self.servers.clear()

    # -- raw commands ----------------------------------------------------------------------

    def cmd(self, text: str, timeout: float = 15.0) -> str:
        """Run one harness command; return the ``ok`` term's text (ErlangCommandError on ``error``)."""
        return self.node.command(text, timeout)

    def cmd_raw(self, text: str, timeout: float = 15.0) -> tuple[str, str]:
        """Run one harness command; return ``(status, term_text)``."""
        return self.node.command_raw(text, timeout)

    async def acmd(self, text: str, timeout: float = 15.0) -> str:
        """:meth:`cmd` from a coroutine, without blocking the event loop (for tests whose
        Python server runs on the test's own loop and must answer while erl waits)."""
        return await asyncio.to_thread(self.cmd, text, timeout)

    def eval(self, expr: str) -> str:
        """``{eval, Expr}``: run an Erlang expression sequence in the harness process."""
        expr = expr.strip()
        if not expr.endswith("."):
            expr += "."
        return self.cmd("{eval, %s}" % erl_string(expr))

    # -- servers, connections, names -------------------------------------------------------

    def start_server(self, allowed: list[str] | tuple[str, ...] = (), secret: str = SECRET, **opts: str) -> tuple[int, int]:
        """Start a fabric server (port 0); return ``(server_id, port)``. ``opts`` are Erlang texts."""
        opts.setdefault("max_new_atoms", "1000000")
        opts.setdefault("max_server_atoms", "1000000")
        port = self.node.start_server(secret, allowed=list(allowed), **opts)
        self.servers.append(self.node.server_id)
        return self.node.server_id, port

    def connect(self, port: int, secret: str = SECRET, **opts: str) -> int:
        """``{connect, ...}`` to 127.0.0.1:port; return the connection id. ``opts`` are Erlang texts."""
        body = ", ".join(f"{k} => {v}" for k, v in opts.items())
        reply = self.cmd("{connect, %s, %d, %s, #{%s}}" % (erl_string(HOST), port, erl_string(secret), body))
        conn = int(_field(reply, "id"))
        self.conns.append(conn)
        return conn

    def whereis(self, conn: int, name: str) -> tuple[int, str] | None:
        """``{whereis, C, Name}``: ``(handle, pid_text)`` of the proxy, or None for ``undefined``."""
        reply = self.cmd(f"{{whereis, {conn}, '{name}'}}")
        if reply == "undefined":
            return None
        return int(_field(reply, "handle")), _pid_field(reply)

    def adopt(self, pid_text: str) -> int:
        """Give a pid the harness printed (e.g. inside a ``call`` reply) a handle, so that
        ``{monitor, H}``, ``{link, H}``, ``{send, {handle, H}, M}`` and ``{exit, {handle, H}, R}``
        work on it. (Test setup through ``eval``: the harness keeps handles in its process
        dictionary, and only ``whereis`` creates them otherwise.)"""
        handle = _shared["next_adopted"]
        _shared["next_adopted"] += 1
        self.eval(f'put(handles, maps:put({handle}, list_to_pid("{pid_text}"), get(handles))), ok')
        return handle

    def register_victim(self, name: str, *, trap_exit: bool = False, report_to: str | None = None) -> str:
        """Register an Erlang victim process (see ``_ERL_VICTIM``), replacing any process of
        that name; ``report_to`` names a collector (registered here) for its other messages.
        Returns its pid text."""
        if report_to is not None:
            self.cmd(f"{{register, {report_to}, collector}}")
        self.eval(f"case whereis({name}) of undefined -> ok; Old -> unregister({name}), exit(Old, kill) end")
        text = _ERL_VICTIM.format(report=report_to or "none", trap="true" if trap_exit else "false", name=name)
        return _unquote(self.eval(text))

    def local_pid(self, name: str) -> str:
        """The pid text of a process registered on the Erlang node."""
        return _unquote(self.eval(f"pid_to_list(whereis({name}))"))

    def events(self, min_count: int, timeout: float = WAIT) -> str:
        """The collector messages and watcher events so far (cleared), as the harness prints
        them; waits until there are at least ``min_count`` (at most ``timeout`` s).

        Polls ``{events, T, 0}`` rather than asking the harness to wait with
        ``{events, T, Min}``: when Min is not reached in T, the harness leaves that request
        pending, and its late reply (or the request itself, blocking later ones) corrupts
        every later ``events`` command on the node (see the report of this suite)."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            got += split_list(self.cmd("{events, 30000, 0}"))
            if len(got) >= min_count or time.monotonic() >= deadline:
                return "[" + ",".join(got) + "]"
            time.sleep(0.02)

    def no_events(self) -> str:
        """Wait ``QUIET_MS``, then return the events (the caller asserts ``'[]'``)."""
        time.sleep(QUIET_MS / 1000)
        return self.events(0)

    def drop_server_connections(self) -> int:
        """Drop the socket of every established server-side connection on this node as if
        the network failed (``fabric_peer:disconnect/1``; sessions are kept). Returns how many."""
        return int(self.eval(
            "length([ok || P <- processes(), "
            "proc_lib:translate_initial_call(P) =:= {fabric_peer_server, init, 1}, "
            "I <- [catch fabric_peer:info(P)], is_map(I), "
            "maps:get(role, I) =:= server, maps:get(state, I) =:= established, "
            "ok =:= (catch fabric_peer:disconnect(P))])"
        ))


def _field(reply: str, key: str) -> str:
    m = re.search(rf"\b{key} => (\d+)", reply)
    assert m, f"no {key} in {reply!r}"
    return m.group(1)


def _pid_field(reply: str) -> str:
    m = re.search(r'pid => "(<[\d.]+>)"', reply)
    assert m, f"no pid in {reply!r}"
    return m.group(1)


def _unquote(text: str) -> str:
    assert text.startswith('"') and text.endswith('"'), text
    return text[1:-1]


def split_list(text: str) -> list[str]:
    """The top-level elements of an Erlang list as printed by ``~0tp`` (strings, quoted
    atoms and binaries may contain commas and brackets)."""
    assert text.startswith("[") and text.endswith("]"), text
    body = text[1:-1]
    items: list[str] = []
    depth = 0
    start = 0
    i = 0
    while i < len(body):
        c = body[i]
        if c in "\"'":
            i += 1
            while body[i] != c:
                i += 2 if body[i] == "\\" else 1
        elif c in "{[(":
            depth += 1
        elif c in "}])":
            depth -= 1
        elif body.startswith("<<", i):
            depth += 1
            i += 1
        elif body.startswith(">>", i):
            depth -= 1
            i += 1
        elif c == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
        i += 1
    if body:
        items.append(body[start:])
    return items


PID_RE = re.compile(r"<\d+\.\d+\.\d+>")


def pids_in(text: str) -> list[str]:
    """Every pid the harness printed in ``text``, in order."""
    return PID_RE.findall(text)


_shared: dict[str, Any] = {"node": None, "users": 0, "next_adopted": 100_000}


@pytest.fixture(scope="session")
def erl_session() -> Iterator[ErlangNode]:
    """The one ``erl`` (running the harness) all interop modules share: an Erlang VM boot
    is the slowest step of these tests on a busy machine. Each importing module gets its own
    session-scoped instance of this fixture; they share the node through ``_shared`` and the
    last one to finish stops it."""
    require_erl()
    if _shared["node"] is None:
        node = ErlangNode(extra_args=ERL_ARGS)
        try:
            node.start()
        except BaseException:
            node.stop()
            raise
        _shared["node"] = node
    _shared["users"] += 1
    try:
        yield _shared["node"]
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            node, _shared["node"] = _shared["node"], None
            node.stop()


@pytest.fixture(scope="module")
def erl(erl_session: ErlangNode) -> Iterator[Harness]:
    """The shared ``erl`` for one module: leftover events are cleared first, and the servers
    and connections the module started are closed at its end."""
    harness = Harness(erl_session)
    harness.events(0)
    try:
        yield harness
    finally:
        harness.cleanup()


# -- Python processes used by the suites ------------------------------------------------------


async def ping(proc: Any) -> None:
    """The seed's ping: ``{From, M}`` -> ``From ! {self(), {pong, M}}``."""
    while True:
        sender, msg = await proc.receive((ANY, ANY))
        proc.send(sender, (proc.pid, (PONG, msg)))


async def echo(proc: Any) -> None:
    """``{From, M}`` -> ``From ! {self(), M}`` (other messages are dropped)."""
    while True:
        msg = await proc.receive()
        if type(msg) is tuple and len(msg) == 2 and type(msg[0]) is Pid:
            proc.send(msg[0], (proc.pid, msg[1]))


async def victim(proc: Any) -> None:
    """``{die, R}`` ends it with R, ``{crash, Text}`` raises RuntimeError(Text), ``{From, M}``
    is echoed as ``{self(), M}``; with trap_exit, ``EXIT`` messages go to the last ``From``."""
    last: Pid | None = None
    while True:
        msg = await proc.receive()
        if type(msg) is tuple and len(msg) == 2 and msg[0] == DIE:
            raise ProcessExit(msg[1])
        if type(msg) is tuple and len(msg) == 2 and msg[0] == CRASH:
            raise RuntimeError(msg[1])
        if type(msg) is tuple and len(msg) == 2 and type(msg[0]) is Pid:
            last = msg[0]
            proc.send(last, (proc.pid, msg[1]))
        elif type(msg) is tuple and len(msg) == 3 and msg[0] == EXIT and last is not None:
            proc.send(last, (Atom("trapped"), msg))


async def dead_shipper(proc: Any) -> None:
    """``{From, _}`` -> ``From ! {self(), DeadPid}`` with the pid of a process that has
    already ended (its export makes the sender send ``DEAD noproc`` right away)."""

    async def short(_p: Any) -> None:
        return None

    while True:
        sender, _ = await proc.receive((ANY, ANY))
        dead = proc.node.spawn(short)
        ref = proc.monitor(dead)
        await proc.receive((DOWN, ref, ANY, ANY, ANY), timeout=WAIT)
        proc.send(sender, (proc.pid, dead))
