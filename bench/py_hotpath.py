"""Python <-> Python hot path in one run, no Erlang needed (issue 15, issue 12).

A quick companion of ``bench/run.py --only messaging`` for the Python pairings alone:
this process is the client, ``bench/pyserver.py`` the server (its own process). In
interleaved batches, the order rotating from round to round:

- ping-pong (both processes on one CPU, as ``--pin auto`` does): the bare asyncio echo
  (the ceiling), pyfabric with acks and credit on (the default) and off; then the same
  unpinned (the kernel places both processes: a round trip then includes cross-CPU
  wake-ups, which make the echo's ceiling lower and the ratio kinder; both are printed,
  labelled);
- small-message streaming (one CPU each): acks and credit on and off.

Prints medians of the per-batch rates, CPU per operation of each side (from
``/proc/<pid>/task/*/schedstat``), the ratio of Python <-> Python ping-pong to the asyncio
ceiling and the acks+credit on / off ratios, all from this run.
Run it under the lock: ``flock /tmp/pyfabric-heavy.lock .venv/bin/python bench/py_hotpath.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import secrets
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import PyServer, kill_leftovers  # noqa: E402
from measure import cpu_delta, cpu_snapshot, median, new_event_loop, pin_process, placement  # noqa: E402
from messaging import NO_FLOW_FEATURES, RawEchoClient, py_pingpong, py_stream  # noqa: E402

import pyfabric  # noqa: E402

PINGPONG = ("asyncio", "py_py", "py_py_plain")
STREAM = ("py_py", "py_py_plain")


async def run(n_pp: int, n_stream: int, rounds: int) -> dict[str, Any]:
    srv = PyServer(secrets.token_hex(8))
    await srv.start()
    try:
        clients = {
            "py_py": await pyfabric.aconnect("127.0.0.1", srv.port, srv.secret, reconnect=False),
            "py_py_plain": await pyfabric.aconnect(
                "127.0.0.1", srv.port, srv.secret, reconnect=False, features=NO_FLOW_FEATURES
            ),
        }
        echo = await RawEchoClient.connect(srv.echo_port)
        pids = (os.getpid(), srv.pid)

        async def batch(scenario: str, variant: str, n: int) -> dict[str, Any]:
            before = cpu_snapshot(pids[::-1])
            if scenario.startswith("pingpong"):
                r = await (echo.pingpong(n) if variant == "asyncio" else py_pingpong(clients[variant], n))
            else:
                r = await py_stream(clients[variant], n, 0)
            after = cpu_snapshot(pids)
            r.pop("lat_ns", None)
            r["cpu_client_us"] = (cpu_delta(before, after, pids[0]) or 0) / n / 1000
            r["cpu_server_us"] = (cpu_delta(before, after, pids[1]) or 0) / n / 1000
            return r

        out: dict[str, Any] = {}
        for scenario, variants, n, pin in (
            ("pingpong", PINGPONG, n_pp, "same"),
            ("pingpong_unpinned", PINGPONG, n_pp, "none"),
            ("stream", STREAM, n_stream, "split"),
        ):
            cpus = placement(pin)
            pin_process(pids[0], cpus["client"])
            pin_process(pids[1], cpus["server"])
            for v in variants:
                await batch(scenario, v, max(1, n // 5))  # warm-up
            gc.collect()
            results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            for rnd in range(rounds):
                k = rnd % len(variants)
                for v in variants[k:] + variants[:k]:
                    results[v].append(await batch(scenario, v, n))
            out[scenario] = {
                v: {
                    "per_s": median(r["n"] / (r["elapsed_ns"] / 1e9) for r in rs),
                    "cpu_client_us": median(r["cpu_client_us"] for r in rs),
                    "cpu_server_us": median(r["cpu_server_us"] for r in rs),
                }
                for v, rs in results.items()
            }
        for c in clients.values():
            await c.close()
        echo.close()
        return out
    finally:
        await srv.stop()


def report(out: dict[str, Any], rounds: int, n_pp: int, n_stream: int) -> None:
    print(f"ETF codec backend: {pyfabric.etf.implementation} (both processes; PYFABRIC_ETF selects it)")
    print(f"{rounds} rounds; ping-pong batches of {n_pp:,} (one CPU), streams of {n_stream:,} small messages (two CPUs)")
    for scenario, unit in (("pingpong", "rt/s"), ("pingpong_unpinned", "rt/s"), ("stream", "msgs/s")):
        for v, s in out[scenario].items():
            print(f"  {scenario:<17} {v:<12} {s['per_s']:>10,.0f} {unit:<6} CPU {s['cpu_client_us']:5.1f} + {s['cpu_server_us']:5.1f} us/op")
    pp, st = out["pingpong"], out["stream"]
    print(f"  Python<->Python ping-pong / asyncio echo, both on one CPU (make bench's --pin auto): {pp['py_py']['per_s'] / pp['asyncio']['per_s']:.3f}")
    print(f"  Python<->Python (plain) ping-pong / asyncio echo, one CPU:                           {pp['py_py_plain']['per_s'] / pp['asyncio']['per_s']:.3f}")
    un = out["pingpong_unpinned"]
    print(f"  Python<->Python ping-pong / asyncio echo, unpinned (the kernel's placement):         {un['py_py']['per_s'] / un['asyncio']['per_s']:.3f}")
    print(f"  ping-pong acks+credit on / off:                  {pp['py_py']['per_s'] / pp['py_py_plain']['per_s']:.3f}")
    print(f"  small stream acks+credit on / off:               {st['py_py']['per_s'] / st['py_py_plain']['per_s']:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pingpong", type=int, default=500, help="round trips per batch")
    parser.add_argument("--stream", type=int, default=5000, help="messages per stream batch")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    loop = new_event_loop()
    try:
        out = loop.run_until_complete(run(args.pingpong, args.stream, args.rounds))
    finally:
        kill_leftovers()
        loop.close()
    report(out, args.rounds, args.pingpong, args.stream)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
