"""Erlang clients at a Python routing server (docs/protocol.md 16.10, issue 13).

Here the erlang_peer client does not accept ``route`` (it has no ``node`` option of its own,
README "Routing"), so it is what 16.10 calls a client without a node name: with the extended
protocol, and in ``mode => legacy`` (exactly the original's frames); erlang_peer clients that
are client nodes are in test_interop_route_peers.py. As C1 it reaches a Python client node's allowed names with ``{m, {Name, Node}, _}``,
its pid travels to C2 and the reply comes back to it; a name the Python client did not allow
stays unreachable, and the routing predicate is called with no sending node. As C2 its pids
reach a Python client node through the server (it cannot be named: it is never listed).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from interop_support import HOST, SECRET, WAIT, Harness, echo, erl, erl_session  # noqa: F401

import pyfabric

C2 = "c2@localhost"
LEGACY = {"mode": "legacy", "allow_legacy_auth": "true"}


@pytest.fixture
def hub() -> Iterator[tuple[Any, Any, list[tuple[str | None, str]]]]:
    """A Python routing server (its predicate records its calls) and a Python client node
    ``c2@localhost`` with an allowed ``echo``. Yields (server, c2, calls)."""
    calls: list[tuple[str | None, str]] = []

    def policy(source: str | None, target: str) -> bool:
        calls.append((source, target))
        return True

    server = pyfabric.start_server(HOST, 0, SECRET, routing=policy, allow_legacy_auth=True)
    c2 = None
    try:
        c2 = pyfabric.connect(HOST, server.port, SECRET, node_name=C2, allowed=["echo", "inbox"])
        c2.spawn(echo, name="echo")
        yield server, c2, calls
    finally:
        if c2 is not None:
            c2.close()
        server.close()


@pytest.mark.parametrize("mode", ["extended", "legacy"])
def test_an_erlang_client_reaches_a_python_client_node(erl: Harness, hub: tuple[Any, Any, list[Any]], mode: str) -> None:
    """{Name, Node} from an Erlang client to C2's echo: delivered, and the reply reaches the Erlang pid."""
    server, c2, calls = hub
    conn = erl.connect(server.port, **(LEGACY if mode == "legacy" else {}))
    try:
        reply = erl.cmd(f"{{call, {{name, {conn}, echo, '{C2}'}}, hi, 5000}}")
        assert re.fullmatch(r"\{<[\d.]+>,hi\}", reply), reply
        assert (None, C2) in calls  # the Erlang client has no client node name
        # A name C2 did not allow stays unreachable through the hub.
        with c2.mailbox("hidden") as hidden:
            assert erl.cmd(f"{{send, {{name, {conn}, hidden, '{C2}'}}, leak}}") == "ok"
            assert erl.cmd(f"{{call, {{name, {conn}, echo, '{C2}'}}, after_leak, 5000}}").endswith(",after_leak}")
            assert hidden.qsize() == 0
    finally:
        erl.cmd_raw(f"{{close, {conn}}}")


async def keeper(proc: Any) -> None:
    """Answers ``{From, M}`` with ``{self(), {M, Kind, Same}}``: Kind says whether From is a
    pid of this node (a remote process arrives as a local proxy), Same whether it is the pid
    the first message came from."""
    first = None
    while True:
        sender, msg = await proc.receive()
        first = sender if first is None else first
        kind = "proxy" if sender.node == proc.pid.node else "other"  # remote pids arrive as local proxies
        proc.send(sender, (proc.pid, (msg, kind, sender == first)))


@pytest.mark.parametrize("mode", ["extended", "legacy"])
def test_an_erlang_clients_pid_reaches_a_python_client_node(erl: Harness, hub: tuple[Any, Any, list[Any]], mode: str) -> None:
    """The Erlang caller's pid, shipped to C2 through the hub, is a proxy at C2 that answers it."""
    server, c2, _calls = hub
    c2.spawn(keeper, name="inbox")
    conn = erl.connect(server.port, **(LEGACY if mode == "legacy" else {}))
    try:
        reply = erl.cmd(f"{{call, {{name, {conn}, inbox, '{C2}'}}, first, 5000}}")
        assert re.fullmatch(r'\{<[\d.]+>,\{first,"proxy",true\}\}', reply), reply
    finally:
        erl.cmd_raw(f"{{close, {conn}}}")
