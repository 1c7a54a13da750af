"""A/B of the credit path, Python <-> Python over TCP, in one run (issue 15, issue 12).

Streams small (or ``--size``-byte) messages from this process to ``bench/pyserver.py``
(its own process) over three connections, in interleaved batches, the order rotating:

- ``credit``: acks and credit on (the default), as the code is;
- ``credit_reencode``: the same, with the frames of waiting messages not kept
  (``Commands.hold`` disabled for the batch): every waiting message is encoded again when
  it is issued, as before the frames were kept;
- ``plain``: acks and credit off.

Prints the median msgs/s and CPU per message of each side, and the ratios to ``plain``.
Run it under the lock: ``flock /tmp/pyfabric-heavy.lock .venv/bin/python bench/credit_ab.py``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import PyServer, kill_leftovers  # noqa: E402
from measure import cpu_delta, cpu_snapshot, median, new_event_loop, pin_process, placement  # noqa: E402
from messaging import NO_FLOW_FEATURES, py_stream  # noqa: E402

import pyfabric  # noqa: E402
from pyfabric.protocol._commands import Commands  # noqa: E402

VARIANTS = ("credit", "credit_reencode", "plain")


async def run(n: int, rounds: int, size: int, pin: str) -> None:
    import os
    import secrets

    secret = secrets.token_hex(8)
    srv = PyServer(secret)
    await srv.start()
    cpus = placement(pin)
    pin_process(os.getpid(), cpus["client"])
    pin_process(srv.pid, cpus["server"])
    try:
        clients = {
            "credit": await pyfabric.aconnect("127.0.0.1", srv.port, secret, reconnect=False),
            "credit_reencode": await pyfabric.aconnect("127.0.0.1", srv.port, secret, reconnect=False),
            "plain": await pyfabric.aconnect("127.0.0.1", srv.port, secret, reconnect=False, features=NO_FLOW_FEATURES),
        }
        hold = Commands.hold
        results: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}

        async def batch(v: str, count: int) -> dict[str, Any]:
            if v == "credit_reencode":
                Commands.hold = lambda self, command: None  # type: ignore[method-assign]
            try:
                pids = (os.getpid(), srv.pid)
                before = cpu_snapshot(pids[::-1])
                r = await py_stream(clients[v], count, size)
                after = cpu_snapshot(pids)
            finally:
                Commands.hold = hold  # type: ignore[method-assign]
            r["cpu_client_us"] = (cpu_delta(before, after, pids[0]) or 0) / count / 1000
            r["cpu_server_us"] = (cpu_delta(before, after, pids[1]) or 0) / count / 1000
            return r

        for v in VARIANTS:
            await batch(v, max(1, n // 5))
        for rnd in range(rounds):
            k = rnd % len(VARIANTS)
            for v in VARIANTS[k:] + VARIANTS[:k]:
                results[v].append(await batch(v, n))
        rate = {v: median(r["n"] / (r["elapsed_ns"] / 1e9) for r in rs) for v, rs in results.items()}
        print(f"{rounds} rounds of {n:,} messages of {size or 'small'} bytes, pin {pin}")
        for v, rs in results.items():
            c = median(r["cpu_client_us"] for r in rs)
            s = median(r["cpu_server_us"] for r in rs)
            print(f"  {v:<16} {rate[v]:>10,.0f} msgs/s  CPU {c:5.1f} + {s:5.1f} us/msg  "
                  f"/ plain {rate[v] / rate['plain']:.2f}")
        for c in clients.values():
            await c.close()
    finally:
        await srv.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--pin", choices=("split", "same", "none"), default="split")
    args = parser.parse_args()
    loop = new_event_loop()
    try:
        loop.run_until_complete(run(args.n, args.rounds, args.size, args.pin))
    finally:
        kill_leftovers()
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
