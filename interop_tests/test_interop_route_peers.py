"""Routing between clients with erlang_peer on both sides of the hub (docs/protocol.md 16, issue 13).

- An erlang_peer routing server (in a real ``erl``) with a Python client node and an
  erlang_peer client node: ``{Name, Node}`` both ways, ``whereis`` on the other client,
  ``nodes()`` on both, one proxy per pid however it arrived, a monitor across, and the
  erlang_peer client killed: the Python client hears ``nodedown`` at once and its proxy ends
  with ``noconnection`` after ``route_grace``.
- A Python routing server with erlang_peer client nodes (and a Python one): the same
  operations from the Erlang side (``fabric_peer:nodes/1``, ``whereis/2`` with a node,
  ``monitor_node/3``), and a node name in use refused with ``{node_in_use, Node}``.

The erlang_peer clients are connected with ``eval`` in the harness process (their pid is kept
in its process dictionary), because their route calls are not harness commands.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from erl_clients import NODEDOWN, erl_client, erl_close, erl_echo, erl_receive, python_hub
from interop_support import (  # noqa: F401
    CUSTOM_REASON,
    CUSTOM_REASON_ERL,
    DIE,
    DOWN,
    EXIT,
    HOST,
    NOCONNECTION,
    SECRET,
    WAIT,
    Harness,
    echo,
    erl,
    erl_session,
)

import pyfabric
from pyfabric import ANY, Atom, Pid

PY = "py1@127.0.0.1"
E1 = "e1@127.0.0.1"
E2 = "e2@127.0.0.1"
@pytest.fixture
def erl_hub(erl: Harness) -> Iterator[int]:
    """An erlang_peer routing server (route_grace 1 s) with an erlang_peer client node
    ``e2@127.0.0.1`` whose allowed ``route_echo`` is an Erlang echo. Yields the port."""
    _sid, port = erl.start_server([], routing="true", route_grace="1000", route_heartbeat="300")
    erl_echo(erl, "route_echo")
    erl_client(erl, "route_e2", port, E2, "[route_echo, route_victim]")
    try:
        yield port
    finally:
        erl_close(erl, "route_e2")


def test_python_client_node_at_an_erlang_routing_server(erl: Harness, erl_hub: int) -> None:
    """Python C1 -> erlang_peer S -> erlang_peer C2 and back: by name and node, whereis, nodes, pid identity."""
    with pyfabric.connect(HOST, erl_hub, SECRET, node_name=PY, allowed=["py_echo"]) as c1:
        c1.spawn(echo, name="py_echo")
        assert Atom(E2) in c1.nodes()
        with c1.mailbox() as box:
            c1.send(("route_echo", E2), (box.pid, "hi"))
            sender, reply = box.receive(timeout=WAIT)
            assert reply == "hi"
            found = c1.whereis("route_echo", node=E2)
            assert isinstance(found, Pid) and found == sender  # one proxy, however it arrived
            c1.send(found, (box.pid, "again"))
            assert box.receive(timeout=WAIT) == (found, "again")
            assert c1.whereis("not_allowed_there", node=E2) is None
        # C2 (erlang_peer) reaches the Python client node by name, and sees it in nodes()
        assert erl.eval(f"lists:member('{PY}', fabric_peer:nodes(get(route_e2)))") == "true"
        assert erl.eval(f"fabric_peer:send({{get(route_e2), {{py_echo, '{PY}'}}}}, {{self(), from_e2}})") == "ok"
        assert erl_receive(erl, "{P, from_e2} when is_pid(P)", "fabric_peer:is_proxy(P)") == "true"
        # whereis from the Erlang side gives the same proxy as the message's sender
        assert erl.eval(
            f"P = fabric_peer:whereis(get(route_e2), {{py_echo, '{PY}'}}), "
            f"fabric_peer:send({{get(route_e2), {{py_echo, '{PY}'}}}}, {{self(), twice}}), "
            "receive {Q, twice} -> P =:= Q after 5000 -> timeout end"
        ) == "true"


def test_links_and_monitors_across_an_erlang_hub(erl: Harness, erl_hub: int) -> None:
    """Python C1 links to and monitors a process of the erlang_peer C2: its death reaches C1
    with the real reason; a Python process linked to a trapping C2 process ends with a
    custom reason and C2's process gets it (links relayed by the hub, docs/protocol.md 16.4)."""
    erl.register_victim("route_victim")
    with pyfabric.connect(HOST, erl_hub, SECRET, node_name=PY) as c1:
        with c1.mailbox() as box:
            victim = c1.whereis("route_victim", node=E2)
            assert isinstance(victim, Pid)
            box.trap_exit = True
            box.link(victim)
            ref = box.monitor(victim)
            c1.send(victim, (box.pid, "linked?"))
            assert box.receive(timeout=WAIT) == (victim, "linked?")
            c1.send(victim, (DIE, CUSTOM_REASON))
            assert box.receive(match=(DOWN, ref, ANY, ANY, ANY), timeout=WAIT)[4] == CUSTOM_REASON
            assert box.receive(match=(EXIT, victim, ANY), timeout=WAIT)[2] == CUSTOM_REASON
        erl.register_victim("route_victim", trap_exit=True, report_to="route_coll")
        other = c1.mailbox()
        trapper = c1.whereis("route_victim", node=E2)
        assert isinstance(trapper, Pid)
        other.link(trapper)
        c1.send(trapper, (other.pid, "linked?"))
        assert other.receive(timeout=WAIT) == (trapper, "linked?")
        other.close(CUSTOM_REASON)
        events = erl.events(1)
        assert events.startswith("[{collector,route_coll,{'EXIT',") and events.endswith(f",{CUSTOM_REASON_ERL}}}}}]"), events


def test_erlang_client_killed_nodedown_then_noconnection(erl: Harness, erl_hub: int) -> None:
    """The erlang_peer C2 is killed: the Python C1 gets nodedown within seconds, its proxy ends with noconnection after route_grace."""
    with pyfabric.connect(HOST, erl_hub, SECRET, node_name=PY) as c1:
        with c1.mailbox() as box:
            proxy = c1.whereis("route_echo", node=E2)
            assert isinstance(proxy, Pid)
            c1.monitor_node(E2, box.pid)
            ref = box.monitor(proxy)
            start = time.monotonic()
            erl.eval("C = get(route_e2), unlink(C), exit(C, kill), erase(route_e2), ok")
            assert box.receive(match=(NODEDOWN, ANY), timeout=WAIT) == (NODEDOWN, Atom(E2))
            down = box.receive(match=(DOWN, ref, ANY, ANY, ANY), timeout=WAIT)
            assert down[4] == NOCONNECTION
            assert time.monotonic() - start >= 0.9  # route_grace is 1 s
            assert Atom(E2) not in c1.nodes()


@pytest.fixture
def py_hub(erl: Harness) -> Iterator[Any]:
    """A Python routing server; erlang_peer client nodes e1 (no names) and e2 (``route_echo2``)."""
    erl_echo(erl, "route_echo2")
    with python_hub(erl, [("route_e1", E1, "[]"), ("route_e2", E2, "[route_echo2]")]) as server:
        yield server


def test_erlang_client_nodes_at_a_python_routing_server(erl: Harness, py_hub: Any) -> None:
    """erlang_peer C1 -> Python S -> erlang_peer C2 and a Python client node: nodes, send, whereis, monitor_node."""
    with pyfabric.connect(HOST, py_hub.port, SECRET, node_name=PY, allowed=["py_echo"]) as c3:
        c3.spawn(echo, name="py_echo")
        assert erl.eval(
            f"L = fabric_peer:nodes(get(route_e1)), {{lists:member('{E2}', L), lists:member('{PY}', L), "
            f"lists:member('{E1}', L)}}"
        ) == "{true,true,false}"
        assert erl.eval(f"fabric_peer:send({{get(route_e1), {{route_echo2, '{E2}'}}}}, {{self(), hello}})") == "ok"
        assert erl_receive(erl, "{P, hello} when is_pid(P)", "fabric_peer:is_proxy(P)") == "true"
        assert erl.eval(
            f"P = fabric_peer:whereis(get(route_e1), {{route_echo2, '{E2}'}}), "
            "P ! {self(), via_whereis}, receive {Q, via_whereis} -> {is_pid(P), P =:= Q} after 5000 -> timeout end"
        ) == "{true,true}"
        assert erl.eval(f"fabric_peer:send({{get(route_e1), {{py_echo, '{PY}'}}}}, {{self(), to_python}})") == "ok"
        assert erl_receive(erl, "{P, to_python} when is_pid(P)", "ok") == "ok"
        # the Python client node sees both Erlang nodes and reaches e2's echo
        assert {Atom(E1), Atom(E2)} <= set(c3.nodes())
        with c3.mailbox() as box:
            c3.send(("route_echo2", E2), (box.pid, "from_python"))
            assert box.receive(timeout=WAIT)[1] == "from_python"
        assert erl.eval(f"fabric_peer:monitor_node(get(route_e1), '{PY}', true)") == "ok"
    # c3 closed
    assert erl_receive(erl, f"{{nodedown, '{PY}'}}", "down") == "down"


def test_erlang_node_name_in_use_at_a_python_server(erl: Harness, py_hub: Any) -> None:
    """A second erlang_peer client with e2's name is refused with {node_in_use, Node}; e2 keeps working."""
    reply = erl.eval(f'fabric_peer:connect("{HOST}", {py_hub.port}, "{SECRET}", #{{node => \'{E2}\', reconnect => false}})')
    assert reply == f"{{error,{{node_in_use,'{E2}'}}}}"
    assert erl.eval(f"fabric_peer:send({{get(route_e1), {{route_echo2, '{E2}'}}}}, {{self(), still}})") == "ok"
    assert erl_receive(erl, "{P, still} when is_pid(P)", "ok") == "ok"
