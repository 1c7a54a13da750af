"""`credit` and confirmed sends over TCP, Python <-> Python (docs/protocol.md 11.8, 12):
a flood against a slow process is bounded by the receiver's windows, one slow destination
does not hold the others, the blocking send times out per destination, and
``send_confirmed`` answers ok, a code, or "not supported"."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from transport_helpers import WAIT, arun, connect, start_server, wait_for

from pyfabric import ANY, Atom, FeatureNotSupported, SendRefused

FEATURES_NO_ACKS = ["whereis", "link", "maps", "bitstrings", "ports", "funs", "heartbeat", "error", "session"]


def test_flood_ten_times_faster_is_bounded_by_the_receivers_credit():
    """A sender about 10x faster than its receiver (1 ms sleep per 10 messages): the
    receiver returns credit only while the mailbox is below mailbox_high, so the mailbox
    never holds more than mailbox_high + credit_dest, the sender is held back (its sends
    wait in the pending queue, drain() waits for them), and every message arrives once
    and in order. The bounds are counts, never timings."""
    total, burst, high, dest_window = 6_000, 100, 200, 100

    async def body() -> dict[str, int]:
        seen: list[int] = []

        async def slow(proc: Any) -> None:
            while True:
                n = await proc.receive(ANY)
                seen.append(n)
                if n % 10 == 0:
                    await asyncio.sleep(0.001)

        server = await start_server(allowed=("slow",), register_ping=False, mailbox_high=high, credit_dest=dest_window)
        server.spawn(slow, name="slow")
        client = await connect(server)
        peak = {"ahead": 0, "mailbox": 0, "pending": 0}
        sent = 0
        try:
            while sent < total:
                for _ in range(burst):
                    client.send(Atom("slow"), sent)
                    sent += 1
                peak["pending"] = max(peak["pending"], client.statistics()["pending_sends"])
                peak["mailbox"] = max(peak["mailbox"], server.node.mailbox_size("slow")[0])
                await client.drain(timeout=30)
                peak["mailbox"] = max(peak["mailbox"], server.node.mailbox_size("slow")[0])
                peak["ahead"] = max(peak["ahead"], sent - len(seen))
            await wait_for(lambda: len(seen) == total, timeout=60)
            assert seen == list(range(total))
            assert client.statistics()["dropped_overflow"] == 0
        finally:
            await client.close()
            await server.close()
        return peak

    peak = arun(body, timeout=120)
    assert peak["mailbox"] <= high + dest_window, peak  # 12.3: the receiver's bound
    assert peak["ahead"] <= burst + high + 2 * dest_window, peak
    assert peak["pending"] > 0, peak  # the sender really was held back


def test_a_slow_destination_does_not_hold_the_others():
    async def body() -> None:
        got: list[Any] = []

        async def stuck(proc: Any) -> None:
            await asyncio.sleep(3600)

        async def fast(proc: Any) -> None:
            while True:
                got.append(await proc.receive(ANY))

        server = await start_server(allowed=("stuck", "fast"), register_ping=False, mailbox_high=10, credit_dest=20)
        server.spawn(stuck, name="stuck")
        server.spawn(fast, name="fast")
        client = await connect(server, send_timeout=0.5)  # close() waits that long for what never leaves
        try:
            for n in range(200):
                client.send("stuck", n)
            await wait_for(lambda: server.node.mailbox_size("stuck")[0] == 29)  # 9 returned below 10, then 20 owed
            assert client.statistics()["pending_sends"] == 171
            for n in range(500):
                client.send("fast", n)
            await wait_for(lambda: len(got) == 500)
            assert got == list(range(500))
            await asyncio.sleep(0.1)  # the rechecks of the stuck mailbox return nothing
            assert server.node.mailbox_size("stuck")[0] == 29
            with pytest.raises(Exception) as info:
                await client.drain(timeout=0.2)
            assert "wait" in str(info.value)
        finally:
            await client.close()
            await server.close()

    arun(body, timeout=60)


def test_blocking_send_times_out_for_a_destination_without_credit():
    import pyfabric

    server = pyfabric.start_server("127.0.0.1", 0, b"s", allowed=["stuck", "fast"], mailbox_high=1, credit_dest=2)
    got: list[Any] = []

    async def stuck(proc: Any) -> None:
        await asyncio.sleep(3600)

    async def fast(proc: Any) -> None:
        while True:
            got.append(await proc.receive(ANY))

    try:
        server.spawn(stuck, name="stuck")
        server.spawn(fast, name="fast")
        client = pyfabric.connect("127.0.0.1", server.port, b"s", send_timeout=0.3)
        try:
            for n in range(2):  # credit_dest: the mailbox never gets below mailbox_high 1
                client.send("stuck", n)
            started = time.monotonic()
            with pytest.raises(pyfabric.SendTimeout):
                client.send("stuck", 2)
            assert time.monotonic() - started >= 0.25
            client.send("fast", "other destinations go on")
            deadline = time.monotonic() + WAIT
            while not got and time.monotonic() < deadline:
                time.sleep(0.01)
            assert got == ["other destinations go on"]
        finally:
            client.close()
    finally:
        server.close()


def test_send_confirmed_ok_codes_and_not_supported():
    async def body() -> None:
        got: list[Any] = []

        async def sink(proc: Any) -> None:
            while True:
                got.append(await proc.receive(ANY))

        server = await start_server(allowed=("sink", "ghost"), register_ping=False)
        server.spawn(sink, name="sink")
        client = await connect(server, allowed=("cbox",))
        try:
            await client.send_confirmed("sink", 1, timeout=WAIT)
            assert got == [1]  # delivered when it returns
            with pytest.raises(SendRefused) as info:
                await client.send_confirmed("ghost", 2, timeout=WAIT)  # allowed, not registered
            assert info.value.code == "noproc"
            with pytest.raises(SendRefused) as info:
                await client.send_confirmed("secret", 3, timeout=WAIT)
            assert info.value.code == "not_allowed"
            # The server confirms a send to a process of the client too.
            box = client.mailbox(name="cbox")
            (conn,) = server.connections()
            await conn.send_confirmed("cbox", "back", timeout=WAIT)
            assert await box.receive(timeout=0) == "back"
        finally:
            await client.close()
            await server.close()
        old = await start_server(allowed=("sink",), register_ping=False, features=FEATURES_NO_ACKS)
        client = await connect(old)
        try:
            with pytest.raises(FeatureNotSupported):
                await client.send_confirmed("sink", 1, timeout=WAIT)
        finally:
            await client.close()
            await old.close()

    arun(body, timeout=60)


def test_blocking_send_confirmed():
    import pyfabric

    server = pyfabric.start_server("127.0.0.1", 0, b"s", allowed=["sink", "ghost"])
    got: list[Any] = []

    async def sink(proc: Any) -> None:
        while True:
            got.append(await proc.receive(ANY))

    try:
        server.spawn(sink, name="sink")
        client = pyfabric.connect("127.0.0.1", server.port, b"s")
        try:
            client.send_confirmed("sink", "hello", timeout=WAIT)
            # "ok" means the message is in the sink's mailbox; the sink takes it out in the
            # server's own loop thread, which may run a moment later.
            deadline = time.monotonic() + WAIT
            while not got and time.monotonic() < deadline:
                time.sleep(0.005)
            assert got == ["hello"]
            with pytest.raises(SendRefused) as info:
                client.send_confirmed("ghost", "x", timeout=WAIT)
            assert info.value.code == "noproc"
        finally:
            client.close()
    finally:
        server.close()


def test_a_proxy_of_another_connection_counts_what_waits_for_it_there():
    """12.3: a node relaying between two connections. A sends to a pid of the server S that
    is S's proxy of a stuck process of client B; S returns A's credit only while what
    waits for that proxy in S's queue towards B is below mailbox_high, so backpressure
    crosses S: A is held back, and S holds a bounded number of A's messages."""
    high, dest_window = 10, 20

    async def body() -> None:
        async def stuck(proc: Any) -> None:
            await asyncio.sleep(3600)

        server = await start_server(allowed=(), register_ping=False, mailbox_high=high, credit_dest=dest_window)
        client_b = await connect(server, allowed=("bsink",), credit_dest=2, mailbox_high=1, send_timeout=0.5)
        client_a = await connect(server, allowed=("abox",), send_timeout=0.5)
        try:
            client_b.spawn(stuck, name="bsink")
            abox = client_a.mailbox(name="abox")
            await wait_for(lambda: len(server.connections()) == 2)
            conns = server.connections()
            found = [await c.whereis("bsink", timeout=WAIT) for c in conns]
            (conn_b, proxy_at_s), = [(c, p) for c, p in zip(conns, found) if p is not None]
            (conn_a,) = [c for c in conns if c != conn_b]
            conn_a.send("abox", proxy_at_s)  # A gets a pid standing for S's proxy
            target = await abox.receive(timeout=WAIT)
            for n in range(100):
                client_a.send(target, n)
            # S returns A's credit while fewer than `high` wait for B: the 2 that B's credit
            # lets through at once and `high - 1` more; then it owes A's whole credit_dest.
            issued = 2 + (high - 1) + dest_window
            await wait_for(lambda: client_a.statistics()["pending_sends"] == 100 - issued)
            await asyncio.sleep(0.1)  # rechecks every grant_delay return nothing while B is stuck
            assert client_a.statistics()["pending_sends"] == 100 - issued
            assert conn_b.session.deferred_count() == issued - 2  # bounded: high - 1 + credit_dest
        finally:
            await client_a.close()
            await client_b.close()
            await server.close()

    arun(body, timeout=60)


def test_process_send_beyond_max_pending_without_credit_is_dropped_counted_and_reported():
    """12.6: ``Process.send`` to a proxy never blocks nor raises; with the destination out
    of credit and ``max_pending`` waiting, further messages are dropped, counted and
    reported as ``overflow`` / ``unsent``."""
    from pyfabric import MessagesUndelivered

    async def body() -> None:
        async def stuck(proc: Any) -> None:
            await asyncio.sleep(3600)

        lost: list[MessagesUndelivered] = []
        server = await start_server(allowed=("stuck",), register_ping=False, mailbox_high=1, credit_dest=2)
        server.spawn(stuck, name="stuck")
        client = await connect(server, max_pending=3, on_undelivered=lost.append, send_timeout=0.5)
        try:
            proxy = await client.whereis("stuck")

            async def flooder(proc: Any) -> None:
                for n in range(10):
                    proc.send(proxy, n)

            client.spawn(flooder)
            await wait_for(lambda: client.statistics()["dropped_overflow"] == 5)
            await wait_for(lambda: len(lost) == 1)
            assert lost[0].reason == "overflow"
            assert [(m.message, m.state) for m in lost[0].messages] == [(n, "unsent") for n in range(5, 10)]
            assert client.statistics()["pending_sends"] == 3
            assert server.node.mailbox_size("stuck")[0] == 2
        finally:
            await client.close()
            await server.close()
        assert lost[-1].reason == "closed" and [m.message for m in lost[-1].messages] == [2, 3, 4]

    arun(body, timeout=60)
