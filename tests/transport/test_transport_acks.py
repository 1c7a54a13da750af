"""`acks` over TCP, Python <-> Python through a relay on 127.0.0.1 that cuts the connection
every 100-300 ms under load: 0 lost, 0 duplicated, 0 reordered both ways (docs/protocol.md
section 11). The short runs are part of ``make test``; ``make fuzz`` (``-k fuzz``) runs
them for ``FUZZ_SECONDS``."""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import pytest
from transport_helpers import WAIT, Relay, arun, connect, start_server, wait_for

from pyfabric import ANY, Atom, MessagesUndelivered, ReceiveTimeout, SendQueueFull

ECHO = Atom("echo")
WINDOW = 2_000  # messages sent and not echoed yet, at most (keeps traffic going during the cuts)
FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "20"))


class CutRelay(Relay):
    """The relay of transport_helpers that can also cut: ``cut()`` resets every open
    connection at once (bytes in flight are lost both ways); ``freeze_and_drop(client)``
    stops forwarding and drops the client's side only, so that the server still holds the
    old connection when the client resumes (docs/protocol.md 11.5, step 2)."""

    def cut(self) -> None:
        self.freeze()
        writers, self._writers = self._writers, []
        for writer in writers:
            writer.transport.abort()


def echo(seen: list[int]) -> Any:
    """A process body echoing ``{From, N}`` to ``From`` as ``{echo, N}``; records in ``seen``."""

    async def body(proc: Any) -> None:
        while True:
            sender, n = await proc.receive((ANY, ANY))
            seen.append(n)
            proc.send(sender, (ECHO, n))

    return body


async def cutter(relay: CutRelay, client: Any, stop: asyncio.Event, counts: dict[str, int]) -> None:
    rng = random.Random(7)
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(0.1, 0.3))
        if stop.is_set():
            return
        if rng.random() < 0.5:
            relay.cut()
            counts["reset"] += 1
        else:
            relay.freeze()
            client.drop_connection()
            counts["half_open"] += 1


async def chaos_run(
    total: int, *, burst: int, min_cuts: int = 5, seconds: float | None = None, **flow: int
) -> dict[str, int]:
    """Send at least ``total`` numbered messages (in bursts, draining between them, at most
    ``WINDOW`` unanswered) to the server's echo process through a cutting relay, until
    ``min_cuts`` cuts happened (and ``seconds`` passed); every echo must come back once
    and in order, and the echo process must have seen each once and in order. ``flow``:
    credit options of both sides (docs/protocol.md 12)."""
    lost: list[MessagesUndelivered] = []
    server = await start_server(allowed=("echo",), register_ping=False, on_undelivered=lost.append, **flow)
    seen: list[int] = []
    server.spawn(echo(seen), name="echo")
    relay = await CutRelay(server.port).__aenter__()
    client = await connect(relay.port, on_undelivered=lost.append, **flow)
    counts = {"reset": 0, "half_open": 0}
    stop = asyncio.Event()
    try:
        box = client.mailbox()
        cuts = asyncio.get_running_loop().create_task(cutter(relay, client, stop, counts))
        got: list[int] = []
        deadline = time.monotonic() + seconds if seconds else None
        sent = 0
        while (
            sent < total
            or counts["reset"] + counts["half_open"] < min_cuts
            or (deadline is not None and time.monotonic() < deadline)
        ):
            for _ in range(burst):
                client.send(ECHO, (box.pid, sent))
                sent += 1
            await client.drain(timeout=30)
            while True:  # take what has arrived; wait while too many are unanswered
                try:
                    msg = await box.receive(timeout=WAIT * 4 if sent - len(got) > WINDOW else 0)
                except ReceiveTimeout:
                    if sent - len(got) > WINDOW:
                        raise
                    break
                got.append(msg[1])
        stop.set()
        await cuts
        while len(got) < sent:
            msg = await box.receive(timeout=WAIT * 4)
            got.append(msg[1])
        assert got == list(range(sent)), "echoes lost, duplicated or reordered"
        await wait_for(lambda: len(seen) == sent)
        assert seen == list(range(sent)), "messages lost, duplicated or reordered"
        assert not lost, lost
        box.close()
        counts["messages"] = sent
        return counts
    finally:
        stop.set()
        await client.close()
        await relay.__aexit__(None, None, None)
        await server.close()


def test_chaos_20000_messages_both_ways_through_cuts():
    counts = arun(lambda: chaos_run(20_000, burst=200), timeout=120)
    assert counts["messages"] >= 20_000 and counts["reset"] + counts["half_open"] >= 5, counts


def test_chaos_with_small_credit_windows_through_cuts():
    """The same with windows small enough that credit, its grants and the mailbox rechecks
    are what paces both directions across every cut (credit state is session state, 12.5)."""
    flow = {"credit_window": 256, "credit_dest": 64, "credit_bytes": 8192, "mailbox_high": 16}
    counts = arun(lambda: chaos_run(10_000, burst=200, **flow), timeout=120)
    assert counts["messages"] >= 10_000 and counts["reset"] + counts["half_open"] >= 5, counts


def test_chaos_single_sends_through_cuts():
    counts = arun(lambda: chaos_run(3_000, burst=1, min_cuts=3), timeout=120)
    assert counts["messages"] >= 3_000


def test_fuzz_chaos_long_run():
    """FUZZ_SECONDS / 10 of cuts (2 s in ``make test``, a minute in ``make fuzz``), bursts of
    random sizes."""
    seconds = max(1.0, FUZZ_SECONDS / 10)
    counts = arun(lambda: chaos_run(20_000, burst=random.randint(1, 1000), seconds=seconds), timeout=seconds * 4 + 120)
    assert counts["messages"] >= 20_000


def test_session_expiry_reports_unconfirmed_messages():
    """The server disappears for good: the client learns which messages were not confirmed."""

    async def body() -> None:
        lost: list[MessagesUndelivered] = []
        server = await start_server(allowed=("echo",), register_ping=False)
        server.spawn(echo([]), name="echo")
        relay = await CutRelay(server.port).__aenter__()
        client = await connect(relay.port, on_undelivered=lost.append, send_timeout=0.5)
        try:
            box = client.mailbox()
            client.send(ECHO, (box.pid, 0))
            await box.receive(timeout=WAIT)
            await wait_for(lambda: client.statistics()["unacknowledged"] == 0)  # the server's ack came
            relay.freeze()  # nothing arrives any more: the next ones stay unacknowledged
            for n in range(1, 4):
                client.send(ECHO, (box.pid, n))
            await client.drain()
        finally:
            await client.close()  # waits for acks (send_timeout), then reports
            await relay.__aexit__(None, None, None)
            await server.close()
        assert len(lost) == 1 and lost[0].reason == "closed"
        assert [m.message[1] for m in lost[0].messages] == [1, 2, 3]
        assert {m.state for m in lost[0].messages} == {"unconfirmed"}

    arun(body, timeout=60)


def test_full_pending_queue_raises_and_overflow_of_a_process_is_reported():
    async def body() -> None:
        lost: list[MessagesUndelivered] = []
        server = await start_server(allowed=("echo",), register_ping=False)
        relay = await CutRelay(server.port).__aenter__()
        server.spawn(echo([]), name="echo")
        client = await connect(relay.port, on_undelivered=lost.append, outbox_frames=2, max_pending=3, send_timeout=0.5)
        try:
            echo_proxy = await client.whereis("echo")
            await wait_for(lambda: client.statistics()["unacknowledged"] == 0)
            relay.freeze()  # connected, but no ack comes back: the outbox fills
            for n in range(5):  # 2 in the outbox, 3 waiting
                client.send(ECHO, n)
            with pytest.raises(SendQueueFull):
                client.send(ECHO, 5)
            with pytest.raises(SendQueueFull):
                client.send(echo_proxy, 5)

            async def flooder(proc: Any) -> None:  # Process.send never raises: drop + report
                for n in range(10, 14):
                    proc.send(echo_proxy, n)

            client.spawn(flooder)
            await wait_for(lambda: client.statistics()["dropped_overflow"] == 4)
            await wait_for(lambda: len(lost) == 1)
            assert lost[0].reason == "overflow"
            assert [(m.dest, m.message, m.state) for m in lost[0].messages] == [(echo_proxy, n, "unsent") for n in range(10, 14)]
        finally:
            relay.cut()
            await client.close()
            await relay.__aexit__(None, None, None)
            await server.close()
        assert len(lost) == 2 and lost[-1].reason == "closed"
        assert [m.message for m in lost[-1].messages] == [0, 1, 2, 3, 4]
        assert [m.state for m in lost[-1].messages] == ["unconfirmed"] * 2 + ["unsent"] * 3

    arun(body, timeout=60)


def test_blocking_send_waits_for_outbox_room_then_times_out_sending_nothing():
    """The blocking facade (docs/protocol.md 12.6): a server that acknowledges late (its
    ack_delay is long) leaves our outbox full; send blocks up to send_timeout, then raises
    SendTimeout, and that message never arrives."""
    import pyfabric

    seen: list[int] = []
    server = pyfabric.start_server("127.0.0.1", 0, b"s", allowed=["echo"], ack_every=10**6, ack_delay=30.0)
    try:
        server.spawn(echo(seen), name="echo")
        client = pyfabric.connect("127.0.0.1", server.port, b"s", outbox_frames=3, send_timeout=0.3)
        try:
            with client.mailbox() as box:
                for n in range(3):
                    client.send("echo", (box.pid, n))
                started = time.monotonic()
                with pytest.raises(pyfabric.SendTimeout):
                    client.send("echo", (box.pid, 3))
                assert time.monotonic() - started >= 0.25
                assert [box.receive(timeout=WAIT)[1] for _ in range(3)] == [0, 1, 2]
                with pytest.raises(ReceiveTimeout):
                    box.receive(timeout=0.2)
        finally:
            client.close()
    finally:
        server.close()
    assert seen == [0, 1, 2]


def test_flood_sender_ten_times_faster_is_slowed_and_bounded_nothing_dropped():
    """A sender about 10x faster than its receiver (the receiver sleeps 1 ms per 10
    messages): the server's push-back stops reading while the mailbox is congested, so
    frames stay unacknowledged; the client's outbox bound (outbox_frames) then holds the
    sender back through drain(). Bounds are counts, not timings: at every sample, what the
    sender is ahead of the receiver stays under outbox + mailbox push-back + one burst, the
    receiver's mailbox stays bounded, and every message arrives once and in order."""
    from pyfabric import Atom as _A

    total, burst, outbox = 20_000, 100, 1_024

    async def body() -> dict[str, int]:
        seen: list[int] = []

        async def slow(proc: Any) -> None:
            while True:
                _sender, n = await proc.receive((ANY, ANY))
                seen.append(n)
                if n % 10 == 0:
                    await asyncio.sleep(0.001)

        server = await start_server(allowed=("slow",), register_ping=False)
        server.spawn(slow, name="slow")
        client = await connect(server, outbox_frames=outbox)
        peak = {"ahead": 0, "mailbox": 0, "pending": 0, "unacked": 0}
        sent = 0
        try:
            box = client.mailbox()
            while sent < total:
                for _ in range(burst):
                    client.send(_A("slow"), (box.pid, sent))
                    sent += 1
                await client.drain(timeout=30)
                stats = client.statistics()
                peak["ahead"] = max(peak["ahead"], sent - len(seen))
                peak["mailbox"] = max(peak["mailbox"], server.node.mailbox_size("slow")[0])
                peak["pending"] = max(peak["pending"], stats["pending_sends"])
                peak["unacked"] = max(peak["unacked"], stats["unacknowledged"])
            await wait_for(lambda: len(seen) == total, timeout=60)
            assert seen == list(range(total))
            assert client.statistics()["dropped_overflow"] == 0
            box.close()
        finally:
            await client.close()
            await server.close()
        return peak

    peak = arun(body, timeout=120)
    # 2048 + a read: the push-back threshold of transport._stream, checked per slice.
    mailbox_bound = 4_096
    assert peak["unacked"] <= outbox, peak
    assert peak["mailbox"] <= mailbox_bound, peak
    assert peak["ahead"] <= outbox + mailbox_bound + burst, peak
    assert peak["ahead"] > outbox // 2, peak  # the sender really was ahead: it was slowed, not idle


def test_server_reports_what_an_expired_session_left_unconfirmed():
    """The client vanishes for good: after session_timeout the server's on_undelivered gets
    the messages its process sent that the client never acknowledged (docs/protocol.md 11.7)."""

    async def later(proc: Any) -> None:
        sender, k = await proc.receive((ANY, ANY))
        await asyncio.sleep(0.1)
        for n in range(k):
            proc.send(sender, (ECHO, n))

    async def body() -> tuple[list[MessagesUndelivered], Any]:
        lost: list[MessagesUndelivered] = []
        server = await start_server(allowed=("later",), register_ping=False, session_timeout=0.3, on_undelivered=lost.append)
        server.spawn(later, name="later")
        relay = await CutRelay(server.port).__aenter__()
        client = await connect(relay.port, reconnect=False)
        try:
            box = client.mailbox()
            client.send(Atom("later"), (box.pid, 3))
            await wait_for(lambda: client.statistics()["unacknowledged"] == 0)  # the server has it
            relay.freeze()  # the three replies, written within 0.1 s, reach nobody
            await asyncio.sleep(0.2)
            relay.cut()
            await wait_for(lambda: bool(lost), timeout=WAIT * 2)
            return lost, box.pid
        finally:
            await client.close()
            await relay.__aexit__(None, None, None)
            await server.close()

    lost, box_pid = arun(body, timeout=60)
    (report,) = lost
    assert report.reason == "session_expired"
    assert [(m.message, m.state) for m in report.messages] == [((ECHO, n), "unconfirmed") for n in range(3)]
    # One destination, as the server's process gave it: its proxy pid for the client's box.
    assert len({m.dest for m in report.messages}) == 1 and type(report.messages[0].dest).__name__ == "Pid"


def test_a_clean_close_reports_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """A client closes right after a message from the server arrived, its ack not yet due
    (``ack_delay`` 5 s here): ``close()`` acknowledges what it received before the socket
    closes, so the server, when its kept session later ends, has nothing to report as
    unconfirmed (docs/protocol.md 11.7); nor has the client."""
    import logging

    from transport_helpers import HOST, SECRET

    import pyfabric

    async def later(proc: Any) -> None:
        sender = await proc.receive()
        await asyncio.sleep(0.3)  # by then both sides have acknowledged everything else
        proc.send(sender, (ECHO, 1))

    async def body() -> None:
        server = await start_server(allowed=("later",), register_ping=False)
        server.spawn(later, name="later")
        try:
            client = await pyfabric.aconnect(HOST, server.port, SECRET, ack_delay=5.0)
            assert "acks" in client.features
            box = client.mailbox()
            client.send(Atom("later"), box.pid)
            assert await box.receive((ECHO, ANY), timeout=WAIT) == (ECHO, 1)
            await client.close()
        finally:
            await server.close()  # ends the kept session: it reports what is unconfirmed

    with caplog.at_level(logging.WARNING, logger="pyfabric"):
        arun(body)
    warned = [r.getMessage() for r in caplog.records if "not confirmed" in r.getMessage()]
    assert warned == [], warned
