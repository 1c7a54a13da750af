"""Routing across the servers of a cluster (issue 14, docs/cluster.md): what a hop between two
erlang_peer servers over Erlang distribution costs, and what many clients cost each server.

Three ``erl`` nodes on 127.0.0.1 (``-sname``, a bench cookie, epmd and distribution on the
loopback), each with an erlang_peer server in one cluster scope (``routing``, ``cluster``).
Python clients, in this process:

- ping-pong: C1 at server A does N round trips to an echo of a client C2 at the same server
  (C1 -> A -> C2, "same server") and to one of a client C3 at server B (C1 -> A -> B -> C3,
  "across"), interleaved batch by batch; the figure is the ratio across / same of the median
  round trip (across adds one Erlang message between two nodes each way);
- scale: ``--clients`` clients spread over the three servers (default 30, 300 for the issue's
  run), each sending ``--messages`` messages (default 20) by ``(name, node)`` to the echo of
  the client after it (another server for 2 of 3) and waiting for the replies; the
  throughput, and the memory of each server node (``erlang:memory(total)``) before and after
  connecting the clients, per client.

Usage: python bench/cluster_bench.py [--quick] [--clients N] [--messages N] [--rounds N] [--batch N]
Prints one JSON object. Figures are ratios and per-client costs, never timed assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "interop_tests"))

from erlnode import ErlangNode, erl_string  # noqa: E402

import pyfabric  # noqa: E402
from pyfabric import Atom, Pid  # noqa: E402

SECRET = "cluster-bench"
SCOPE = "pyfcl_bench"
COOKIE = "pyfcl_bench_cookie"
NO_BUSY_WAIT = ("+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none")


async def echo(proc: Any) -> None:
    while True:
        msg = await proc.receive()
        if type(msg) is tuple and len(msg) == 2 and type(msg[0]) is Pid:
            proc.send(msg[0], (proc.pid, msg[1]))


def ev(node: ErlangNode, expr: str) -> str:
    text = erl_string(expr.strip().rstrip(".") + ".")
    return node.command(f"{{eval, {text}}}", timeout=60)


def start_cluster() -> tuple[list[ErlangNode], list[int]]:
    """Three clustered servers; returns the nodes and their ports (stopped by the caller)."""
    os.environ.setdefault("ERL_EPMD_ADDRESS", "127.0.0.1")
    nodes: list[ErlangNode] = []
    ports: list[int] = []
    for label in ("a", "b", "c"):
        node = ErlangNode(extra_args=(*NO_BUSY_WAIT, "-sname", f"pyfcl_bench_{label}_{os.getpid()}",
                                      "-setcookie", COOKIE, "-kernel", "inet_dist_use_interface", "{127,0,0,1}"))
        nodes.append(node)
        node.start()
        ports.append(node.start_server(SECRET, allowed=[], routing="true", cluster=SCOPE,
                                       max_new_atoms="100000", max_server_atoms="1000000"))
    names = [ev(n, "atom_to_list(node())").strip('"') for n in nodes]
    for name in names[1:]:
        assert ev(nodes[0], f"net_kernel:connect_node('{name}')") == "true"
    deadline = time.monotonic() + 30
    while not all(ev(n, f"{{length(nodes()), length(pg:get_members({SCOPE}, fabric_peer_servers))}}") == "{2,3}"
                  for n in nodes):
        assert time.monotonic() < deadline, "the cluster did not form"
        time.sleep(0.05)
    return nodes, ports


def memory(nodes: list[ErlangNode]) -> list[int]:
    return [int(ev(n, "erlang:garbage_collect(), erlang:memory(total)")) for n in nodes]


def client(port: int, node_name: str) -> Any:
    c = pyfabric.connect("127.0.0.1", port, SECRET, node_name=node_name, allowed=["echo"])
    c.spawn(echo, name="echo")
    return c


def wait_visible(c: Any, names: list[str]) -> None:
    deadline = time.monotonic() + 30
    while not {Atom(n) for n in names} <= set(c.nodes()):
        assert time.monotonic() < deadline, "directory not complete"
        time.sleep(0.05)


def round_trips(c: Any, box: Any, dest: tuple[str, str], n: int) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        c.send(dest, (box.pid, i))
        box.receive(timeout=10)
        times.append(time.perf_counter() - t0)
    return times


def ping_pong(ports: list[int], rounds: int, batch: int) -> dict[str, Any]:
    c1, c2, c3 = client(ports[0], "pp1@127.0.0.1"), client(ports[0], "pp2@127.0.0.1"), client(ports[1], "pp3@127.0.0.1")
    try:
        wait_visible(c1, ["pp2@127.0.0.1", "pp3@127.0.0.1"])
        same: list[float] = []
        across: list[float] = []
        with c1.mailbox() as box:
            round_trips(c1, box, ("echo", "pp2@127.0.0.1"), batch)  # warm up both paths
            round_trips(c1, box, ("echo", "pp3@127.0.0.1"), batch)
            for _ in range(rounds):
                same += round_trips(c1, box, ("echo", "pp2@127.0.0.1"), batch)
                across += round_trips(c1, box, ("echo", "pp3@127.0.0.1"), batch)
        return {"round_trips_each": len(same),
                "same_server_median_us": round(statistics.median(same) * 1e6, 1),
                "across_servers_median_us": round(statistics.median(across) * 1e6, 1),
                "across_over_same": round(statistics.median(across) / statistics.median(same), 2)}
    finally:
        for c in (c1, c2, c3):
            c.close()


def scale(nodes: list[ErlangNode], ports: list[int], clients: int, messages: int) -> dict[str, Any]:
    before = memory(nodes)
    names = [f"sc{i}@127.0.0.1" for i in range(clients)]
    cs = [client(ports[i % 3], names[i]) for i in range(clients)]
    try:
        wait_visible(cs[0], names[1:])
        after = memory(nodes)
        t0 = time.perf_counter()
        boxes = [c.mailbox() for c in cs]
        for i, (c, box) in enumerate(zip(cs, boxes)):
            target = names[(i + 1) % clients]
            for m in range(messages):
                c.send(("echo", target), (box.pid, m))
        for box in boxes:
            for _ in range(messages):
                box.receive(timeout=30)
        elapsed = time.perf_counter() - t0
        for box in boxes:
            box.close()
        total = clients * messages
        return {"clients": clients, "messages": total, "seconds": round(elapsed, 3),
                "round_trips_per_s": round(total / elapsed),
                "server_memory_per_client_bytes": [round((a - b) / (clients / 3)) for a, b in zip(after, before)]}
    finally:
        for c in cs:
            c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (smoke test)")
    ap.add_argument("--clients", type=int, default=30)
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=50)
    args = ap.parse_args()
    if args.quick:
        args.clients, args.messages, args.rounds, args.batch = 6, 5, 2, 10
    nodes, ports = start_cluster()
    try:
        result = {"bench": "cluster", "ping_pong": ping_pong(ports, args.rounds, args.batch),
                  "scale": scale(nodes, ports, args.clients, args.messages)}
    finally:
        for n in nodes:
            n.stop()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
