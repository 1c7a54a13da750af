"""A cluster of erlang_peer servers with a Python client (docs/cluster.md, issue 14).

Three ``erl`` nodes (``-sname``, a test cookie, distribution on 127.0.0.1 and epmd on the
loopback) each run an erlang_peer server with ``routing``, ``cluster => pyfcl_scope`` and
``register_global``; the nodes are connected to each other. The Python client is a client
node of server A; the erlang_peer client is a client node of server B and runs in the shared,
non-distributed harness ``erl`` (so its processes are not on a cluster node: a message between
the two clients can only go client -> A -> B -> client). Covered: ``{Name, Node}`` both
ways, ``whereis`` with a node, ``nodes()``, one proxy per pid, a monitor across with the real
reason, global names (an Erlang process registered on node C; an erlang_peer client's process
registered through B) reached from the Python client (the Python client's own
``register_global`` is test_interop_global.py, with this module's fixtures), a Python client's session resumed
through C (its ``fallbacks``) while A stays up (relayed to A: its proxy kept, 200 messages
none lost), and B's
node stopped: the Python
client gets ``nodedown`` and ``noconnection`` at once, and the erlang_peer client (with
``fallbacks``) is reachable again through C within 5 s.

The module's nodes are started once (module fixture) and stopped at the end; the failover
test stops B and runs last.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from erl_clients import NODEDOWN, erl_client, erl_close, erl_echo
from erlnode import ErlangNode, erl_string
from interop_support import (  # noqa: F401
    CUSTOM_REASON,
    DIE,
    DOWN,
    ERL_ARGS,
    HOST,
    NOCONNECTION,
    SECRET,
    WAIT,
    Harness,
    echo,
    erl,
    erl_session,
    require_erl,
)

import pyfabric
from pyfabric import ANY, Atom, Pid

SCOPE = "pyfcl_scope"
COOKIE = "pyfcl_test_cookie"
PY = "pycl@127.0.0.1"
EC = "ecl@127.0.0.1"
def ev(node: ErlangNode, expr: str) -> str:
    """``{eval, Expr}`` on one of the cluster's nodes."""
    return node.command("{eval, %s}" % erl_string(expr.strip().rstrip(".") + "."))


def wait_for(check: Any, timeout: float = WAIT) -> bool:
    """Poll ``check()`` every 20 ms until it is true or ``timeout`` s passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = bool(check())
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.02)


class Cluster:
    """Three distributed ``erl`` nodes with one clustered erlang_peer server each."""

    def __init__(self, prefix: str = "pyfcl", **server_options: str) -> None:
        self.prefix = prefix  # of the nodes' short names (another module's cluster has its own)
        self.server_options = server_options  # more server options (Erlang term texts)
        self.nodes: dict[str, ErlangNode] = {}
        self.names: dict[str, str] = {}
        self.ports: dict[str, int] = {}
        self.server_ids: dict[str, int] = {}

    def start(self) -> Cluster:
        for label in ("a", "b", "c"):
            sname = f"{self.prefix}_{label}_{os.getpid()}"
            node = ErlangNode(extra_args=(*ERL_ARGS, "-sname", sname, "-setcookie", COOKIE,
                                          "-kernel", "inet_dist_use_interface", "{127,0,0,1}"))
            self.nodes[label] = node
            node.start()
            self.names[label] = ev(node, "atom_to_list(node())").strip('"')
            self.ports[label] = node.start_server(
                SECRET, allowed=[], routing="true", cluster=SCOPE, register_global="true",
                route_heartbeat="300", route_grace="1000", **self.server_options)
            self.server_ids[label] = node.server_id
        a = self.nodes["a"]
        for label in ("b", "c"):
            assert ev(a, f"net_kernel:connect_node('{self.names[label]}')") == "true"
        servers = f"length(pg:get_members({SCOPE}, fabric_peer_servers))"
        assert wait_for(lambda: all(ev(n, f"{{length(nodes()), {servers}}}") == "{2,3}"
                                    for n in self.nodes.values()), timeout=15.0)
        return self

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


def running_cluster(prefix: str = "pyfcl", **server_options: str) -> Iterator[Cluster]:
    """The body of a module's ``cluster`` fixture: the three nodes under short names starting
    with ``prefix`` (each module its own, so modules never share or collide), stopped after;
    ``server_options``: more options of the three servers (Erlang term texts)."""
    require_erl()
    c = Cluster(prefix, **server_options)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ERL_EPMD_ADDRESS", "127.0.0.1")  # an epmd these nodes start listens on the loopback only
        try:
            yield c.start()
        finally:
            c.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from running_cluster()


@pytest.fixture(scope="module")
def ecl(erl: Harness, cluster: Cluster) -> Iterator[str]:
    """The erlang_peer client node ``ecl@127.0.0.1`` at server B (fallbacks: C), in the harness
    ``erl``, allowing ``ecl_echo`` (an Erlang echo there). Its pid is ``get(ecl)``."""
    erl_echo(erl, "ecl_echo", dies=True)
    erl_client(erl, "ecl", cluster.ports["b"], EC, "[ecl_echo]", fallbacks=(cluster.ports["c"],))
    try:
        yield EC
    finally:
        erl_close(erl, "ecl")


@pytest.fixture
def pycl(cluster: Cluster) -> Iterator[Any]:
    """The Python client node ``pycl@127.0.0.1`` at server A, allowing ``py_echo``."""
    with pyfabric.connect(HOST, cluster.ports["a"], SECRET, node_name=PY, allowed=["py_echo"]) as c:
        c.spawn(echo, name="py_echo")
        yield c


def test_routing_both_ways_across_servers(erl: Harness, ecl: str, pycl: Any) -> None:
    """Python C1 (server A) <-> erlang_peer C2 (server B): by name and node, whereis, nodes, one proxy per pid."""
    assert wait_for(lambda: Atom(EC) in pycl.nodes())
    with pycl.mailbox() as box:
        pycl.send(("ecl_echo", EC), (box.pid, "hi"))
        sender, reply = box.receive(timeout=WAIT)
        assert reply == "hi"
        found = pycl.whereis("ecl_echo", node=EC)
        assert isinstance(found, Pid) and found == sender
        pycl.send(found, (box.pid, "again"))
        assert box.receive(timeout=WAIT) == (found, "again")
        assert pycl.whereis("not_allowed_there", node=EC) is None
    # and from the erlang_peer client to the Python one
    assert erl.eval(f"W = fun W(0) -> false; W(N) -> case lists:member('{PY}', fabric_peer:nodes(get(ecl))) of "
                    "true -> true; false -> timer:sleep(20), W(N - 1) end end, W(250)") == "true"
    assert erl.eval(f"fabric_peer:send({{get(ecl), {{py_echo, '{PY}'}}}}, {{self(), from_ecl}})") == "ok"
    assert erl.eval("receive {P, from_ecl} when is_pid(P) -> fabric_peer:is_proxy(P) after 5000 -> timeout end") == "true"


def test_monitor_across_servers_real_reason(erl: Harness, ecl: str, pycl: Any) -> None:
    """A Python monitor on a process of the erlang_peer client (another server): the real reason."""
    erl_echo(erl, "ecl_victim", dies=True)
    erl.eval("fabric_peer:allow(get(ecl), [ecl_victim])")
    with pycl.mailbox() as box:
        victim = pycl.whereis("ecl_victim", node=EC)
        assert isinstance(victim, Pid)
        ref = box.monitor(victim)
        pycl.send(victim, (DIE, CUSTOM_REASON))
        assert box.receive(match=(DOWN, ref, ANY, ANY, ANY), timeout=WAIT)[4] == CUSTOM_REASON


def test_global_names_reach_the_python_client(erl: Harness, cluster: Cluster, ecl: str, pycl: Any) -> None:
    """A name registered in `global` on node C, and one an erlang_peer client registered through
    server B, both reached by the Python client through server A (which allows them)."""
    c, a = cluster.nodes["c"], cluster.nodes["a"]
    assert ev(c, "yes = global:register_name(pyfcl_gecho, spawn(fun L() -> receive {F, M} when is_pid(F) -> "
                 "F ! {self(), {on_c, M}}, L() end end)), ok") == "ok"
    # the erlang_peer client registers its echo globally through B
    assert erl.eval("fabric_peer:register_global(get(ecl), pyfcl_ereg, whereis(ecl_echo))") == "ok"
    assert erl.eval("fabric_peer:register_global(get(ecl), pyfcl_gecho, whereis(ecl_echo))") == \
        "{error,{name_in_use,pyfcl_gecho}}"
    assert wait_for(lambda: ev(a, "{is_pid(global:whereis_name(pyfcl_gecho)), is_pid(global:whereis_name(pyfcl_ereg))}")
                    == "{true,true}")
    # not allowed at A yet
    assert pycl.whereis("pyfcl_gecho") is None
    assert a.command(f"{{allow, {cluster.server_ids['a']}, [pyfcl_gecho, pyfcl_ereg]}}") == "ok"
    with pycl.mailbox() as box:
        pycl.send("pyfcl_gecho", (box.pid, "hello"))
        sender, reply = box.receive(timeout=WAIT)
        assert reply == (Atom("on_c"), "hello")
        assert pycl.whereis("pyfcl_gecho") == sender
        pycl.send("pyfcl_ereg", (box.pid, "to_ecl"))
        assert box.receive(timeout=WAIT)[1] == "to_ecl"
    assert erl.eval("fabric_peer:unregister_global(get(ecl), pyfcl_ereg)") == "ok"
    assert wait_for(lambda: ev(a, "global:whereis_name(pyfcl_ereg)") == "undefined")


class Forwarder:
    """A TCP forwarder on 127.0.0.1 to ``target``: the client's path to a server, which
    ``close()`` cuts as a network failure would (its connections closed, its address then
    refused) while the server stays up."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                b = socket.create_connection(("127.0.0.1", self.target))
                self.pairs.append((a, b))
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept, refuses the next ones
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def test_python_session_resumed_through_another_server(erl: Harness, cluster: Cluster, ecl: str) -> None:
    """A Python client reaches server A through a path that is then lost (A stays up); its
    ``fallbacks`` take it to C, which relays it to its session at A. Its proxy keeps its
    identity and the 200 messages the erlang_peer client sent it meanwhile all arrive, in order."""
    fwd = Forwarder(cluster.ports["a"])
    node = "pyrel@127.0.0.1"
    try:
        with pyfabric.connect(HOST, fwd.port, SECRET, node_name=node, allowed=["pyrel_inbox"],
                              fallbacks=[(HOST, cluster.ports["c"])]) as r:
            with r.mailbox("pyrel_inbox") as inbox:
                assert wait_for(lambda: Atom(EC) in r.nodes())
                proxy = r.whereis("ecl_echo", node=EC)
                assert isinstance(proxy, Pid)
                ref = inbox.monitor(proxy)
                assert erl.eval(f"W = fun W(0) -> false; W(N) -> case lists:member('{node}', fabric_peer:nodes(get(ecl))) of "
                                "true -> true; false -> timer:sleep(20), W(N - 1) end end, W(250)") == "true"
                fwd.close()  # the path to A is gone: connections cut, the address refused
                assert erl.eval(f"[ok = fabric_peer:send({{get(ecl), {{pyrel_inbox, '{node}'}}}}, {{n, I}}) "
                                "|| I <- lists:seq(1, 200)], ok") == "ok"
                got = [inbox.receive(timeout=WAIT) for _ in range(200)]
                assert got == [(Atom("n"), i) for i in range(1, 201)]
                assert r.whereis("ecl_echo", node=EC) == proxy
                r.send(proxy, (inbox.pid, "still"))
                assert inbox.receive(timeout=WAIT) == (proxy, "still")
                with pytest.raises(TimeoutError):  # the proxy did not end
                    inbox.receive(match=(DOWN, ref, ANY, ANY, ANY), timeout=0.2)
                relayed = ev(cluster.nodes["a"], "length([ok || P <- processes(), "
                             "proc_lib:translate_initial_call(P) =:= {fabric_peer_server, init, 1}, "
                             "#{transport := relay, state := established} <- [catch fabric_peer:info(P)]])")
                assert relayed == "1"
    finally:
        fwd.close()


def test_server_node_stopped_failover(erl: Harness, cluster: Cluster, ecl: str, pycl: Any) -> None:
    """B's node stops: the Python client sees the erlang_peer client's node go down and its
    proxy end with noconnection at once; the erlang_peer client moves to C (fallbacks) and is
    reachable by name again within 5 s. (Runs last: B stays stopped.)"""
    assert wait_for(lambda: Atom(EC) in pycl.nodes())
    with pycl.mailbox() as box:
        proxy = pycl.whereis("ecl_echo", node=EC)
        assert isinstance(proxy, Pid)
        pycl.monitor_node(EC, box.pid)
        ref = box.monitor(proxy)
        start = time.monotonic()
        cluster.nodes["b"].stop()
        assert box.receive(match=(NODEDOWN, ANY), timeout=WAIT) == (NODEDOWN, Atom(EC))
        assert box.receive(match=(DOWN, ref, ANY, ANY, ANY), timeout=WAIT)[4] == NOCONNECTION
        assert wait_for(lambda: Atom(EC) in pycl.nodes())
        elapsed = time.monotonic() - start
        assert elapsed < 5.0, elapsed
        pycl.send(("ecl_echo", EC), (box.pid, "after_failover"))
        sender, reply = box.receive(timeout=WAIT)
        assert reply == "after_failover" and sender != proxy
