"""Names the receiver does not allow are unreachable, whichever way they are addressed.

Python client -> Erlang server and Erlang client -> Python server: ``whereis`` answers
None/``undefined`` for a registered-but-not-allowed name, a system name even when listed
(``rex``), an allowed-but-unregistered name and an unknown one; messages sent to such names,
by name or as ``{Name, Node}``, are never delivered (checked with collectors and by asking
``rex`` a question it would answer), and the connection keeps working.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest
from interop_support import HOST, PAYLOAD, PONG, QUIET_MS, SECRET, WAIT, Harness, erl, erl_session, ping  # noqa: F401

import pyfabric
from pyfabric import Atom, Pid, ReceiveTimeout

GEN_CALL = Atom("$gen_call")


def _rex_call(box_pid: Pid, ref: Any) -> tuple[Any, ...]:
    """What ``rpc:call(Node, erlang, node, [])`` sends to ``rex``: answered with ``{Ref, Node}``."""
    return (GEN_CALL, (box_pid, ref), (Atom("call"), Atom("erlang"), Atom("node"), [], box_pid))


@pytest.fixture(scope="module")
def erl_names(erl: Harness) -> dict[str, int]:
    """Erlang servers: ``strict`` allows ping and (uselessly) rex, with ``hidden`` registered
    but not allowed; ``forced`` really opens rex (to show the rex probe is answered when it
    can be delivered)."""
    erl.cmd("{start_demo, [ping]}")
    erl.cmd("{register, hidden, collector}")
    _s, strict = erl.start_server(["ping", "rex", "allowed_absent"])
    _s, forced = erl.start_server(["ping", "rex"], force_system_names="[rex]")
    return {"strict": strict, "forced": forced}


def test_whereis_refuses_names_blocking(erl_names: dict[str, int]) -> None:
    """Blocking whereis: not allowed, system (even listed), allowed-but-unregistered and unknown names are all None."""
    with pyfabric.connect(HOST, erl_names["strict"], SECRET) as client:
        for name in ["hidden", "rex", "init", "code_server", "fabric_cli_events", "allowed_absent", "never_heard_of_it"]:
            assert client.whereis(name) is None, name
        assert isinstance(client.whereis("ping"), Pid)


def test_refused_names_never_delivered_async(erl: Harness, erl_names: dict[str, int]) -> None:
    """aconnect: sends to hidden and rex, by name and {Name, Node}, are dropped; the connection still works."""

    async def body() -> None:
        async with await pyfabric.aconnect(HOST, erl_names["strict"], SECRET) as client:
            assert await client.whereis("hidden") is None
            node = client.peer_node
            assert node == Atom("nonode@nohost")
            box = client.mailbox()
            ref = client.node.make_ref()
            for dest in ["hidden", Atom("hidden"), ("hidden", node), "rex", ("rex", node), ("rex", "nonode@nohost"),
                         "allowed_absent", ("ping", "other@host")]:
                client.send(dest, _rex_call(box.pid, ref) if "rex" in str(dest) else (box.pid, "leak?"))
            with pytest.raises(ReceiveTimeout):
                await box.receive(timeout=QUIET_MS / 1000)
            assert await asyncio.to_thread(erl.events, 0) == "[]"  # the hidden collector got nothing
            # The connection is still up and a permitted {Name, Node} is delivered.
            client.send(("ping", node), (box.pid, (PAYLOAD, "abababa")))
            sender, reply = await box.receive(timeout=WAIT)
            assert reply == (PONG, (PAYLOAD, "abababa"))
            assert sender == await client.whereis("ping")

    asyncio.run(body())


def test_rex_probe_is_answered_only_when_forced(erl_names: dict[str, int]) -> None:
    """Control: the same rex message is answered by a server that forces rex open, so its silence elsewhere means 'not delivered'."""
    with pyfabric.connect(HOST, erl_names["forced"], SECRET) as client:
        with client.mailbox() as box:
            ref = client.async_client.node.make_ref()
            client.send("rex", _rex_call(box.pid, ref))
            assert box.receive(timeout=WAIT) == (ref, Atom("nonode@nohost"))
    with pyfabric.connect(HOST, erl_names["strict"], SECRET) as client:
        with client.mailbox() as box:
            ref = client.async_client.node.make_ref()
            client.send(("rex", "nonode@nohost"), _rex_call(box.pid, ref))
            with pytest.raises(ReceiveTimeout):
                box.receive(timeout=QUIET_MS / 1000)


# -- Erlang client, Python server -----------------------------------------------------------


@pytest.fixture
def py_names(erl: Harness) -> Iterator[tuple[Any, int, dict[str, Any]]]:
    """A Python server allowing ping, rex and pyfabric_x (the last two are system names);
    ``hidden`` is registered but not allowed. Yields (server, conn, mailboxes by name)."""
    server = pyfabric.start_server(HOST, 0, SECRET, allowed=["ping", "rex", "pyfabric_x", "absent"])
    conn = None
    try:
        server.spawn(ping, name="ping")
        boxes = {name: server.mailbox(name) for name in ["hidden", "rex", "pyfabric_x"]}
        conn = erl.connect(server.port)
        yield server, conn, boxes
    finally:
        if conn is not None:
            erl.cmd_raw(f"{{close, {conn}}}")
        server.close()


def test_erlang_client_cannot_reach_refused_python_names(erl: Harness, py_names: tuple[Any, int, dict[str, Any]]) -> None:
    """Erlang whereis gives undefined and sends by name / {Name, Node} are dropped for hidden, rex, pyfabric_*; ping still answers."""
    server, conn, boxes = py_names
    for name in ["hidden", "rex", "pyfabric_x", "absent", "unknown_name"]:
        assert erl.whereis(conn, name) is None, name
    info = erl.cmd(f"{{info, {conn}}}")
    m = re.search(r'peer_node => <<"([^"]+)">>', info)
    assert m, info
    py_node = m.group(1)
    for name in boxes:
        assert erl.cmd(f"{{send, {{name, {conn}, '{name}'}}, leak}}") == "ok"
        assert erl.cmd(f"{{send, {{name, {conn}, '{name}', '{py_node}'}}, leak}}") == "ok"
    # The connection is still up: ping answers, by whereis and by {Name, Node}.
    assert erl.cmd(f'{{ping, {conn}, ping, {{payload, "abababa"}}}}') == '{pong,{payload,"abababa"}}'
    reply = erl.cmd(f"{{call, {{name, {conn}, ping, '{py_node}'}}, hi, 5000}}")
    assert re.fullmatch(r"\{<[\d.]+>,\{pong,hi\}\}", reply), reply
    for name, box in boxes.items():
        assert box.qsize() == 0, name
