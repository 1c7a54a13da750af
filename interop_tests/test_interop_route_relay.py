"""A Python routing server between erlang_peer client nodes (docs/protocol.md 5.2, 16.4, 16.8;
issues 13 and 17), with a real ``erl``:

- ``link_exit`` passed on: an erlang_peer process of e1, lazily linked to its proxy of a
  process of e2, ends with ``exit(kill)``; e2's process gets the trappable link signal
  (``{'EXIT', P, kill}``, or it ends with ``kill``) through the Python hub, not an
  untrappable ``exit2 ... kill``.
- A routed confirmed send from a Python client to an erlang_peer client node is answered
  with that node's own result (``ok``, ``not_allowed`` for a name it does not allow).
- The server's own processes send to ``(name, erlang_client_node)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from erl_clients import erl_receive, python_hub
from interop_support import HOST, SECRET, WAIT, Harness, erl, erl_session  # noqa: F401

import pyfabric
from pyfabric.transport import SendRefused

E1 = "rl1@127.0.0.1"
E2 = "rl2@127.0.0.1"
PY = "rlpy@127.0.0.1"

# In the harness process (Parent): a trapping process reporting its EXIT messages, a plain
# one the harness monitors, and an echo, registered on the Erlang node.
_ERL_VICTIMS = (
    "Parent = self(), "
    "[case whereis(N) of undefined -> ok; Old -> unregister(N), exit(Old, kill) end || N <- [rl_trap, rl_plain, rl_echo]], "
    "register(rl_trap, spawn(fun() -> process_flag(trap_exit, true), "
    "(fun L() -> receive {'EXIT', _, R} -> Parent ! {rl_exit, R}, L(); _ -> L() end end)() end)), "
    "register(rl_plain, spawn(fun() -> receive never -> ok end end)), "
    "register(rl_echo, spawn(fun L() -> receive {F, M} when is_pid(F) -> F ! {self(), M}, L(); _ -> L() end end)), "
    "erlang:monitor(process, whereis(rl_plain)), ok"
)


@pytest.fixture
def hub(erl: Harness) -> Iterator[Any]:
    """A Python routing server; erlang_peer client nodes rl1 (no names) and rl2 (the victims)."""
    erl.eval(_ERL_VICTIMS)
    with python_hub(erl, [("rl_e1", E1, "[]"), ("rl_e2", E2, "[rl_trap, rl_plain, rl_echo]")]) as server:
        yield server


def _link_and_kill(erl: Harness, name: str) -> None:
    """A process of rl1 links to rl1's proxy of ``name`` on rl2, then calls exit(kill)."""
    assert erl.eval(
        f"P = fabric_peer:whereis(get(rl_e1), {{{name}, '{E2}'}}), true = is_pid(P), "
        "spawn(fun() -> link(P), receive after 50 -> ok end, exit(kill) end), ok"
    ) == "ok"


def test_link_exit_is_passed_on_between_client_nodes(erl: Harness, hub: Any) -> None:
    """Both hops agreed link_exit: the trapping process gets {'EXIT', _, kill}, the plain one ends with kill."""
    features = [c.features for c in hub.connections()]
    assert all("link_exit" in f and "route" in f for f in features) and len(features) == 2
    _link_and_kill(erl, "rl_trap")
    assert erl_receive(erl, "{rl_exit, R}", "R") == "kill"
    assert erl.eval("is_process_alive(whereis(rl_trap))") == "true"
    _link_and_kill(erl, "rl_plain")
    assert erl_receive(erl, "{'DOWN', _, process, _, R}", "R") == "kill"  # not killed: a link signal


def test_routed_confirmed_send_gets_the_client_nodes_own_result(erl: Harness, hub: Any) -> None:
    with pyfabric.connect(HOST, hub.port, SECRET, node_name=PY) as c1, c1.mailbox() as box:
        assert "acks" in c1.features
        c1.send_confirmed(("rl_echo", E2), (box.pid, "confirmed"), timeout=WAIT)
        assert box.receive(timeout=WAIT)[1] == "confirmed"
        with pytest.raises(SendRefused) as refused:
            c1.send_confirmed(("not_allowed_there", E2), "no", timeout=WAIT)
        assert refused.value.code == "not_allowed"  # rl2's own answer, passed back by the hub


def test_server_processes_send_to_an_erlang_client_node(erl: Harness, hub: Any) -> None:
    with hub.mailbox() as box:
        hub.send(("rl_echo", E2), (box.pid, "from the server"))
        sender, reply = box.receive(timeout=WAIT)
        assert reply == "from the server"
        assert sender != box.pid
