"""A Python client's processes in Erlang's ``global`` through an erlang_peer server
(docs/protocol.md 17, docs/cluster.md, issue 14), with the three-node cluster of
test_interop_cluster.py (its fixtures, started again for this module).

The Python client is a client node of server A and registers one of its processes globally
through A; a plain Erlang process on node C and the erlang_peer client at server B reach it
by that name (C with ``global:send/2``, the erlang_peer client by the name at B, which looks
it up in ``global`` after its local names). The name disappears when the Python process
ends, when ``unregister_global`` removes it and when a client's session ends (it closes),
and it survives a reconnection that resumes the session (through server C, relayed to A); a
name held by another process of the cluster gives :class:`pyfabric.GlobalNameInUse`; a name
server A's ``register_global`` option refuses gives ``GlobalNameError`` ``not_allowed``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from interop_support import DIE, HOST, SECRET, WAIT, Harness, erl, erl_session, victim  # noqa: F401 (fixtures)
from test_interop_cluster import PY, Cluster, Forwarder, ecl, ev, pycl, running_cluster, wait_for  # noqa: F401 (fixtures)

import pyfabric
from pyfabric import Atom, GlobalNameError, GlobalNameInUse, Pid

NORMAL = Atom("normal")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """test_interop_cluster.py's three nodes, under names of their own."""
    yield from running_cluster("pyglb")

_C_ASK = (
    "Self = self(), Ref = make_ref(), "
    "global:send({name}, {{Self, {{Ref, {msg}}}}}), "
    "receive {{P, {{Ref, M}}}} -> {{node(P) =:= node(global:whereis_name({name})), M}} after 5000 -> timeout end"
)


def whereis_global(node: Any, name: str) -> str:
    return ev(node, f"case global:whereis_name({name}) of undefined -> undefined; P -> node(P) end")


def test_a_python_process_registered_globally_is_reached_from_c_and_from_an_erlang_peer_client(
    erl: Harness, cluster: Cluster, ecl: str, pycl: Any
) -> None:
    a, c = cluster.nodes["a"], cluster.nodes["c"]
    assert "global" in pycl.features
    proc = pycl.spawn(victim)
    pycl.register_global("pyfcl_pyreg", proc)
    pycl.register_global(Atom("pyfcl_pyreg"), proc)  # again, same process: ok
    # the name is the proxy of server A: on A's node, seen from every node
    assert wait_for(lambda: whereis_global(c, "pyfcl_pyreg") == cluster.names["a"])
    # a plain Erlang process on C sends to the global name, the Python process answers
    assert ev(c, _C_ASK.format(name="pyfcl_pyreg", msg='"from_c"')) == '{true,"from_c"}'
    # the erlang_peer client at B, by the name at B (local, then global) once B allows it
    assert cluster.nodes["b"].command(f"{{allow, {cluster.server_ids['b']}, [pyfcl_pyreg]}}") == "ok"
    assert erl.eval("fabric_peer:send({get(ecl), pyfcl_pyreg}, {self(), from_ecl})") == "ok"
    assert erl.eval("receive {P, from_ecl} when is_pid(P) -> fabric_peer:is_proxy(P) after 5000 -> timeout end") == "true"
    # the process ends: so does the name (its DEAD ends A's proxy)
    pycl.send(proc, (DIE, NORMAL))
    assert wait_for(lambda: whereis_global(c, "pyfcl_pyreg") == "undefined")
    assert ev(a, "global:whereis_name(pyfcl_pyreg)") == "undefined"
    with pytest.raises(GlobalNameError) as ended:
        pycl.register_global("pyfcl_pyreg", proc)  # a process that has ended
    assert ended.value.code == "noproc"


def test_a_conflict_is_a_typed_error(cluster: Cluster, pycl: Any) -> None:
    c = cluster.nodes["c"]
    assert ev(c, "yes = global:register_name(pyfcl_held_on_c, spawn(fun() -> receive stop -> ok end end)), ok") == "ok"
    try:
        proc = pycl.spawn(victim)
        with pytest.raises(GlobalNameInUse) as in_use:
            pycl.register_global("pyfcl_held_on_c", proc)
        assert in_use.value.code == "in_use" and in_use.value.name == "pyfcl_held_on_c"
        # two Python processes, one name: the second is refused as well
        other = pycl.spawn(victim)
        pycl.register_global("pyfcl_py_first", proc)
        with pytest.raises(GlobalNameInUse):
            pycl.register_global("pyfcl_py_first", other)
        # unregister, then it is free for the other process
        pycl.unregister_global("pyfcl_py_first")
        assert wait_for(lambda: whereis_global(c, "pyfcl_py_first") == "undefined")
        with pytest.raises(GlobalNameError) as missing:
            pycl.unregister_global("pyfcl_py_first")
        assert missing.value.code == "not_registered"
        pycl.register_global("pyfcl_py_first", other)
        # a name held by an Erlang process cannot be unregistered by the client
        with pytest.raises(GlobalNameError) as not_ours:
            pycl.unregister_global("pyfcl_held_on_c")
        assert not_ours.value.code == "not_registered"
        assert whereis_global(c, "pyfcl_held_on_c") == cluster.names["c"]
    finally:
        ev(c, "global:send(pyfcl_held_on_c, stop), ok")


def test_the_name_ends_with_the_session(cluster: Cluster) -> None:
    c = cluster.nodes["c"]
    with pyfabric.connect(HOST, cluster.ports["a"], SECRET, node_name="pyglob2@127.0.0.1") as client:
        with client.mailbox() as box:
            client.register_global("pyfcl_session_box", box.pid)
            assert wait_for(lambda: whereis_global(c, "pyfcl_session_box") != "undefined")
            # a message to the global name reaches the mailbox
            ev(c, "global:send(pyfcl_session_box, {hello, node()}), ok")
            assert box.receive(timeout=WAIT) == (Atom("hello"), Atom(cluster.names["c"]))
    # the client closed: its session ended, its proxies and their names with it
    assert wait_for(lambda: whereis_global(c, "pyfcl_session_box") == "undefined")


def test_a_name_the_server_refuses_is_not_allowed(cluster: Cluster, pycl: Any) -> None:
    a = cluster.nodes["a"]
    proc = pycl.spawn(victim)
    # a system name (docs/protocol.md 6.2) is never registered for a client
    with pytest.raises(GlobalNameError) as refused:
        pycl.register_global("rex", proc)
    assert refused.value.code == "not_allowed" and not isinstance(refused.value, GlobalNameInUse)
    assert ev(a, "global:whereis_name(rex)") == "undefined"
    assert isinstance(proc, Pid) and PY.startswith("pycl@")


def test_the_name_survives_a_resumed_session_then_ends_with_the_process(cluster: Cluster) -> None:
    """The path to A is lost (A up): the client's ``fallbacks`` take it to C, which relays its
    session to A; the global name still reaches the same mailbox, and closing the mailbox
    afterwards (its DEAD goes C -> A) ends the name."""
    c = cluster.nodes["c"]
    fwd = Forwarder(cluster.ports["a"])
    try:
        with pyfabric.connect(HOST, fwd.port, SECRET, node_name="pyglob3@127.0.0.1",
                              fallbacks=[(HOST, cluster.ports["c"])]) as client:  # fmt: skip
            box = client.mailbox()
            client.register_global("pyfcl_resumed", box.pid)
            assert wait_for(lambda: whereis_global(c, "pyfcl_resumed") == cluster.names["a"])
            fwd.close()  # connections cut, the address refused
            ev(c, "global:send(pyfcl_resumed, {after_cut, 1}), ok")
            assert box.receive(timeout=WAIT) == (Atom("after_cut"), 1)
            assert client.statistics()["failovers"] == 1
            assert whereis_global(c, "pyfcl_resumed") == cluster.names["a"]  # the same proxy at A
            box.close()
            assert wait_for(lambda: whereis_global(c, "pyfcl_resumed") == "undefined")
    finally:
        fwd.close()
