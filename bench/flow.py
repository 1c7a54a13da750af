"""The slow-receiver run of `make bench` (issue 12): what a fast sender costs in memory.

A Python client sends ``n`` small messages (``{n, I}``) as fast as its API allows
(``client.send`` then ``await client.drain()``) to a counting process that sleeps
``delay_ms`` per message (``bench_slow`` in ``bench/pyserver.py`` and
``bench/erl/fabric_bench.erl``), so the sender is 10-20x faster than the receiver. With
``acks`` and ``credit`` (the default) the sender is held back; without them the messages
pile up at the receiver. Reported per pairing, at both ends:

- sender: the peak of ``statistics()["pending_sends"]`` (sends waiting for credit) and of
  ``"unacknowledged"`` (frames in the outbox), sampled every few sends, and the growth of
  the runner's RSS over the send loop;
- receiver: the longest mailbox the receiving process saw (it reports it itself), and the
  peak growth of the receiving OS process's RSS (sampled with the sender's figures);
- the send loop's duration and the end-to-end rate (bounded by the receiver's pace).

The same run with an erlang_peer sender (``{slow, ...}`` of ``bench/erl/fabric_bench_drv.erl``,
a blocking ``fabric_peer:send/2`` per message) to the erlang_peer server, with and without
acks and credit, and to the Python server; its figures come from ``fabric_peer:info/1``
(``pending``, ``outbox``, ``credit_out``) and ``/proc`` of both OS processes.

One run per pairing, pairings one after the other (each takes ``n * delay_ms`` at least).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from harness import Env
from measure import rss_bytes
from messaging import BIG_MAILBOX, N_ATOM, PAIRINGS, PyClients, side_pids

from pyfabric import Atom

SLOW_PAIRINGS = ("py_py", "py_py_plain", "py_erlpeer", "py_erlpeer_plain")
# erlang_peer senders: key -> (label, receiving OS process, the erl client's connection tag)
SLOW_ERL: dict[str, tuple[str, str, str]] = {
    "erlpeer_ext": (PAIRINGS["erlpeer_ext"][0], "srv", "ext"),
    "erlpeer_plain": (PAIRINGS["erlpeer_plain"][0], "srv", "plain"),
    "erlpeer_py": ("erlang_peer -> Python", "pysrv", "slowpy"),
}
BENCH_SLOW = Atom("bench_slow")
SAMPLE_EVERY = 32
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_of(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (0 where /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


async def slow_once(client: Any, n: int, delay_ms: int, receiver_pid: int, timeout: float) -> dict[str, Any]:
    box = client.mailbox(max_mailbox=BIG_MAILBOX)
    try:
        client.send("bench_counter", (BENCH_SLOW, box.pid, n, delay_ms))
        _, counter = await box.receive(timeout=10)
        send, drain, stats = client.send, client.drain, client.statistics
        rss0, rrss0 = rss_bytes(), rss_of(receiver_pid)
        peak_pending = peak_unacked = 0
        peak_rss = peak_rrss = 0
        start = time.perf_counter_ns()
        for i in range(n):
            send(counter, (N_ATOM, i))
            await drain(timeout=timeout)
            if i % SAMPLE_EVERY == 0:
                st = stats()
                peak_pending = max(peak_pending, st["pending_sends"])
                peak_unacked = max(peak_unacked, st["unacknowledged"])
                peak_rss = max(peak_rss, rss_bytes() - rss0)
                peak_rrss = max(peak_rrss, rss_of(receiver_pid) - rrss0)
        send_loop = time.perf_counter_ns() - start
        done = await box.receive(timeout=timeout)
        elapsed = time.perf_counter_ns() - start
    finally:
        box.close()
    return {
        "n": n,
        "delay_ms": delay_ms,
        "send_loop_s": send_loop / 1e9,
        "elapsed_s": elapsed / 1e9,
        "msgs_per_s": n / (elapsed / 1e9),
        "sender_peak_pending": peak_pending,
        "sender_peak_unacknowledged": peak_unacked,
        "sender_rss_growth_mb": peak_rss / 1e6,
        "receiver_peak_mailbox": done[3] if isinstance(done, tuple) and len(done) == 4 else None,
        "receiver_rss_growth_mb": peak_rrss / 1e6,
    }


async def run_slow(env: Env, clients: PyClients, n: int, delay_ms: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The slow-receiver run of every pairing in :data:`SLOW_PAIRINGS`: {pairing: {label, summary}}."""
    pids = side_pids(env)
    env.place("stream")
    out: dict[str, Any] = {}
    timeout = max(60.0, n * delay_ms / 1000 * 4)
    for p in SLOW_PAIRINGS:
        label, _, server = PAIRINGS[p]
        try:
            s = await slow_once(clients.clients[p], n, delay_ms, pids[server], timeout)
        except Exception as exc:  # one failing pairing must not lose the others' results
            s = {"errors": [f"{type(exc).__name__}: {exc}"]}
        out[p] = {"label": label, "summary": s}
        log(f"  slow receiver {p:<17} {brief(s)}")
    assert env.cli is not None and env.pysrv is not None
    for p, (label, server, tag) in SLOW_ERL.items():
        try:
            if tag == "slowpy":
                await env.cli.command(f'{{connect, slowpy, {env.pysrv.port}, "{env.secret}", extended}}')
            s = await env.cli.command(f"{{slow, {tag}, {n}, {delay_ms}, {pids[server]}}}", timeout=timeout + 30)
        except Exception as exc:
            s = {"errors": [f"{type(exc).__name__}: {exc}"]}
        if tag == "slowpy":
            with contextlib.suppress(Exception):
                await env.cli.command("{close, slowpy}")
        out[p] = {"label": label, "summary": s}
        log(f"  slow receiver {p:<17} {brief(s)}")
    return out


def brief(s: dict[str, Any]) -> str:
    if "errors" in s:
        return "ERROR " + s["errors"][0]
    return (f"{s['msgs_per_s']:,.0f} msgs/s; sender: pending <= {s['sender_peak_pending']:,}, unacked <= "
            f"{s['sender_peak_unacknowledged']:,}, RSS +{s['sender_rss_growth_mb']:.1f} MB; receiver: mailbox <= "
            f"{s['receiver_peak_mailbox']}, RSS +{s['receiver_rss_growth_mb']:.1f} MB")


def slow_table(res: dict[str, Any], n: int, delay_ms: int) -> str:
    from report import table

    rows = []
    for r in res.values():
        s = r["summary"]
        if "errors" in s:
            rows.append([r["label"], "ERROR", "", "", "", "", ""])
            continue
        rows.append([r["label"], f"{s['msgs_per_s']:,.0f}", f"{s['sender_peak_pending']:,}",
                     f"{s['sender_peak_unacknowledged']:,}", f"{s['sender_rss_growth_mb']:.1f}",
                     f"{s['receiver_peak_mailbox']:,}" if s["receiver_peak_mailbox"] is not None else "-",
                     f"{s['receiver_rss_growth_mb']:.1f}"])
    lines = [table([f"slow receiver: {n:,} small messages, receiver {delay_ms} ms per message", "msgs/s",
                    "sender peak pending", "peak unacked", "sender RSS +MB", "receiver peak mailbox", "receiver RSS +MB"],
                   rows)]
    for p, r in res.items():
        for err in r["summary"].get("errors", []):
            lines.append(f"  slow / {p}: {err}")
    return "\n".join(lines)
