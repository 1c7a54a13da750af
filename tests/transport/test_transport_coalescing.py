"""Writes are coalesced per loop iteration (issue 15): everything a connection produces in
one iteration goes out in one socket write, in order; a lone frame still leaves in the
same iteration; a close writes what is queued; write backpressure still holds.

Observed through the public counters ``socket_writes`` / ``bytes_out`` of
``Client.statistics()`` and what the receiving processes get."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from transport_helpers import arun, connect, start_server, wait_for

from pyfabric import Atom, SendQueueFull, Server
from pyfabric.protocol import FEATURES

N = Atom("n")
DONE = Atom("done")
PLAIN = FEATURES - {"acks", "credit"}


def collector(got: list[Any]) -> Any:
    async def run(proc: Any) -> None:
        while True:
            got.append(await proc.receive())

    return run


async def sink_server(got: list[Any]) -> Server:
    """A server whose allowed process ``sink`` appends what it receives to ``got``."""
    server = await start_server(allowed=["sink"])
    server.spawn(collector(got), name="sink")
    return server


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sends_of_one_iteration_leave_in_one_write_in_order(loop: str) -> None:
    async def body() -> None:
        got: list[Any] = []
        server = await sink_server(got)
        client = await connect(server, reconnect=False)
        try:
            client.send("sink", (N, -1))
            await wait_for(lambda: len(got) == 1)
            await asyncio.sleep(0.05)  # the acks of that first frame are written
            before = client.statistics()
            for i in range(200):
                client.send("sink", (N, i))
            await asyncio.sleep(0)  # one loop iteration
            after = client.statistics()
            assert after["socket_writes"] - before["socket_writes"] == 1
            assert after["bytes_out"] > before["bytes_out"]
            await wait_for(lambda: len(got) == 201)
            assert got[1:] == [(N, i) for i in range(200)]
        finally:
            await client.close()
            await server.close()

    arun(body, loop=loop)


def test_a_lone_frame_leaves_in_the_same_iteration() -> None:
    async def body() -> None:
        got: list[Any] = []
        server = await sink_server(got)
        client = await connect(server, reconnect=False)
        try:
            for i in range(3):
                before = client.statistics()
                client.send("sink", (N, i))
                assert client.statistics()["bytes_out"] == before["bytes_out"]  # not written yet
                await asyncio.sleep(0)  # no timer involved: the end of this iteration
                after = client.statistics()
                assert after["bytes_out"] > before["bytes_out"]
                assert after["socket_writes"] - before["socket_writes"] == 1
                await wait_for(lambda n=i + 1: len(got) == n)
            assert got == [(N, 0), (N, 1), (N, 2)]
        finally:
            await client.close()
            await server.close()

    arun(body)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_reply_and_the_frames_it_acknowledges_share_one_write(loop: str) -> None:
    """A server process answering at once: the reply goes out in the same write as what the
    received frames made due (acks, grants), one write per round trip on each side."""

    async def body() -> None:
        server = await start_server()
        client = await connect(server, reconnect=False)
        try:
            box = client.mailbox()
            client.send("ping", (box.pid, 0))
            ping, _ = await box.receive(timeout=5)
            await asyncio.sleep(0.05)
            conn = server.connections()[0]
            before, server_before = client.statistics(), conn.statistics()
            rounds = 300  # more than ack_every and grant_every (64)
            for i in range(rounds):
                client.send(ping, (box.pid, i))
                assert (await box.receive(timeout=5))[1] == (Atom("pong"), i)
            client_writes = client.statistics()["socket_writes"] - before["socket_writes"]
            server_writes = conn.statistics()["socket_writes"] - server_before["socket_writes"]
            # a timer's ack or grant may go alone when no traffic comes to carry it
            assert rounds <= client_writes <= rounds + rounds // 16
            assert rounds <= server_writes <= rounds + rounds // 16
            box.close()
        finally:
            await client.close()
            await server.close()

    arun(body, loop=loop)


def test_close_writes_what_is_queued() -> None:
    async def body() -> None:
        got: list[Any] = []
        server = await sink_server(got)
        for features in (FEATURES, PLAIN):
            got.clear()
            client = await connect(server, reconnect=False, features=features)
            for i in range(500):
                client.send("sink", (N, i))
            await client.close()  # no iteration in between: the close flushes them
            await wait_for(lambda: len(got) == 500)
            assert got == [(N, i) for i in range(500)]
        await server.close()

    arun(body)


def test_write_backpressure_holds_drain_back() -> None:
    """A peer that does not read: the coalesced write fills the socket's buffer, the
    transport pauses writing and ``drain()`` waits until the peer reads again."""

    async def body() -> None:
        go = asyncio.Event()
        count = [0]

        async def slow_sink(proc: Any) -> None:
            await go.wait()
            while True:
                await proc.receive()
                count[0] += 1

        server = await start_server(allowed=["sink"])
        # the server stops reading us once half of this mailbox is full (push-back)
        server.spawn(slow_sink, name="sink", max_mailbox=64)
        client = await connect(server, reconnect=False, features=PLAIN)
        try:
            blob = bytes(256 * 1024)
            for _ in range(200):  # 50 MiB: far beyond what the server reads before pushing back
                client.send("sink", blob)
            try:
                await client.drain(timeout=0.5)
            except SendQueueFull as exc:  # the expected outcome: held back
                assert "write buffer" in str(exc)
            else:
                raise AssertionError("drain() returned while the peer did not read")
            go.set()
            await client.drain(timeout=10)
            await wait_for(lambda: count[0] == 200, timeout=10)
        finally:
            await client.close()
            await server.close()

    arun(body, timeout=40, allow_errors_from=("pyfabric.transport", "pyfabric.server"))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_reply_leaves_in_the_loop_pass_that_wakes_its_process(loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read that delivers a request schedules the link's flush behind the wake-up of
    the receiving process: its reply is written one loop iteration after the read (the
    process runs, then the flush), not two (one ``epoll_wait`` per round trip)."""
    from pyfabric.transport._stream import FrameStream

    ticks = [0]
    seen: dict[str, list[int]] = {"read": [], "write": []}
    read, write = FrameStream.data_received, FrameStream.write

    def data_received(self: FrameStream, data: bytes) -> None:
        if self.link.role == "server":
            seen["read"].append(ticks[0])
        read(self, data)

    def written(self: FrameStream, data: Any) -> None:
        if self.link.role == "server":
            seen["write"].append(ticks[0])
        write(self, data)

    monkeypatch.setattr(FrameStream, "data_received", data_received)
    monkeypatch.setattr(FrameStream, "write", written)

    async def echo(proc: Any) -> None:
        while True:
            sender, msg = await proc.receive()
            proc.send(sender, msg)

    async def body() -> None:
        server = await start_server(allowed=["echo"], features=PLAIN)
        server.spawn(echo, name="echo")
        client = await connect(server, reconnect=False, features=PLAIN)
        running = True

        def tick() -> None:
            ticks[0] += 1
            if running:
                asyncio.get_running_loop().call_soon(tick)

        try:
            box = client.mailbox()
            client.send("echo", (box.pid, N))
            assert await box.receive(timeout=5) == N  # the proxy of box exists on the server now
            tick()
            for i in range(5):
                seen["read"].clear()
                seen["write"].clear()
                client.send("echo", (box.pid, i))
                assert await box.receive(timeout=5) == i
                assert len(seen["read"]) == 1 and len(seen["write"]) == 1
                assert seen["write"][0] - seen["read"][0] == 1
        finally:
            running = False
            await client.close()
            await server.close()

    arun(body, loop=loop)
