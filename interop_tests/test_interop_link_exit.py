"""The `link_exit` feature (docs/protocol.md 5.2) between a Python server and a real Erlang
client (erlang_peer): an Erlang process linked to the proxy of a Python process (a lazily
carried link) that ends with ``exit(kill)`` reaches the Python process as a trappable link
signal; without the feature agreed (the Python server does not offer it) the same death
arrives as ``exit2 ... kill`` and kills the process (``killed``), the behaviour before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from interop_support import (  # noqa: F401
    DOWN,
    EXIT,
    HOST,
    KILL,
    KILLED,
    PROCESS,
    SECRET,
    WAIT,
    Harness,
    erl,
    erl_session,
)

import pyfabric
from pyfabric import Pid
from pyfabric.protocol import FEATURES

NAMES = ["lx_trap", "lx_plain"]


@pytest.fixture(params=["agreed", "not_offered"])
def py_server(request: pytest.FixtureRequest, erl: Harness) -> Iterator[tuple[Any, int, bool]]:
    """A blocking Python server (offering link_exit or not) and an Erlang client connected
    to it; yields ``(server, conn_id, agreed)``."""
    agreed = request.param == "agreed"
    features = FEATURES if agreed else FEATURES - {"link_exit"}
    server = pyfabric.start_server(HOST, 0, SECRET, allowed=NAMES, features=features)
    conn = None
    try:
        conn = erl.connect(server.port)
        yield server, conn, agreed
    finally:
        if conn is not None:
            erl.cmd_raw(f"{{close, {conn}}}")
        server.close()


def _link_and_die(erl: Harness, conn: int, name: str) -> None:
    """An Erlang process links to its proxy of the Python process ``name``, then calls exit(kill)."""
    found = erl.whereis(conn, name)
    assert found is not None
    _handle, proxy_text = found
    erl.eval(
        f'P = list_to_pid("{proxy_text}"), '
        "spawn(fun() -> link(P), receive after 50 -> ok end, exit(kill) end), ok"
    )


def test_erlang_exit_kill_through_a_lazy_link(erl: Harness, py_server: tuple[Any, int, bool]) -> None:
    """With link_exit: a trapping Python process gets ('EXIT', Proxy, kill) and lives on, a
    non-trapping one ends with kill; without it: both are killed (exit2 kill, untrappable)."""
    server, conn, agreed = py_server
    (connection,) = server.connections()
    assert ("link_exit" in connection.features) is agreed
    with server.mailbox("lx_trap", trap_exit=True) as trap, server.mailbox("lx_plain") as plain, server.mailbox() as watcher:
        ref_trap = watcher.monitor(trap.pid)
        ref_plain = watcher.monitor(plain.pid)
        _link_and_die(erl, conn, "lx_trap")
        _link_and_die(erl, conn, "lx_plain")
        if agreed:
            tag, sender, reason = trap.receive(timeout=WAIT)
            assert (tag, reason) == (EXIT, KILL)
            assert isinstance(sender, Pid) and sender != trap.pid  # the proxy of the Erlang process
            assert not server.call(server.async_server.node.is_alive, sender)  # that proxy ended with the signal
            assert watcher.receive(timeout=WAIT) == (DOWN, ref_plain, PROCESS, plain.pid, KILL)
            assert trap.alive
        else:
            downs = {watcher.receive(timeout=WAIT), watcher.receive(timeout=WAIT)}
            assert downs == {(DOWN, ref_trap, PROCESS, trap.pid, KILLED), (DOWN, ref_plain, PROCESS, plain.pid, KILLED)}
