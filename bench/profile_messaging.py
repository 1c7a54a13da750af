"""Profile the Python side of Python -> erlang_peer (or Python <-> Python) messaging.

Runs one scenario of ``bench/messaging.py`` under cProfile in this process and prints the
functions with the most own time (and, with ``--callers``, who calls them). The Erlang
nodes and the Python server are started as for ``bench/run.py``.

Usage: python bench/profile_messaging.py [pingpong|stream|stream_10k] [-n N] [--pairing py_erlpeer|py_py] [--top 30]
"""

from __future__ import annotations

import argparse
import cProfile
import pathlib
import pstats
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import harness  # noqa: E402
from measure import new_event_loop  # noqa: E402
from messaging import NO_FLOW, PyClients, py_pingpong, py_stream  # noqa: E402
from messaging import PAYLOAD as SCENARIOS  # noqa: E402


async def profiled(scenario: str, pairing: str, n: int, top: int, callers: bool) -> None:
    async with harness.Env() as env, PyClients(env) as clients:
        client = clients.clients[pairing]
        size = SCENARIOS[scenario]

        async def once(count: int) -> dict:
            if scenario == "pingpong":
                return await py_pingpong(client, count)
            return await py_stream(client, count, size)

        await once(max(1, n // 10))  # warm-up
        prof = cProfile.Profile()
        prof.enable()
        result = await once(n)
        prof.disable()
        print({k: v for k, v in result.items() if k != "lat_ns"})
        stats = pstats.Stats(prof).sort_stats("tottime")
        stats.print_stats(top)
        if callers:
            stats.print_callers(top // 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=list(SCENARIOS), nargs="?", default="pingpong")
    parser.add_argument("-n", type=int, default=None)
    parser.add_argument("--pairing", choices=["py_erlpeer", "py_py", NO_FLOW["py_erlpeer"], NO_FLOW["py_py"]], default="py_erlpeer")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--callers", action="store_true")
    args = parser.parse_args()
    n = args.n or {"pingpong": 20_000, "stream": 100_000, "stream_10k": 20_000}[args.scenario]
    loop = new_event_loop()
    try:
        loop.run_until_complete(profiled(args.scenario, args.pairing, n, args.top, args.callers))
    finally:
        harness.kill_leftovers()
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
