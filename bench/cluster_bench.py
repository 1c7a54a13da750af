"""Routing across the servers of a cluster (issue 14, docs/cluster.md): what a hop between two
erlang_peer servers over Erlang distribution costs, what many clients cost each server, and
how both grow with the number of servers.

``erl`` nodes on 127.0.0.1 (``-sname``, a bench cookie, epmd and distribution on the
loopback), each with an erlang_peer server in one cluster scope (``routing``, ``cluster``);
the cluster starts with three servers and grows to each count of ``--servers`` (default 3, 5,
7: nodes are added, connected and their servers join the scope). Python clients:

- ping-pong (three servers): C1 at server A does N round trips to an echo of a client C2 at
  the same server (C1 -> A -> C2, "same server") and to one of a client C3 at the last server C (C1 ->
  A -> C -> C3, "across"), interleaved batch by batch; the figure is the ratio across / same
  of the median round trip (across adds one Erlang message between two nodes each way);
- scale (three servers): ``--clients`` clients spread over the servers (default 30, 300 for
  the issue's run), each sending ``--messages`` messages (default 20) by ``(name, node)`` to
  the echo of the client after it (another server for 2 of 3) and waiting for the replies;
  the throughput, and the memory of each server node (``erlang:memory(total)``) before and
  after connecting the clients, per client of its own. Run twice: every client in this
  process, then the same clients spread over ``--procs`` driver processes (this script with
  ``--driver``), so that one Python process is not the limit; the ratio of the two rates
  (each the median of ``--repeat`` exchanges with the same clients, default 2);
- growth (each server count): the same ping-pong (C3 at the newest server) and a smaller
  scale run (``--growth-clients`` clients over all the servers, in this process, each sending
  ``--growth-messages``), each
  figure also as a ratio to the three-server one of this run.

Usage: python bench/cluster_bench.py [--quick] [--clients N] [--messages N] [--rounds N]
       [--batch N] [--procs N] [--servers 3,5,7] [--growth-clients N] [--growth-messages N]
       [--repeat N]
Prints one JSON object. Figures are ratios and per-client costs, never timed assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "interop_tests"))

from erlnode import ErlangNode, ensure_compiled, erl_string  # noqa: E402

import pyfabric  # noqa: E402
from pyfabric import Pid  # noqa: E402

SECRET = "cluster-bench"
SCOPE = "pyfcl_bench"
COOKIE = "pyfcl_bench_cookie"
NO_BUSY_WAIT = ("+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none")
LABELS = "abcdefghij"
# A closed Python client leaves its session detached at its server until session_timeout
# (the protocol has no close frame): short here, so that a run starts with no session of the
# last one (``idle_memory``).
SESSION_TIMEOUT_MS = 500


async def echo(proc: Any) -> None:
    while True:
        msg = await proc.receive()
        if type(msg) is tuple and len(msg) == 2 and type(msg[0]) is Pid:
            proc.send(msg[0], (proc.pid, msg[1]))


def ev(node: ErlangNode, expr: str) -> str:
    text = erl_string(expr.strip().rstrip(".") + ".")
    return node.command(f"{{eval, {text}}}", timeout=60)


def wait_until(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


class Cluster:
    """Clustered servers, one per ``erl`` node; grows by whole nodes (stopped by ``stop``)."""

    def __init__(self) -> None:
        self.nodes: list[ErlangNode] = []
        self.ports: list[int] = []
        self.names: list[str] = []
        self.server_ids: list[int] = []

    def grow(self, count: int) -> None:
        """Start nodes (and their servers) until there are ``count``, all connected and in the scope."""
        os.environ.setdefault("ERL_EPMD_ADDRESS", "127.0.0.1")
        ensure_compiled()
        fresh = [ErlangNode(extra_args=(*NO_BUSY_WAIT, "-sname", f"pyfcl_bench_{LABELS[i]}_{os.getpid()}",
                                        "-setcookie", COOKIE, "-kernel", "inet_dist_use_interface", "{127,0,0,1}"))
                 for i in range(len(self.nodes), count)]
        self.nodes += fresh
        for node in fresh:
            node.start()
            self.ports.append(node.start_server(SECRET, allowed=[], routing="true", cluster=SCOPE,
                                                max_new_atoms="100000", max_server_atoms="1000000",
                                                session_timeout=str(SESSION_TIMEOUT_MS)))
            self.server_ids.append(node.server_id)
            self.names.append(ev(node, "atom_to_list(node())").strip('"'))
        for name in self.names[1:]:
            assert ev(self.nodes[0], f"net_kernel:connect_node('{name}')") == "true"
        full = f"{{{count - 1},{count}}}"
        wait_until(lambda: all(ev(n, f"{{length(nodes()), length(pg:get_members({SCOPE}, fabric_peer_servers))}}") == full
                               for n in self.nodes), "the cluster did not form")
        # warm up the fresh servers (code loaded, first buffers) so that a per-client memory
        # figure is not the one-time cost of the first client
        warm = [client(self.ports[i], f"warm{count}_{i}@127.0.0.1") for i in range(count - len(fresh), count)]
        self.wait_directory(f"warm{count}_", len(warm))
        for c in warm:
            c.close()

    def idle_memory(self) -> list[int]:
        """``memory()`` once no server has a connection process left (the last run's clients
        are gone: their sessions expired, ``SESSION_TIMEOUT_MS``) and the directory is empty."""
        wait_until(lambda: all("processes => 0," in n.command(f"{{info, {i}}}")
                               for n, i in zip(self.nodes, self.server_ids)), "the last run's connections did not end")
        # and every node's copy of the directory has dropped them (pg replicates asynchronously)
        wait_until(lambda: all(ev(n, f"pg:which_groups({SCOPE})") == "[fabric_peer_servers]" for n in self.nodes),
                   "the last run's clients are still in the directory")
        return self.memory()

    def memory(self) -> list[int]:
        """``erlang:memory(total)`` of each node after a garbage collection of every process
        (without it, the heaps' garbage of the last run blurs a per-client figure)."""
        expr = "[erlang:garbage_collect(P) || P <- processes()], erlang:memory(total)"
        return [int(ev(n, expr)) for n in self.nodes]

    def wait_directory(self, prefix: str, count: int) -> None:
        """Every server node's ``pg`` view lists the ``count`` connected clients named ``prefix...``."""
        expr = f"length([x || {{fabric_peer_up, <<\"{prefix}\", _/binary>>}} <- pg:which_groups({SCOPE})])"
        wait_until(lambda: all(int(ev(n, expr)) >= count for n in self.nodes), f"directory of {prefix} not complete", 60)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def client(port: int, node_name: str) -> Any:
    c = pyfabric.connect("127.0.0.1", port, SECRET, node_name=node_name, allowed=["echo"])
    c.spawn(echo, name="echo")
    return c


def round_trips(c: Any, box: Any, dest: tuple[str, str], n: int) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        c.send(dest, (box.pid, i))
        box.receive(timeout=10)
        times.append(time.perf_counter() - t0)
    return times


def ping_pong(cl: Cluster, rounds: int, batch: int, prefix: str) -> dict[str, Any]:
    """C1 and C2 at the first server, C3 at the last one."""
    n1, n2, n3 = (f"{prefix}{i}@127.0.0.1" for i in (1, 2, 3))
    c1, c2, c3 = client(cl.ports[0], n1), client(cl.ports[0], n2), client(cl.ports[-1], n3)
    try:
        cl.wait_directory(prefix, 3)
        same: list[float] = []
        across: list[float] = []
        with c1.mailbox() as box:
            round_trips(c1, box, ("echo", n2), batch)  # warm up both paths
            round_trips(c1, box, ("echo", n3), batch)
            for _ in range(rounds):
                same += round_trips(c1, box, ("echo", n2), batch)
                across += round_trips(c1, box, ("echo", n3), batch)
        return {"round_trips_each": len(same),
                "same_server_median_us": round(statistics.median(same) * 1e6, 1),
                "across_servers_median_us": round(statistics.median(across) * 1e6, 1),
                "across_over_same": round(statistics.median(across) / statistics.median(same), 2)}
    finally:
        for c in (c1, c2, c3):
            c.close()


def exchange(cs: list[Any], names: list[str], first: int, total: int, messages: int) -> tuple[float, float]:
    """Clients ``cs`` (global indexes ``first...``) each send ``messages`` to the echo of the
    client after them (of ``total``) and wait for the replies; returns (start, end) monotonic."""
    boxes = [c.mailbox() for c in cs]
    t0 = time.monotonic()
    for k, (c, box) in enumerate(zip(cs, boxes)):
        target = names[(first + k + 1) % total]
        for m in range(messages):
            c.send(("echo", target), (box.pid, m))
    for box in boxes:
        for _ in range(messages):
            box.receive(timeout=30)
    t1 = time.monotonic()
    for box in boxes:
        box.close()
    return t0, t1


def scale(cl: Cluster, clients: int, messages: int, prefix: str, repeat: int) -> dict[str, Any]:
    """Every client in this process; the exchange ``repeat`` times."""
    before = cl.idle_memory()
    names = [f"{prefix}{i}@127.0.0.1" for i in range(clients)]
    cs = [client(cl.ports[i % len(cl.ports)], names[i]) for i in range(clients)]
    try:
        cl.wait_directory(prefix, clients)
        after = cl.memory()
        spans = [exchange(cs, names, 0, clients, messages) for _ in range(repeat)]
        return scale_result(cl, clients, messages, [t1 - t0 for t0, t1 in spans], before, after, procs=1)
    finally:
        for c in cs:
            c.close()


def scale_procs(cl: Cluster, clients: int, messages: int, procs: int, prefix: str, repeat: int) -> dict[str, Any]:
    """The clients spread over ``procs`` driver processes (``--driver``), started together
    (``repeat`` times: each exchange spans from the first start to the last end)."""
    before = cl.idle_memory()
    share = -(-clients // procs)
    ports = ",".join(map(str, cl.ports))
    drivers = [subprocess.Popen([sys.executable, __file__, "--driver", "--ports", ports, "--prefix", prefix,
                                 "--first", str(first), "--count", str(min(share, clients - first)),
                                 "--total", str(clients), "--messages", str(messages)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for first in range(0, clients, share)]
    try:
        for d in drivers:
            assert d.stdout is not None and d.stdout.readline().strip() == "connected", "a driver failed to connect"
        cl.wait_directory(prefix, clients)
        after = cl.memory()
        elapsed = []
        for _ in range(repeat):
            tell(drivers, "go")
            spans = [json.loads(d.stdout.readline()) for d in drivers if d.stdout is not None]
            elapsed.append(max(s["t1"] for s in spans) - min(s["t0"] for s in spans))
        tell(drivers, "quit")
        for d in drivers:
            d.wait(timeout=60)
        return scale_result(cl, clients, messages, elapsed, before, after, procs=len(drivers))
    finally:
        for d in drivers:
            if d.poll() is None:
                d.kill()
                d.wait()


def tell(drivers: list[subprocess.Popen[str]], line: str) -> None:
    for d in drivers:
        assert d.stdin is not None
        d.stdin.write(line + "\n")
        d.stdin.flush()


def scale_result(cl: Cluster, clients: int, messages: int, elapsed: list[float], before: list[int], after: list[int],
                 procs: int) -> dict[str, Any]:
    """The median of the repeated exchanges' rates (each of them in ``round_trips_per_s_each``)."""
    total = clients * messages
    local = clients / len(cl.nodes)
    rates = [round(total / e) for e in elapsed]
    return {"servers": len(cl.nodes), "clients": clients, "processes": procs, "messages": total,
            "seconds": round(statistics.median(elapsed), 3), "round_trips_per_s": round(statistics.median(rates)),
            "round_trips_per_s_each": rates,
            "server_memory_per_client_bytes": [round((a - b) / local) for a, b in zip(after, before)]}


def driver(args: argparse.Namespace) -> None:
    """``--driver``: connect this share of the clients, say ``connected``; on each ``go``,
    exchange and print ``{"t0", "t1"}``; on ``quit`` (every driver done), close them."""
    ports = [int(p) for p in args.ports.split(",")]
    names = [f"{args.prefix}{i}@127.0.0.1" for i in range(args.total)]
    mine = range(args.first, args.first + args.count)
    cs = [client(ports[i % len(ports)], names[i]) for i in mine]
    try:
        print("connected", flush=True)
        while sys.stdin.readline().strip() == "go":
            t0, t1 = exchange(cs, names, args.first, args.total, args.messages)
            print(json.dumps({"t0": t0, "t1": t1}), flush=True)
    finally:
        for c in cs:
            c.close()


def growth(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each server count's figures with their ratio to the first (three servers) of this run."""
    ref = runs[0]
    out = []
    for r in runs:
        pp, sc = r["ping_pong"], r["scale"]
        mem = sc["server_memory_per_client_bytes"]
        out.append({**r, "across_median_vs_first": round(pp["across_servers_median_us"]
                                                        / ref["ping_pong"]["across_servers_median_us"], 2),
                    "round_trips_per_s_vs_first": round(sc["round_trips_per_s"] / ref["scale"]["round_trips_per_s"], 2),
                    "memory_per_client_mean_bytes": round(statistics.mean(mem)),
                    "memory_per_client_vs_first": round(statistics.mean(mem)
                                                        / statistics.mean(ref["scale"]["server_memory_per_client_bytes"]), 2)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (smoke test)")
    ap.add_argument("--clients", type=int, default=30)
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--procs", type=int, default=2, help="driver processes of the second scale run")
    ap.add_argument("--servers", default="3,5,7", help="server counts of the growth runs (the first is 3)")
    ap.add_argument("--growth-clients", type=int, default=84)
    ap.add_argument("--growth-messages", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2, help="exchanges per scale run (the median rate)")
    ap.add_argument("--growth-repeat", type=int, default=1, help="exchanges per growth run")
    ap.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ports", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--total", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver:
        driver(args)
        return
    if args.quick:
        args.clients, args.messages, args.rounds, args.batch = 6, 5, 2, 10
        args.procs, args.servers, args.growth_clients, args.growth_messages, args.repeat = 2, "3,4", 8, 2, 2
        args.growth_repeat = 2
    counts = [int(s) for s in args.servers.split(",")]
    assert counts[0] == 3 and counts == sorted(counts), "--servers starts with 3 and grows"
    cl = Cluster()
    started = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str, since: float) -> None:
        phases[name] = round(time.monotonic() - since, 1)

    try:
        t = time.monotonic()
        cl.grow(3)
        phase("start_3_servers", t)
        t = time.monotonic()
        result: dict[str, Any] = {"bench": "cluster", "ping_pong": ping_pong(cl, args.rounds, args.batch, "pp_")}
        phase("ping_pong", t)
        t = time.monotonic()
        result["scale"] = scale(cl, args.clients, args.messages, "sc_", args.repeat)
        phase("scale", t)
        t = time.monotonic()
        result["scale_procs"] = scale_procs(cl, args.clients, args.messages, args.procs, "mp_", args.repeat)
        phase("scale_procs", t)
        result["procs_over_one"] = round(result["scale_procs"]["round_trips_per_s"]
                                         / result["scale"]["round_trips_per_s"], 2)
        runs = []
        for k in counts:
            t = time.monotonic()
            cl.grow(k)
            phase(f"grow_to_{k}", t)
            t = time.monotonic()
            runs.append({"servers": k,
                         "ping_pong": ping_pong(cl, max(1, args.rounds // 2), args.batch, f"g{k}p_"),
                         "scale": scale(cl, args.growth_clients, args.growth_messages, f"g{k}s_", args.growth_repeat)})
            phase(f"growth_{k}", t)
        result["growth"] = growth(runs)
        phase("total", started)
        result["phase_seconds"] = phases
    finally:
        cl.stop()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
