"""``make demo-cluster``: three clustered erlang_peer servers, a Python client and an erlang_peer
client on different servers (docs/cluster.md).

Starts three distributed ``erl`` nodes on this machine (``-sname``, a generated cookie,
distribution and a private epmd on 127.0.0.1 only, OS-picked ports), each running an
erlang_peer server in one cluster (``fabric_peer_cluster_demo``, erlang_peer/test_support/).
The erlang_peer client ``ecl@127.0.0.1`` is a client of server B (its fallback: server C)
and the Python client ``py@127.0.0.1`` one of server A. The demo shows routing by
``{Name, Node}`` both ways, a name registered in ``global`` by the erlang_peer client reached
by name from Python, and a failover: B's node is stopped, Python sees ``nodedown`` and
``noconnection``, the erlang_peer client moves to C, and the same name and node reach it again.
Everything it starts is stopped at the end; each step waits at most ``WAIT`` seconds.

The narrative goes to stdout through ``logging``. Run it from the repository after
``make peer`` (``make demo-cluster`` does both).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyfabric
from pyfabric import ANY, Atom, Pid

log = logging.getLogger("cluster_demo")

SECRET = "demo-cluster-secret"
SCOPE = "demo_cluster"
PY_NODE = "py@127.0.0.1"
ECL_NODE = "ecl@127.0.0.1"
WAIT = 10.0
_BUILD = Path(__file__).resolve().parents[1] / "erlang_peer" / "_build"
EBIN = _BUILD / "default" / "lib" / "fabric_peer" / "ebin"
SUPPORT_EBIN = _BUILD / "test_support" / "ebin"


def _free_port() -> int:
    """A port the OS picks on the loopback (for the private epmd)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``check()`` every 50 ms until it returns a true value; raise after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.05)


class ErlNode:
    """One distributed ``erl`` running ``fabric_peer_cluster_demo`` (a clustered server)."""

    def __init__(self, label: str, env: dict[str, str], cookie: str, args: list[str]) -> None:
        erl = shutil.which("erl")
        if erl is None:
            raise SystemExit("erl not found: run `make setup` (it installs Erlang/OTP)")
        for directory, beam in ((EBIN, "fabric_peer.beam"), (SUPPORT_EBIN, "fabric_peer_cluster_demo.beam")):
            if not (directory / beam).exists():
                raise SystemExit(f"erlang_peer is not built ({beam} is not in {directory}): run `make peer`")
        self.label = label
        self.sname = f"fabric_demo_{label}_{os.getpid()}"
        self.node = f"{self.sname}@{socket.gethostname().split('.')[0]}"
        self.proc = subprocess.Popen(
            [erl, "-noshell", "-sname", self.sname, "-setcookie", cookie,
             "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
             "-pa", str(EBIN), "-pa", str(SUPPORT_EBIN),
             "-run", "fabric_peer_cluster_demo", "main", SECRET, SCOPE, *args],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("port "):
            self.stop()
            raise RuntimeError(f"server {label} did not start (it said {line!r})")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        """Stop the node (SIGTERM: the VM stops at once, its connections close), then reap it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=WAIT)


def run(nodes: dict[str, ErlNode]) -> dict[str, Any]:
    """The demo's exchange; returns its key outcomes (for the interop test)."""
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    outcome: dict[str, Any] = {}
    with pyfabric.connect("127.0.0.1", a.port, SECRET, node_name=PY_NODE, allowed=["py_inbox"],
                          fallbacks=[("127.0.0.1", c.port)]) as client, \
            client.mailbox() as box, client.mailbox("py_inbox") as inbox:
        log.info("Python client %s connected to server A (%s, port %d)", PY_NODE, a.node, a.port)
        wait_for(lambda: Atom(ECL_NODE) in client.nodes(), f"{ECL_NODE} in nodes()")
        log.info("nodes() at the Python client: %s (the erlang_peer client, at server B)",
                 [str(n) for n in client.nodes()])

        # {Name, Node}: Python (server A) -> erlang_peer client (server B), and back
        client.send(("ecl_echo", ECL_NODE), (box.pid, "hello"))
        echo, (_, via, msg) = box.receive(match=(ANY, (Atom("ecl_echo"), ANY, ANY)), timeout=WAIT)
        outcome["routed_via"] = via
        log.info("{ecl_echo, %s} answered %r, its client connected to port %d (server B)", ECL_NODE, msg, via)
        client.send(echo, (box.pid, (Atom("tell"), Atom("py_inbox"), Atom(PY_NODE), "hi Python")))
        box.receive(match=(echo, (Atom("ecl_echo"), ANY, (Atom("told"), ANY))), timeout=WAIT)
        told = inbox.receive(match=(Atom("from_ecl"), ANY), timeout=WAIT)
        outcome["from_ecl"] = told[1]
        log.info("the erlang_peer client sent to {py_inbox, %s} through B and A: %r", PY_NODE, told)

        # a global name the erlang_peer client registered through server B, reached by name at A
        found = wait_for(lambda: client.whereis("demo_echo"), "demo_echo in global")
        outcome["global_is_echo"] = found == echo
        client.send("demo_echo", (box.pid, "by global name"))
        _, (_, _, gmsg) = box.receive(match=(ANY, (Atom("ecl_echo"), ANY, "by global name")), timeout=WAIT)
        log.info("global name demo_echo (the same process: %s) answered %r", found == echo, gmsg)

        # failover: B's node stops
        ref = box.monitor(echo)
        client.monitor_node(ECL_NODE, box.pid)
        log.info("stopping server B's node %s ...", b.node)
        t0 = time.monotonic()
        b.stop()
        down = box.receive(match=(Atom("DOWN"), ref, ANY, ANY, ANY), timeout=WAIT)
        outcome["down_reason"] = down[4]
        nodedown = box.receive(match=(Atom("nodedown"), ANY), timeout=WAIT)
        outcome["nodedown"] = str(nodedown[1])
        log.info("at the Python client: the proxy of ecl_echo ended with %r, %r", down[4], nodedown)
        wait_for(lambda: Atom(ECL_NODE) in client.nodes(), f"{ECL_NODE} back")
        client.send(("ecl_echo", ECL_NODE), (box.pid, "after the failover"))
        echo2, (_, via2, msg2) = box.receive(match=(ANY, (Atom("ecl_echo"), ANY, ANY)), timeout=WAIT)
        outcome["failover_seconds"] = time.monotonic() - t0
        outcome["failover_via"] = via2
        outcome["new_proxy"] = echo2 != echo
        log.info("{ecl_echo, %s} answers again after %.2f s: %r, its client now at port %d (server C)",
                 ECL_NODE, outcome["failover_seconds"], msg2, via2)
        found2 = wait_for(lambda: client.whereis("demo_echo"), "demo_echo registered again")
        client.send("demo_echo", (box.pid, "global again"))
        box.receive(match=(ANY, (Atom("ecl_echo"), ANY, "global again")), timeout=WAIT)
        outcome["global_again"] = isinstance(found2, Pid) and found2 == echo2
        log.info("demo_echo is registered again (through server C) and answers")
    return outcome


def main() -> dict[str, Any]:
    """Start the cluster, run the demo, stop everything; return the outcomes."""
    cookie = secrets.token_hex(16)
    epmd_port = _free_port()
    env = dict(os.environ, ERL_EPMD_ADDRESS="127.0.0.1", ERL_EPMD_PORT=str(epmd_port),
               ERL_CRASH_DUMP_SECONDS="0")
    nodes: dict[str, ErlNode] = {}
    try:
        nodes["a"] = ErlNode("a", env, cookie, [])
        nodes["b"] = ErlNode("b", env, cookie, [nodes["a"].node])
        nodes["c"] = ErlNode("c", env, cookie, [nodes["a"].node, str(nodes["b"].port)])
        log.info("three clustered erlang_peer servers: A %s:%d, B %s:%d, C %s:%d (cookie generated, "
                 "epmd on 127.0.0.1:%d)", nodes["a"].node, nodes["a"].port, nodes["b"].node,
                 nodes["b"].port, nodes["c"].node, nodes["c"].port, epmd_port)
        outcome = run(nodes)
    finally:
        for node in nodes.values():
            node.stop()
        epmd = shutil.which("epmd")
        if epmd is not None:
            subprocess.run([epmd, "-port", str(epmd_port), "-kill"], env=env, capture_output=True, timeout=WAIT,
                           check=False)
    log.info("demo finished: every node stopped")
    return outcome


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("pyfabric").setLevel(logging.ERROR)
    main()
