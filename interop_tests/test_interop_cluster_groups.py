"""``pg`` groups across a cluster (docs/protocol.md 18, docs/cluster.md section 5, issue 14),
with the three-node cluster of test_interop_cluster.py (its fixtures), started again for this
module under names of its own with ``client_groups => [pygrp_workers, pygrp_session]``.

The Python client is a client node of server A, the erlang_peer client (the harness ``erl``)
a client node of server B, and a plain Erlang process on node C joins the same group with
``pg:join/3``. Each client lists the members (its own process as itself, the others as
proxies) and reaches the others through them; the Python process's membership ends when it
ends, and when the Python client's session ends (it closes). A pyfabric client of a server
without ``client_groups`` gets ``FeatureNotSupported``; a group a server refuses is
``GroupError`` ``not_allowed``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from interop_support import HOST, SECRET, WAIT, Harness, erl, erl_session  # noqa: F401 (fixtures)
from test_interop_cluster import SCOPE, Cluster, ecl, ev, running_cluster, wait_for  # noqa: F401 (fixtures)

import pyfabric
from pyfabric import Atom, GroupError, Pid

GROUP = "pygrp_workers"
_G = f'<<"{GROUP}">>'

# In the harness: a member process of the erlang_peer client, echoing `{From, X}` back as
# `{ecl_member, X}`, joined through server B; its pid is `get(grp_member)`.
_ECL_MEMBER = (
    "M = spawn(fun L() -> receive {From, X} when is_pid(From) -> From ! {ecl_member, X}, L(); stop -> ok end end), "
    "put(grp_member, M), fabric_peer:join(get(ecl), " + _G + ", M)"
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """test_interop_cluster.py's three nodes; their servers allow the two groups of this module."""
    yield from running_cluster("pygrp", client_groups=f"[{GROUP}, pygrp_session]")


def members_on(cluster: Cluster, label: str) -> int:
    return int(ev(cluster.nodes[label], f"length(pg:get_members({SCOPE}, {{fabric_peer_group, {_G}}}))"))


def ecl_members(erl: Harness) -> int:
    return int(erl.eval(f"{{ok, Ms}} = fabric_peer:members(get(ecl), {_G}), length(Ms)"))


def test_a_python_and_an_erlang_peer_client_on_two_servers_share_a_group(erl: Harness, cluster: Cluster, ecl: str) -> None:
    assert erl.eval(_ECL_MEMBER) == "ok"
    c = cluster.nodes["c"]
    erl_member = ev(c, "P = spawn(fun L() -> receive {From, X} when is_pid(From) -> From ! {c_member, X}, L(); "
                       f"stop -> ok end end), ok = pg:join({SCOPE}, {{fabric_peer_group, {_G}}}, P), "
                       "register(pygrp_c_member, P), ok")  # fmt: skip
    assert erl_member == "ok"
    try:
        with pyfabric.connect(HOST, cluster.ports["a"], SECRET, node_name="pygrp@127.0.0.1") as client:
            assert "pg" in client.features
            with client.mailbox() as box:
                client.join(GROUP, box.pid)
                client.join(GROUP.encode(), box.pid)  # again: ok
                assert wait_for(lambda: len(client.members(GROUP)) == 3)
                members = client.members(GROUP)
                assert box.pid in members
                others = [m for m in members if m != box.pid]
                assert all(isinstance(m, Pid) for m in others)
                # a message to each other member is delivered, and answered
                for m in others:
                    client.send(m, (box.pid, "from_py"))
                answers = {box.receive(timeout=WAIT), box.receive(timeout=WAIT)}
                assert answers == {(Atom("ecl_member"), "from_py"), (Atom("c_member"), "from_py")}
                # the erlang_peer client at B sees the Python process and reaches it
                assert wait_for(lambda: ecl_members(erl) == 3)
                sent = erl.eval(f"{{ok, Ms}} = fabric_peer:members(get(ecl), {_G}), "
                                "true = lists:member(get(grp_member), Ms), "
                                "[fabric_peer:send(P, {get(grp_member), from_ecl}) || P <- Ms, P =/= get(grp_member), "
                                "fabric_peer:is_proxy(P)], ok")  # fmt: skip
                assert sent == "ok"
                got = {box.receive(timeout=WAIT)[1]}
                assert got == {Atom("from_ecl")}
                # the Python process ends (the mailbox closes): its membership with it
            assert wait_for(lambda: members_on(cluster, "c") == 2)
            assert wait_for(lambda: ecl_members(erl) == 2)
            assert wait_for(lambda: len(client.members(GROUP)) == 2)
            # a group the servers refuse is a typed error (here at C)
            with pyfabric.connect(HOST, cluster.ports["c"], SECRET, node_name="pygrp_c@127.0.0.1") as at_c:
                with pytest.raises(GroupError) as refused:
                    at_c.members("elsewhere")
                assert refused.value.code == "not_allowed"
                assert len(at_c.members(GROUP)) == 2
    finally:
        erl.eval(f"fabric_peer:leave(get(ecl), {_G}, get(grp_member)), get(grp_member) ! stop, ok")
        ev(c, "pygrp_c_member ! stop, ok")


def test_membership_ends_with_the_python_clients_session(erl: Harness, cluster: Cluster, ecl: str) -> None:
    group = "pygrp_session"
    with pyfabric.connect(HOST, cluster.ports["a"], SECRET, node_name="pygrp2@127.0.0.1") as client:
        box = client.mailbox()
        client.join(group, box.pid)
        assert wait_for(lambda: int(erl.eval(f'{{ok, Ms}} = fabric_peer:members(get(ecl), <<"{group}">>), length(Ms)')) == 1)
        with pytest.raises(GroupError) as not_member:
            client.leave(group, client.mailbox().pid)
        assert not_member.value.code == "not_member"
    # the client closed (the mailbox never did): its session ended, its proxies with it
    assert wait_for(lambda: int(erl.eval(f'{{ok, Ms}} = fabric_peer:members(get(ecl), <<"{group}">>), length(Ms)')) == 0)
