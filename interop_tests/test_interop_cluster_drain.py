"""``fabric_peer:drain_server/1,2`` with a Python client (docs/cluster.md section 6, issue 14),
with the three-node cluster of test_interop_cluster.py (its fixtures, under node names of
this module's own).

The Python client is a client node of server A with ``fallbacks`` to B; the erlang_peer
client of test_interop_cluster.py is a client node of server B. While both send numbered
messages to each other, A is drained: the Python client's socket is closed, A's address is
refused, the client moves to B, which relays it to its session at A. Every message arrives
once and in order both ways (acks), the proxies keep their identity both ways, and a new
connection to A fails. Then C is drained with ``sessions => close``: a Python client of C
gets a new session at B, its proxy of the old session ends with ``noconnection``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from erl_clients import erl_echo
from interop_support import DOWN, HOST, NOCONNECTION, SECRET, WAIT, Harness, erl, erl_session  # noqa: F401 (fixtures)
from test_interop_cluster import Cluster, ecl, ev, running_cluster, wait_for  # noqa: F401 (fixtures)

import pyfabric
from pyfabric import ANY, Atom, Pid

COUNT = 300
N = Atom("n")

# A collector in the harness `erl`, registered as `drn_sink` (allowed by the erlang_peer
# client): `{get, From}` -> `From ! {sink, Messages}` (in arrival order, cleared).
_SINK = (
    "case whereis(drn_sink) of undefined -> ok; Old -> unregister(drn_sink), exit(Old, kill) end, "
    "register(drn_sink, spawn(fun() -> L = fun L(Acc) -> receive {get, F} -> F ! {sink, lists:reverse(Acc)}, L([]); "
    "M -> L([M | Acc]) end end, L([]) end)), ok"
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """test_interop_cluster.py's three nodes, under names of their own."""
    yield from running_cluster("pydrn")


def erl_sees(erl: Harness, node: str) -> bool:
    """The erlang_peer client ``get(ecl)`` lists client node ``node`` within 5 s."""
    return erl.eval(f"W = fun W(0) -> false; W(K) -> case lists:member('{node}', fabric_peer:nodes(get(ecl))) of "
                    "true -> true; false -> timer:sleep(20), W(K - 1) end end, W(250)") == "true"


def test_drain_moves_a_python_client_with_its_session(erl: Harness, cluster: Cluster, ecl: str) -> None:
    """Drain A while the Python client (A, fallbacks B) and the erlang_peer client (B) send
    each other 300 numbered messages: the Python client resumes its session through B (B
    relays it to A), none lost, duplicated or reordered either way, the proxies kept both
    ways, and A refuses new connections."""
    node = "pydrn@127.0.0.1"
    erl.eval(_SINK)
    erl.eval("fabric_peer:allow(get(ecl), [drn_sink])")
    port_a, port_b = cluster.ports["a"], cluster.ports["b"]
    with pyfabric.connect(HOST, port_a, SECRET, node_name=node, allowed=["pydrn_inbox"],
                          fallbacks=[(HOST, port_b)]) as r:
        assert "acks" in r.features and "session" in r.features
        with r.mailbox("pydrn_inbox") as inbox, r.mailbox() as watch:
            assert wait_for(lambda: Atom(ecl) in r.nodes())
            assert erl_sees(erl, node)
            proxy = r.whereis("ecl_echo", node=ecl)
            assert isinstance(proxy, Pid)
            ref = watch.monitor(proxy)
            # the erlang_peer client's proxy for the Python inbox, before the drain
            r.send(proxy, (inbox.pid, "before"))
            assert inbox.receive(timeout=WAIT) == (proxy, "before")
            assert erl.eval("drn_sink ! {get, self()}, receive {sink, []} -> ok after 5000 -> timeout end") == "ok"

            def python_sends() -> None:
                for i in range(1, COUNT + 1):
                    r.send(("drn_sink", ecl), (N, i, inbox.pid))
                    time.sleep(0.002)

            sender = threading.Thread(target=python_sends)
            assert erl.eval(f"C = get(ecl), spawn(fun() -> [begin ok = fabric_peer:send({{C, {{pydrn_inbox, '{node}'}}}}, "
                            f"{{n, I}}), timer:sleep(2) end || I <- lists:seq(1, {COUNT})] end), ok") == "ok"
            sender.start()
            time.sleep(0.15)  # both directions under way
            assert cluster.nodes["a"].command(f"{{drain_server, {cluster.server_ids['a']}}}") == "ok"
            sender.join(timeout=30)
            assert not sender.is_alive()
            got = [inbox.receive(timeout=WAIT) for _ in range(COUNT)]
            assert got == [(N, i) for i in range(1, COUNT + 1)]
            with pytest.raises(TimeoutError):  # and nothing twice
                inbox.receive(timeout=0.3)
            # at the erlang_peer client: 1..COUNT in order, once each, all from one pid (the
            # proxy for the Python inbox, the same as before the drain)
            check = ("W = fun W(Acc, 0) -> Acc; W(Acc, K) when length(Acc) >= " + str(COUNT) + " -> Acc; "
                     "W(Acc, K) -> drn_sink ! {get, self()}, receive {sink, Ms} -> "
                     "case length(Acc ++ Ms) >= " + str(COUNT) + " of true -> Acc ++ Ms; "
                     "false -> timer:sleep(20), W(Acc ++ Ms, K - 1) end end end, "
                     "All = W([], 250), timer:sleep(300), drn_sink ! {get, self()}, "
                     "Late = receive {sink, L} -> L end, "
                     "{[I || {n, I, _} <- All] =:= lists:seq(1, " + str(COUNT) + "), Late, "
                     "length(lists:usort([P || {n, _, P} <- All])), "
                     "[fabric_peer:is_proxy(P) || {n, 1, P} <- All]}")
            assert erl.eval(check) == "{true,[],1,[true]}"
            # the Python client is at B now (failover), relayed to its session at A
            stats = r.statistics()
            assert stats["server"] == f"{HOST}:{port_b}" and stats["failovers"] >= 1
            assert "relays => 1" in cluster.nodes["b"].command(f"{{info, {cluster.server_ids['b']}}}")
            relayed = ev(cluster.nodes["a"], "length([ok || P <- processes(), "
                         "proc_lib:translate_initial_call(P) =:= {fabric_peer_server, init, 1}, "
                         "#{transport := relay, state := established} <- [catch fabric_peer:info(P)]])")
            assert relayed == "1"
            # proxies kept both ways: ours for the erlang_peer process, and its for our inbox
            assert r.whereis("ecl_echo", node=ecl) == proxy
            r.send(proxy, (inbox.pid, "after"))
            assert inbox.receive(timeout=WAIT) == (proxy, "after")
            with pytest.raises(TimeoutError):  # the proxy did not end
                watch.receive(match=(DOWN, ref, ANY, ANY, ANY), timeout=0.2)
            # A accepts no one now
            with pytest.raises(pyfabric.ConnectFailed):
                pyfabric.connect(HOST, port_a, SECRET, reconnect=False, connect_timeout=2.0)


def test_drain_closing_the_sessions_gives_a_new_session(erl: Harness, cluster: Cluster, ecl: str) -> None:
    """Drain C with ``sessions => close``: the Python client of C (fallbacks B) gets a new
    session at B; its proxy of the old session ends with noconnection, names are looked up
    again and reach the same process, and C refuses new connections."""
    erl_echo(erl, "ecl_echo", dies=True)
    node = "pydrn2@127.0.0.1"
    port_b, port_c = cluster.ports["b"], cluster.ports["c"]
    with pyfabric.connect(HOST, port_c, SECRET, node_name=node, allowed=["pydrn2_inbox"],
                          fallbacks=[(HOST, port_b)]) as r:
        with r.mailbox("pydrn2_inbox") as inbox:
            assert wait_for(lambda: Atom(ecl) in r.nodes())
            proxy = r.whereis("ecl_echo", node=ecl)
            assert isinstance(proxy, Pid)
            ref = inbox.monitor(proxy)
            assert cluster.nodes["c"].command(f"{{drain_server, {cluster.server_ids['c']}, #{{sessions => close}}}}") == "ok"
            assert inbox.receive(match=(DOWN, ref, ANY, ANY, ANY), timeout=WAIT)[4] == NOCONNECTION
            assert wait_for(lambda: r.statistics()["server"] == f"{HOST}:{port_b}" and r.state == "connected")
            assert erl_sees(erl, node)
            again = r.whereis("ecl_echo", node=ecl)
            assert isinstance(again, Pid) and again != proxy
            r.send(again, (inbox.pid, "new_session"))
            assert inbox.receive(timeout=WAIT) == (again, "new_session")
            with pytest.raises(pyfabric.ConnectFailed):
                pyfabric.connect(HOST, port_c, SECRET, reconnect=False, connect_timeout=2.0)
