"""Issue 11's attacks against a live Python server (its own process), with a bystander.

Each test starts ``hostile_pyserver.py serve`` with the default options, runs one attack
from raw sockets while a well-behaved client keeps pinging, and asserts that the server
survives, the bystander keeps being served, and the server's peak RSS stays within the
documented bound. The worst bystander round trip is recorded in the test's output (in-run
evidence, not a timing assertion). ``make fuzz`` runs the ``fuzz`` tests for longer
(``FUZZ_SECONDS``); the short versions are part of ``make test``.
"""

from __future__ import annotations

import os
import pathlib
import random
import struct
import tempfile
import time
import zlib

import pytest
from hostile_pyserver import (
    Bystander,
    ServerProcess,
    authenticated,
    framed,
    measure_flood,
    measure_frame,
    measure_idle,
    measure_never_read,
    nil_list_message,
    until_answered,
)

RSS_BOUND = 256 * 2**20
"""Peak RSS a server may reach through any attack within the default limits (issue 11)."""
SCALE = max(1, int(os.environ.get("FUZZ_SECONDS", "20")) // 20)


def report(name: str, result: dict) -> None:
    print(f"{name}: {result}")  # shown with -s or on failure: the in-run evidence


def check_survived(server: ServerProcess, result: dict, services: tuple[str, ...] = ("ping", "slow")) -> None:
    assert server.alive
    peak = server.memory()[1]
    stats = server.stop()
    report("server", {"peak_rss_mib": round(peak / 2**20, 1), **stats})
    assert peak < RSS_BOUND, f"server peak RSS {peak / 2**20:.0f} MiB"
    assert all(stats["alive"][s] for s in services), stats


@pytest.mark.parametrize(
    "frame",
    [
        nil_list_message(16_000_000, compressed=True),
        nil_list_message(400_000, compressed=True),
        nil_list_message(1_000_000, compressed=False),
        framed(b"\x83h\x03w\x01mw\x04ping" + b"l\x00\x00\x00\x01" * 100_000 + b"j" + b"j" * 100_000),
    ],
    ids=["compressed-16M-nils", "compressed-400k-nils", "plain-1M-nils", "plain-deep"],
)
def test_amplifying_frames_are_refused_cheaply(frame: bytes) -> None:
    server = ServerProcess()
    try:
        result = measure_frame(server, frame, timeout=60)
        report("attack", result)
        assert result["answer"] == "error"  # dropped with an error frame, connection kept
        assert result["failures"] == [] and result["pings"] > 0
        check_survived(server, result)
    finally:
        if server.alive:
            server.stop()


@pytest.mark.parametrize(
    "body",
    [
        b"l" + struct.pack(">I", 500_000) + b"a\x07" * 500_000 + b"j",  # 500k small ints, 1 MB
        b"l" + struct.pack(">I", 60_000) + b"j" * 60_000 + b"j",  # 60k containers
        b"m" + struct.pack(">I", 16 * 2**20) + bytes(16 * 2**20),  # a 16 MiB binary
    ],
    ids=["500k-ints", "60k-lists", "16MiB-binary"],
)
def test_large_frames_within_the_limits_are_accepted(body: bytes) -> None:
    server = ServerProcess()
    try:
        result = measure_frame(server, framed(b"\x83h\x03w\x01mw\x04ping" + body), timeout=60)
        report("large", result)
        assert result["answer"] == "heartbeat_ack"  # decoded and delivered, no error
        assert result["failures"] == [] and result["pings"] > 0
        check_survived(server, result)
    finally:
        if server.alive:
            server.stop()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_300_idle_connections_do_not_lock_clients_out(tls: bool) -> None:
    tls_dir = None
    if tls:
        from pyfabric.certs import write_dev_certs

        tls_dir = tempfile.mkdtemp(prefix="hostile-certs-")
        write_dev_certs(pathlib.Path(tls_dir), clients=["alice"])
    server = ServerProcess(tls=tls_dir)
    try:
        result = measure_idle(server, count=300, seconds=3.0 * SCALE, tls=tls_dir)
        report("idle", result)
        attempts = result["legit_ok"] + result["legit_failed"]
        # Before eviction: 3 of 40 connects succeeded. A rare loss is possible when one
        # address churns connections faster than a handshake completes (same address here).
        assert attempts > 0 and result["legit_ok"] >= 0.9 * attempts, result
        check_survived(server, result)
    finally:
        if server.alive:
            server.stop()


def test_a_peer_that_never_reads_is_pushed_back() -> None:
    server = ServerProcess()
    try:
        result = measure_never_read(server, seconds=5.0 * SCALE)
        report("never-read", result)
        assert result["failures"] == [] and result["pings"] > 0
        check_survived(server, result)
    finally:
        if server.alive:
            server.stop()


def test_a_flood_does_not_kill_a_shared_service() -> None:
    # A small mailbox: without push-back the service would exit with mailbox_overflow in
    # a fraction of a second (the default, 100 000, takes about 2 s).
    server = ServerProcess(slow_mailbox=20_000)
    try:
        result = measure_flood(server, seconds=5.0 * SCALE)
        report("flood", result)
        assert result["failures"] == [] and result["pings"] > 0
        check_survived(server, result)
    finally:
        if server.alive:
            server.stop()


def _random_amplifier(rng: random.Random) -> bytes:
    """A frame built to be expensive: many tiny terms, deep nesting, big counts, often
    compressed, sometimes with lying counts."""
    n = rng.choice([1000, 70_000, 600_000, 2_000_000, 20_000_000])
    unit = rng.choice([b"j", b"h\x00", b"t\x00\x00\x00\x00", b"a\x01", b"l\x00\x00\x00\x01a\x01j", b"h\x02jj"])
    shape = rng.randrange(3)
    if shape == 0:
        body = b"l" + struct.pack(">I", n) + unit * min(n, 4_000_000) + b"j"
    elif shape == 1:
        depth = rng.choice([100, 600, 5000])
        body = b"l\x00\x00\x00\x01" * depth + b"j" + b"j" * depth
    else:
        count = min(n, 100_000)
        body = b"t" + struct.pack(">I", count) + b"".join(b"b" + struct.pack(">i", i) + unit for i in range(count))
    term = b"h\x03w\x01mw\x04ping" + body
    if rng.random() < 0.6:
        return framed(b"\x83P" + struct.pack(">I", len(term)) + zlib.compress(term, 9))
    return framed(b"\x83" + term)


def test_fuzz_amplifying_frames_against_a_live_server() -> None:
    """Random expensive frames for ``2 * SCALE`` s; each one is answered (error or ack) and
    the bystander is served throughout."""
    rng = random.Random(int(os.environ.get("HOSTILE_SEED", "11")))
    server = ServerProcess()
    bystander = Bystander(server.port, timeout=60)
    sent = 0
    try:
        sock, conn = authenticated(server.port)
        end = time.monotonic() + 2.0 * SCALE
        while time.monotonic() < end:
            try:
                sock.sendall(_random_amplifier(rng))
                _took, what = until_answered(sock, conn, 60)
            except OSError as exc:
                what = f"closed ({type(exc).__name__})"
            sent += 1
            if what.startswith("closed"):
                # max_errors dropped frames close the connection (too_many_errors): allowed.
                sock.close()
                sock, conn = authenticated(server.port)
            else:
                assert what in ("error", "heartbeat_ack"), what
        sock.close()
        result = bystander.stop()
        report("fuzz", {"frames": sent, **result})
        assert result["failures"] == [] and result["pings"] > 0
        check_survived(server, result)
    finally:
        if server.alive:
            bystander.stop()
            server.stop()


def test_fuzz_sustained_attacks_against_a_live_server() -> None:
    """Idle connections, a never-reading peer and a flood one after the other on one server
    for ``2 * SCALE`` s each (``make fuzz``: minutes), the bystander pinging throughout."""
    server = ServerProcess(slow_mailbox=20_000)
    bystander = Bystander(server.port, timeout=60)
    try:
        idle = measure_idle(server, count=300, seconds=2.0 * SCALE)
        never = measure_never_read(server, seconds=2.0 * SCALE)
        flood = measure_flood(server, seconds=2.0 * SCALE)
        result = bystander.stop()
        report("sustained", {"idle": idle, "never_read": never, "flood": flood, "bystander": result})
        attempts = idle["legit_ok"] + idle["legit_failed"]
        assert attempts > 0 and idle["legit_ok"] >= 0.9 * attempts, idle
        assert never["failures"] == [] and flood["failures"] == [] and result["failures"] == []
        assert result["pings"] > 0
        check_survived(server, result)
    finally:
        if server.alive:
            bystander.stop()
            server.stop()
