"""Routing between clients (issue 13, docs/protocol.md 16): what a hop through the server costs,
and what many clients' pids cost the server and the client they are shipped to.

Three processes on 127.0.0.1, each with its own event loop: the routing server S (a Python
``serve(routing=True)`` with an ``echo``), the client C1 (this process: it measures), and a
process holding C2 (``c2@localhost``, with an ``echo``) and the senders.

- ping-pong: N round trips C1 -> S's echo (direct) against N round trips C1 -> S -> C2's
  echo (routed), interleaved batch by batch; the ratio routed / direct of the median round
  trip is the figure (a routed round trip is two hops each way, so about 2 is the ideal);
- scale: ``--clients`` clients (default 100) each ship ``--pids`` local pids (default 1,000)
  in one message to C1's ``inbox`` by ``(name, node)``; the resident memory of S and C1
  before and after, per proxy (C1 ends up with clients x pids proxies, S with as many
  proxies and as many exports to C1).

Usage: python bench/route_bench.py [--quick] [--clients N] [--pids N] [--rounds N] [--batch N]
Prints one JSON object. Figures are ratios and per-proxy costs, never timed assertions.
"""

from __future__ import annotations

import argparse
import asyncio
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
sys.path.insert(0, str(ROOT / "bench"))

from measure import loadavg, rss_bytes  # noqa: E402

import pyfabric  # noqa: E402
from pyfabric import Atom  # noqa: E402

SECRET = "route-bench"
C1 = "c1@localhost"
C2 = "c2@localhost"


async def echo(proc: Any) -> None:
    while True:
        sender, msg = await proc.receive()
        proc.send(sender, (proc.pid, msg))


async def serve_role() -> None:
    """S: print the port, then answer ``rss`` lines on stdin with the resident memory."""
    # Everything C1 gets is exported by S (clients x pids + its echo): above the 100,000 default.
    # A sender process busy making 100,000 mailboxes can stall its loop past 3 x route_heartbeat.
    server = await pyfabric.serve(
        "127.0.0.1", 0, SECRET, routing=True, allowed=["echo"], max_exports=1_000_000, route_heartbeat=5.0
    )
    server.spawn(echo, name="echo")
    print(f"port {server.port}", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "rss":
            print(f"rss {rss_bytes()}", flush=True)
    await server.close()


async def senders_role(port: int, clients: int, pids: int) -> None:
    """C2 with an echo, then on ``ship``: ``clients`` clients each send ``pids`` pids to C1."""
    c2 = await pyfabric.aconnect("127.0.0.1", port, SECRET, node_name=C2, allowed=["echo"])
    c2.spawn(echo, name="echo")
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    held: list[Any] = []
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() != "ship":
            continue
        for i in range(clients):
            client = await pyfabric.aconnect("127.0.0.1", port, SECRET, node_name=f"s{i}@localhost")
            boxes = [client.mailbox() for _ in range(pids)]
            client.send(("inbox", C1), [box.pid for box in boxes])
            await client.drain()
            held.append((client, boxes))
        print("shipped", flush=True)
    for client, _ in held:
        await client.close()
    await c2.close()


def spawn(role: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def ask(proc: subprocess.Popen[str], line: str | None, prefix: str) -> str:
    if line is not None:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    assert proc.stdout is not None
    out = proc.stdout.readline()
    assert out.startswith(prefix), out
    return out[len(prefix) :].strip()


async def round_trips(client: pyfabric.Client, box: Any, dest: Any, n: int) -> float:
    """Median seconds of ``n`` round trips to ``dest`` (an echo)."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        client.send(dest, (box.pid, i))
        await box.receive()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    server = spawn("serve")
    senders = None
    try:
        port = int(ask(server, None, "port "))
        senders = spawn("senders", str(port), str(args.clients), str(args.pids))
        ask(senders, None, "ready")
        c1 = await pyfabric.aconnect(
            "127.0.0.1", port, SECRET, node_name=C1, allowed=["inbox"], max_proxies=args.clients * args.pids + 100_000
        )
        box = c1.mailbox()
        direct_echo = await c1.whereis("echo")
        routed_echo = (Atom("echo"), Atom(C2))
        await round_trips(c1, box, direct_echo, args.batch)  # warm up both paths
        await round_trips(c1, box, routed_echo, args.batch)
        direct, routed = [], []
        for _ in range(args.rounds):
            direct.append(await round_trips(c1, box, direct_echo, args.batch))
            routed.append(await round_trips(c1, box, routed_echo, args.batch))
        box.close()
        inbox = c1.mailbox("inbox", max_mailbox=max(100_000, args.clients))
        rss_s0, rss_c0 = int(ask(server, "rss", "rss ")), rss_bytes()
        t0 = time.perf_counter()
        ask(senders, "ship", "shipped")
        proxies = 0
        for _ in range(args.clients):
            proxies += len(await inbox.receive(timeout=120))
        ship_s = time.perf_counter() - t0
        rss_s1, rss_c1 = int(ask(server, "rss", "rss ")), rss_bytes()
        await c1.close()
        return {
            "load_before": args.load_before,
            "load_after": loadavg(),
            "cores": os.cpu_count(),
            "pingpong": {
                "batch": args.batch,
                "rounds": args.rounds,
                "direct_median_us": round(statistics.median(direct) * 1e6, 1),
                "routed_median_us": round(statistics.median(routed) * 1e6, 1),
                "routed_over_direct": round(statistics.median(routed) / statistics.median(direct), 2),
            },
            "scale": {
                "clients": args.clients,
                "pids_each": args.pids,
                "proxies_at_c1": proxies,
                "seconds": round(ship_s, 2),
                "server_bytes_per_pid": round((rss_s1 - rss_s0) / max(proxies, 1)),
                "c1_bytes_per_proxy": round((rss_c1 - rss_c0) / max(proxies, 1)),
                "server_rss_mib": round(rss_s1 / 2**20, 1),
                "c1_rss_mib": round(rss_c1 / 2**20, 1),
            },
        }
    finally:
        for proc in (senders, server):
            if proc is not None:
                assert proc.stdin is not None
                proc.stdin.close()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["serve", "senders"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--pids", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args()
    if args.role == "serve":
        asyncio.run(serve_role())
        return
    if args.role == "senders":
        port, clients, pids = (int(x) for x in args.rest)
        asyncio.run(senders_role(port, clients, pids))
        return
    if args.quick:
        args.clients, args.pids, args.rounds, args.batch = 3, 20, 2, 20
    args.load_before = loadavg()
    print(json.dumps(asyncio.run(measure(args)), indent=2))


if __name__ == "__main__":
    main()
