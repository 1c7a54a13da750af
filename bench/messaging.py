"""Messaging on loopback: each scenario against each pairing (part of `make bench`).

Scenarios:

- ``pingpong``: N round trips of ``{Self, I}`` to an echo process (``{From, M}`` ->
  ``From ! {self(), M}``), one at a time: round trips/s, median and p99 latency;
- ``stream``: N small messages (``{n, I}``) to a counting process, sent as fast as the
  API allows; the counter acknowledges once, after the N-th, so the time is end to end;
- ``stream_10k``: the same with a 10 KiB binary as the message: MB/s (10^6 bytes of
  payload per second).

Pairings (client -> server): ``py_erlpeer`` Python client -> erlang_peer server;
``erlpeer_ext`` / ``erlpeer_legacy`` erlang_peer client (extended; ``mode => legacy``) ->
erlang_peer server, each in its own erl node; ``py_py`` Python client -> Python server
(``bench/pyserver.py``, its own process); ``erl_dist`` plain Erlang distribution between
two local nodes (the reference). Python clients send with ``client.send`` and
``await client.drain()`` after every message; erlang_peer clients with
``fabric_peer:send/2`` (a call: the connection's backpressure) when streaming and
``Proxy ! Msg`` for ping-pong; distribution with ``!``. Erlang-side timings are taken
inside Erlang.

Each scenario first runs every pairing once with a tenth of the count (warm-up), then
``repeat`` rounds in which every pairing runs once, the order rotating from round to
round so that load changes on the machine hit all pairings alike. Results are the median
over rounds.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pyfabric
from pyfabric import Atom

from harness import Env, rss_bytes, summarize

PAIRINGS: dict[str, str] = {
    "py_erlpeer": "Python -> erlang_peer",
    "erlpeer_ext": "erlang_peer <-> erlang_peer (extended)",
    "erlpeer_legacy": "erlang_peer <-> erlang_peer (legacy)",
    "py_py": "Python <-> Python",
    "erl_dist": "Erlang distribution (reference)",
}
SCENARIOS: dict[str, int] = {"pingpong": 0, "stream": 0, "stream_10k": 10 * 1024}
"""Scenario -> payload size in bytes (0: small messages / ping-pong terms)."""

HELLO = Atom("hello")
N_ATOM = Atom("n")
BENCH_START = Atom("bench_start")
RUN_TIMEOUT = 900.0
BIG_MAILBOX = 10_000_000


class PyClients:
    """The Python clients (one per server), kept open for the whole run."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.clients: dict[str, pyfabric.Client] = {}

    async def __aenter__(self) -> PyClients:
        env = self.env
        assert env.pysrv is not None
        for pairing, port in (("py_erlpeer", env.ext_port), ("py_py", env.pysrv.port)):
            self.clients[pairing] = await pyfabric.aconnect("127.0.0.1", port, env.secret, reconnect=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.clients.values():
            await client.close()


async def py_pingpong(client: pyfabric.Client, n: int) -> dict[str, Any]:
    box = client.mailbox(max_mailbox=BIG_MAILBOX)
    try:
        client.send("bench_echo", (box.pid, HELLO))
        echo, _ = await box.receive(timeout=10)
        send, receive, me = client.send, box.receive, box.pid
        clock = time.perf_counter_ns
        lat = [0] * n
        start = clock()
        for i in range(n):
            t0 = clock()
            send(echo, (me, i))
            await receive()
            lat[i] = clock() - t0
        total = (clock() - start) / 1e9
    finally:
        box.close()
    lat.sort()
    return {
        "n": n,
        "elapsed_s": total,
        "rt_per_s": n / total,
        "median_us": _pct(lat, 0.5) / 1000,
        "p99_us": _pct(lat, 0.99) / 1000,
        "api": "client.send(proxy, (box.pid, i)); await box.receive()",
    }


async def py_stream(client: pyfabric.Client, n: int, size: int) -> dict[str, Any]:
    box = client.mailbox(max_mailbox=BIG_MAILBOX)
    try:
        client.send("bench_counter", (BENCH_START, box.pid, n))
        _, counter = await box.receive(timeout=10)
        payload = b"x" * size
        send, drain = client.send, client.drain
        gc.collect()
        rss0 = rss_bytes()
        start = time.perf_counter()
        if size:
            for _ in range(n):
                send(counter, payload)
                await drain()
        else:
            for i in range(n):
                send(counter, (N_ATOM, i))
                await drain()
        sent = time.perf_counter()
        rss1 = rss_bytes()
        await box.receive(timeout=RUN_TIMEOUT)
        elapsed = time.perf_counter() - start
    finally:
        box.close()
    return {
        "n": n,
        "elapsed_s": elapsed,
        "msgs_per_s": n / elapsed,
        "mb_per_s": n * size / elapsed / 1e6,
        "payload_bytes": size,
        # How long the send loop ran, and how much the process grew meanwhile: what the
        # sender buffered instead of being held back.
        "send_loop_s": sent - start,
        "rss_growth_mb": (rss1 - rss0) / 1e6,
        "api": "client.send(proxy, msg); await client.drain()",
    }


def _pct(sorted_values: list[int], p: float) -> float:
    n = len(sorted_values)
    return sorted_values[max(1, min(n, round(p * n))) - 1]


async def run_one(env: Env, clients: PyClients, pairing: str, scenario: str, n: int) -> dict[str, Any]:
    size = SCENARIOS[scenario]
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            if pairing in clients.clients:
                client = clients.clients[pairing]
                if scenario == "pingpong":
                    return await py_pingpong(client, n)
                return await py_stream(client, n, size)
            tag = {"erlpeer_ext": "ext", "erlpeer_legacy": "legacy", "erl_dist": "dist"}[pairing]
            assert env.cli is not None
            if scenario == "pingpong":
                return await env.cli.command(f"{{pingpong, {tag}, {n}}}", timeout=RUN_TIMEOUT)
            return await env.cli.command(f"{{stream, {tag}, {n}, {size}}}", timeout=RUN_TIMEOUT)
    except Exception as exc:  # one failing pairing must not lose the others' results
        return {"error": f"{type(exc).__name__}: {exc}"}


async def run_messaging(env: Env, counts: dict[str, int], repeat: int, log: Any = None) -> dict[str, Any]:
    """Every scenario against every pairing; returns {scenario: {pairing: summary}}."""
    pairings = [p for p in PAIRINGS if p != "erl_dist" or env.dist]
    results: dict[str, Any] = {}
    async with PyClients(env) as clients:
        for scenario in SCENARIOS:
            n = counts[scenario]
            for pairing in pairings:  # warm-up
                await run_one(env, clients, pairing, scenario, max(1, n // 10))
            samples: dict[str, list[dict[str, Any]]] = {p: [] for p in pairings}
            for rnd in range(repeat):
                order = pairings[rnd % len(pairings):] + pairings[: rnd % len(pairings)]
                for pairing in order:
                    sample = await run_one(env, clients, pairing, scenario, n)
                    samples[pairing].append(sample)
                    if log is not None:
                        log(f"  {scenario:<10} {pairing:<15} round {rnd + 1}/{repeat}: {_brief(sample)}")
            results[scenario] = {
                p: {"label": PAIRINGS[p], "summary": summarize(s), "samples": s} for p, s in samples.items()
            }
            if not env.dist:
                results[scenario]["erl_dist"] = {
                    "label": PAIRINGS["erl_dist"],
                    "summary": {"repetitions": 0, "errors": [f"no Erlang distribution: {env.dist_error}"]},
                    "samples": [],
                }
    return results


def _brief(sample: dict[str, Any]) -> str:
    if "error" in sample:
        return "ERROR " + sample["error"]
    if "rt_per_s" in sample:
        return f"{sample['rt_per_s']:,.0f} rt/s, median {sample['median_us']:.0f} us, p99 {sample['p99_us']:.0f} us"
    if sample.get("payload_bytes"):
        return f"{sample['mb_per_s']:,.1f} MB/s ({sample['msgs_per_s']:,.0f} msgs/s)"
    return f"{sample['msgs_per_s']:,.0f} msgs/s"
