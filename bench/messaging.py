"""Messaging on loopback, every pairing interleaved in small batches (part of `make bench`).

Scenarios:

- ``pingpong``: round trips of ``{Self, I}`` to an echo process (``{From, M}`` ->
  ``From ! {self(), M}``), one at a time; the raw ceilings echo a 32-byte frame;
- ``stream``: small messages (``{n, I}``) to a counting process, sent as fast as the API
  allows; the counter acknowledges once, after the last, so the time is end to end;
- ``stream_10k``: the same with a 10 KiB binary: MB/s (10^6 bytes of payload per second);
- ``burst`` (one run per pairing, last of the run): 200k ``Proxy ! {n, I}`` with nothing
  holding the sender back, as issue 12 measures it; capped in time (a collapsed burst
  reports what was delivered within the cap).

Pairings (client -> server, each side its own OS process): see :data:`PAIRINGS`. Python
clients send with ``client.send`` (and ``await client.drain()`` after every streamed
message); erlang_peer clients, distribution and the original with ``!`` (``Proxy ! Msg``
for erlang_peer, held back by its end-to-end credit, docs/protocol.md 12; a batch in which
the connection dropped a message on ``max_pending_messages`` overflow fails). The
``erlpeer_send`` row streams with a blocking ``fabric_peer:send/2`` per message instead (the
caller waits for each write): shown, without a goal.

Placement: each scenario first pins the runner, both erl nodes and the Python server
(``Env.place``; ``--pin auto`` runs round trips with both sides on one CPU and streams with
one CPU per side, see ``measure.PIN_MODES`` for why).

Schedule: one warm-up batch per pairing, then ``rounds`` rounds in which every pairing
runs one batch, the order rotating from round to round, so load changes on the machine
hit all pairings alike. Around each batch the runner reads the on-CPU time of the client
and the server process (``measure.cpu_ns``). Summaries: throughput is the median of the
per-batch rates; latency percentiles are over every round trip of every batch; CPU per
operation is the median of the per-batch figures (the mean is in the JSON too). A batch's
CPU includes its untimed setup (one round trip to find the echo or counter process, and
the Erlang driver's JSON reply): well under 1% of a batch.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from harness import Env
from measure import cpu_delta, cpu_snapshot, median, percentile, rss_bytes

import pyfabric
from pyfabric import Atom
from pyfabric.protocol import FEATURES

PAIRINGS: dict[str, tuple[str, str, str]] = {
    # key: (label, client process, server process)
    "orig": ("original <-> original", "cli", "srv"),
    "erlpeer_ext": ("erlang_peer <-> erlang_peer (extended)", "cli", "srv"),
    "erlpeer_legacy": ("erlang_peer <-> erlang_peer (legacy)", "cli", "srv"),
    # streams only: the extended connection, each message a blocking fabric_peer:send/2
    "erlpeer_send": ("erlang_peer <-> erlang_peer (extended, blocking send/2)", "cli", "srv"),
    "py_erlpeer": ("Python -> erlang_peer", "py", "srv"),
    "py_py": ("Python <-> Python", "py", "pysrv"),
    # the same connections without the acks and credit features (issue 12: what they cost)
    "erlpeer_plain": ("erlang_peer <-> erlang_peer (acks, credit off)", "cli", "srv"),
    "py_erlpeer_plain": ("Python -> erlang_peer (acks, credit off)", "py", "srv"),
    "py_py_plain": ("Python <-> Python (acks, credit off)", "py", "pysrv"),
    "erl_dist": ("Erlang distribution (reference)", "cli", "srv"),
    "gen_tcp": ("gen_tcp {packet,4} nodelay echo (ceiling)", "cli", "srv"),
    "asyncio": ("bare asyncio echo (ceiling)", "py", "pysrv"),
}
NO_FLOW = {"erlpeer_ext": "erlpeer_plain", "py_erlpeer": "py_erlpeer_plain", "py_py": "py_py_plain"}
"""A pairing with acks and credit (the default) -> the same one with both features off."""
NO_FLOW_FEATURES = FEATURES - {"acks", "credit"}
STREAM_ONLY = {"erlpeer_send"}
SCENARIO_PAIRINGS: dict[str, tuple[str, ...]] = {
    "pingpong": tuple(p for p in PAIRINGS if p not in STREAM_ONLY),
    "stream": ("orig", "erlpeer_ext", "erlpeer_legacy", "erlpeer_send", "py_erlpeer", "py_py", "erl_dist",
               *NO_FLOW.values()),
    "stream_10k": ("orig", "erlpeer_ext", "erlpeer_legacy", "erlpeer_send", "py_erlpeer", "py_py", "erl_dist",
                   *NO_FLOW.values()),
}
BURST_PAIRINGS = ("erl_dist", "erlpeer_ext", "orig")
PAYLOAD = {"pingpong": 0, "stream": 0, "stream_10k": 10 * 1024}
ERL_TAG = {"orig": "orig", "erlpeer_ext": "ext", "erlpeer_legacy": "legacy", "erlpeer_send": "ext",
           "erlpeer_plain": "plain", "erl_dist": "dist", "gen_tcp": "raw"}
STREAM_COMMAND = {"erlpeer_send": "stream_send"}
"""The driver's command streaming for a pairing (``stream``: ``!``)."""
RAW_FRAME = struct.pack(">I", 32) + bytes(32)  # the same 32-byte frame as the gen_tcp ceiling

HELLO = Atom("hello")
N_ATOM = Atom("n")
BENCH_START = Atom("bench_start")
BATCH_TIMEOUT = 300.0
BIG_MAILBOX = 10_000_000
MAX_ERRORS = 3  # a pairing failing this often is dropped from the rest of the run


class PyClients:
    """The Python clients (pyfabric to each server, and the bare echo), open for the run."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.clients: dict[str, pyfabric.Client] = {}
        self.echo: RawEchoClient | None = None

    async def __aenter__(self) -> PyClients:
        env = self.env
        assert env.pysrv is not None
        for pairing, port in (("py_erlpeer", env.ext_port), ("py_py", env.pysrv.port)):
            self.clients[pairing] = await pyfabric.aconnect("127.0.0.1", port, env.secret, reconnect=False)
            self.clients[NO_FLOW[pairing]] = await pyfabric.aconnect(
                "127.0.0.1", port, env.secret, reconnect=False, features=NO_FLOW_FEATURES
            )
        self.echo = await RawEchoClient.connect(env.pysrv.echo_port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.clients.values():
            await client.close()
        if self.echo is not None:
            self.echo.close()


class RawEchoClient(asyncio.Protocol):
    """The Python ceiling's client: one frame out, wait until all of it came back."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.got = 0

    @classmethod
    async def connect(cls, port: int) -> RawEchoClient:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(cls, "127.0.0.1", port)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= len(RAW_FRAME) and self.waiter is not None and not self.waiter.done():
            self.got -= len(RAW_FRAME)
            self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"echo server closed the connection: {exc}"))

    async def pingpong(self, n: int) -> dict[str, Any]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        write, clock = self.transport.write, time.perf_counter_ns
        lat = [0] * n
        start = clock()
        for i in range(n):
            t0 = clock()
            self.waiter = loop.create_future()
            write(RAW_FRAME)
            await self.waiter
            lat[i] = clock() - t0
        return {"n": n, "elapsed_ns": clock() - start, "lat_ns": lat}

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


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
        elapsed = clock() - start
    finally:
        box.close()
    return {"n": n, "elapsed_ns": elapsed, "lat_ns": lat}


async def py_stream(client: pyfabric.Client, n: int, size: int) -> dict[str, Any]:
    box = client.mailbox(max_mailbox=BIG_MAILBOX)
    try:
        client.send("bench_counter", (BENCH_START, box.pid, n))
        _, counter = await box.receive(timeout=10)
        payload = b"x" * size
        send, drain = client.send, client.drain
        rss0 = rss_bytes()
        start = time.perf_counter_ns()
        if size:
            for _ in range(n):
                send(counter, payload)
                await drain()
        else:
            for i in range(n):
                send(counter, (N_ATOM, i))
                await drain()
        rss1 = rss_bytes()
        await box.receive(timeout=BATCH_TIMEOUT)
        elapsed = time.perf_counter_ns() - start
    finally:
        box.close()
    # what the sender buffered instead of being held back shows as RSS growth (no
    # gc.collect() here: it would be counted in the batch's CPU time)
    return {"n": n, "elapsed_ns": elapsed, "payload_bytes": size, "rss_growth_mb": (rss1 - rss0) / 1e6}


def side_pids(env: Env) -> dict[str, int]:
    assert env.cli is not None and env.srv is not None and env.pysrv is not None
    return {"py": os.getpid(), "cli": env.cli.pid, "srv": env.srv.pid, "pysrv": env.pysrv.pid}


async def run_batch(env: Env, clients: PyClients, pairing: str, scenario: str, n: int) -> dict[str, Any]:
    """One batch, with the CPU time both sides spent on it; errors come back as data."""
    pids = side_pids(env)
    _, client_side, server_side = PAIRINGS[pairing]
    watched = (pids[client_side], pids[server_side])
    # the runner's own reading of the other side's threads stays outside its window:
    # the client is read last before the batch and first after it
    before = cpu_snapshot(watched[::-1])
    try:
        async with asyncio.timeout(BATCH_TIMEOUT):
            sample = await _batch(env, clients, pairing, scenario, n)
    except Exception as exc:  # one failing pairing must not lose the others' results
        return {"error": f"{type(exc).__name__}: {exc}"}
    after = cpu_snapshot(watched)
    sample["cpu_client_ns"] = cpu_delta(before, after, watched[0])
    sample["cpu_server_ns"] = cpu_delta(before, after, watched[1])
    return sample


async def _batch(env: Env, clients: PyClients, pairing: str, scenario: str, n: int) -> dict[str, Any]:
    size = PAYLOAD[scenario]
    if pairing == "asyncio":
        assert clients.echo is not None
        return await clients.echo.pingpong(n)
    if pairing in clients.clients:
        client = clients.clients[pairing]
        return await (py_pingpong(client, n) if scenario == "pingpong" else py_stream(client, n, size))
    assert env.cli is not None
    tag = ERL_TAG[pairing]
    if scenario == "pingpong":
        return await env.cli.command(f"{{pingpong, {tag}, {n}}}", timeout=BATCH_TIMEOUT)
    command = STREAM_COMMAND.get(pairing, "stream")
    return await env.cli.command(f"{{{command}, {tag}, {n}, {size}}}", timeout=BATCH_TIMEOUT)


def available(env: Env, pairing: str) -> str | None:
    """Why a pairing cannot run in this environment (None: it can)."""
    if pairing == "erl_dist" and not env.dist:
        return f"no Erlang distribution: {env.dist_error}"
    if pairing == "orig" and not env.orig:
        return env.orig_error or "the original implementation was not run (ORIG_EBIN unset)"
    return None


def summarize_batches(scenario: str, batches: list[dict[str, Any]]) -> dict[str, Any]:
    good = [b for b in batches if "error" not in b]
    out: dict[str, Any] = {"batches": len(good)}
    errors = [b["error"] for b in batches if "error" in b]
    if errors:
        out["errors"] = errors
    if not good:
        return out
    ops = sum(b["n"] for b in good)
    out["n"] = ops
    rates = [b["n"] / (b["elapsed_ns"] / 1e9) for b in good]
    if scenario == "pingpong":
        lat = sorted(x for b in good for x in b["lat_ns"])
        out["rt_per_s"] = median(rates)
        out["median_us"] = percentile(lat, 0.5) / 1000
        out["p99_us"] = percentile(lat, 0.99) / 1000
        out["max_us"] = lat[-1] / 1000
    else:
        out["msgs_per_s"] = median(rates)
        size = good[0].get("payload_bytes", 0)
        out["mb_per_s"] = out["msgs_per_s"] * size / 1e6
        if "rss_growth_mb" in good[0]:
            out["rss_growth_mb"] = max(b["rss_growth_mb"] for b in good)
    # CPU per operation: the median over batches, like throughput (the machine's speed
    # drifts, and a mean would follow its slowest minutes); the mean is kept as well
    per_op: dict[str, list[float]] = {}
    for side in ("client", "server"):
        cpu = [b.get(f"cpu_{side}_ns") for b in good]
        if all(c is not None for c in cpu):
            per_op[side] = [c / b["n"] / 1000 for c, b in zip(cpu, good)]  # type: ignore[operator]
            out[f"cpu_{side}_us"] = median(per_op[side])
            out[f"cpu_{side}_us_mean"] = sum(cpu) / ops / 1000  # type: ignore[arg-type]
    if len(per_op) == 2:
        out["cpu_total_us"] = median(c + s for c, s in zip(per_op["client"], per_op["server"]))
    return out


def _strip(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch as kept in the JSON: its figures, not its thousands of latencies."""
    out = {k: v for k, v in batch.items() if k != "lat_ns"}
    if batch.get("lat_ns"):
        lat = sorted(batch["lat_ns"])
        out["median_us"] = percentile(lat, 0.5) / 1000
        out["p99_us"] = percentile(lat, 0.99) / 1000
    return out


async def run_messaging(env: Env, counts: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Every scenario, its pairings interleaved batch by batch: {scenario: {pairing: ...}}."""
    results: dict[str, Any] = {}
    async with PyClients(env) as clients:
        for scenario, pairings in SCENARIO_PAIRINGS.items():
            n, rounds = counts[f"{scenario}_batch"], counts[f"{scenario}_rounds"]
            env.place(scenario)
            results[scenario] = {}
            live = []
            for p in pairings:
                why = available(env, p)
                if why is None:
                    live.append(p)
                else:
                    results[scenario][p] = {"label": PAIRINGS[p][0], "summary": {"skipped": why}}
            batches: dict[str, list[dict[str, Any]]] = {p: [] for p in live}
            for p in live:  # warm-up
                await run_batch(env, clients, p, scenario, max(1, n // 5))
            gc.collect()  # once, outside every batch's CPU window
            for rnd in range(rounds):
                k = rnd % max(1, len(live))
                for p in live[k:] + live[:k]:
                    if sum("error" in b for b in batches[p]) >= MAX_ERRORS:
                        continue
                    batches[p].append(await run_batch(env, clients, p, scenario, n))
                if (rnd + 1) % max(1, rounds // 4) == 0 or rnd + 1 == rounds:
                    log(f"  {scenario}: round {rnd + 1}/{rounds}")
            for p in live:
                summary = summarize_batches(scenario, batches[p])
                results[scenario][p] = {
                    "label": PAIRINGS[p][0],
                    "client": PAIRINGS[p][1],
                    "server": PAIRINGS[p][2],
                    "summary": summary,
                    "batches": [_strip(b) for b in batches[p]],
                }
                log(f"    {p:<15} {brief(summary)}")
    return results


async def run_burst(env: Env, n: int, cap_s: float, log: Callable[[str], None]) -> dict[str, Any]:
    """The ``Proxy ! Msg`` burst, once per pairing; last in the run (a collapsed burst
    leaves the connection busy with the rest of its messages)."""
    assert env.cli is not None and env.srv is not None
    out: dict[str, Any] = {}
    pids = side_pids(env)
    env.place("burst")
    for p in BURST_PAIRINGS:
        why = available(env, p)
        if why is not None:
            out[p] = {"label": PAIRINGS[p][0], "summary": {"skipped": why}}
            continue
        before = cpu_snapshot((pids["cli"], pids["srv"]))
        try:
            r = await env.cli.command(f"{{burst, {ERL_TAG[p]}, {n}, {int(cap_s * 1000)}}}", timeout=cap_s + 120)
            after = cpu_snapshot((pids["cli"], pids["srv"]))
            if r.get("timed_out"):
                r["delivered"] = await env.srv.command("counted", timeout=30)
                # the rest of the burst would keep both nodes busy during the next pairing's
                await env.cli.command(f"{{drop, {ERL_TAG[p]}}}", timeout=30)
                await asyncio.sleep(1.0)
            else:
                r["delivered"] = n
        except Exception as exc:
            out[p] = {"label": PAIRINGS[p][0], "summary": {"errors": [f"{type(exc).__name__}: {exc}"]}}
            log(f"  burst {p}: ERROR {exc}")
            continue
        s: dict[str, Any] = {"n": n, "delivered": r["delivered"], "timed_out": bool(r.get("timed_out")),
                             "msgs_per_s": r["delivered"] / (r["elapsed_ns"] / 1e9),
                             "send_loop_s": r["send_loop_ns"] / 1e9, "cap_s": cap_s}
        for side, pid in (("client", pids["cli"]), ("server", pids["srv"])):
            d = cpu_delta(before, after, pid)
            if d is not None and r["delivered"]:
                s[f"cpu_{side}_us"] = d / r["delivered"] / 1000
        out[p] = {"label": PAIRINGS[p][0], "summary": s}
        log(f"  burst {p:<12} {brief(s)}")
    return out


def brief(s: dict[str, Any]) -> str:
    if "skipped" in s:
        return "skipped: " + s["skipped"]
    if s.get("errors") and len(s) <= 2:
        return "ERROR " + s["errors"][0]
    cpu = f", cpu {s.get('cpu_client_us', 0):.1f}+{s.get('cpu_server_us', 0):.1f} us/op" if "cpu_client_us" in s else ""
    if "rt_per_s" in s:
        return f"{s['rt_per_s']:,.0f} rt/s, median {s['median_us']:.0f} us, p99 {s['p99_us']:.0f} us{cpu}"
    if s.get("mb_per_s"):
        return f"{s['mb_per_s']:,.1f} MB/s ({s['msgs_per_s']:,.0f} msgs/s){cpu}"
    timed = f" (cap {s['cap_s']:.0f} s hit: {s['delivered']:,} delivered)" if s.get("timed_out") else ""
    return f"{s.get('msgs_per_s', 0):,.0f} msgs/s{timed}{cpu}"
