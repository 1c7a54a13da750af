"""A server's output buffer is bounded (issue 11 item 3): a client that does not read is
pushed back (its requests are not read while our replies wait) and closed, with a logged
reason, once ``max_write_buffer`` bytes are unsent."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest
from transport_helpers import HOST, SECRET, arun, start_server, wait_for

from pyfabric import Atom
from pyfabric.etf import Pid
from pyfabric.protocol import Connection


async def raw_client(port: int, **config: Any) -> tuple[socket.socket, Connection]:
    """An authenticated client socket that we read only when we choose to (``config``: more
    options of the client's protocol core)."""
    node = Atom("lazy@host")
    ids = iter(range(1, 10**6))
    conn = Connection("client", SECRET, node_name=node, new_proxy_pid=lambda _i: Pid(node, next(ids), 0, 0), **config)
    sock = socket.create_connection((HOST, port))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    conn.start()
    await loop.sock_sendall(sock, conn.data_to_send())
    while conn.state != "established":
        conn.receive_data(await loop.sock_recv(sock, 65536))
        conn.events()
        await loop.sock_sendall(sock, conn.data_to_send())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock, conn


def test_requests_are_not_read_while_replies_wait() -> None:
    async def body() -> None:
        server = await start_server()
        try:
            sock, conn = await raw_client(server.port)
            me = Pid(Atom("lazy@host"), 1, 0, 0)
            blob = bytes(256 * 1024)
            loop = asyncio.get_running_loop()
            sent = 0
            for _ in range(200):  # 50 MiB of replies if the server kept reading
                conn.send_message(Atom("ping"), (me, blob))
                try:
                    await asyncio.wait_for(loop.sock_sendall(sock, conn.data_to_send()), 0.5)
                except TimeoutError:
                    break  # pushed back: the server stopped reading us
                sent += 1
            assert sent < 200
            assert len(server.connections()) == 1  # pushed back, not closed
            sock.close()
        finally:
            await server.close()

    arun(body, allow_errors_from=("pyfabric.server", "pyfabric.transport"))


def test_a_client_that_never_reads_is_closed_past_max_write_buffer(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        server = await start_server(max_write_buffer=2 * 2**20)
        try:
            sock, conn = await raw_client(server.port)
            me = Pid(Atom("lazy@host"), 1, 0, 0)
            conn.send_message(Atom("ping"), (me, 0))  # gives the server a proxy of our process
            await asyncio.get_running_loop().sock_sendall(sock, conn.data_to_send())
            await wait_for(lambda: any(True for _ in server.node.processes()) and len(server.connections()) == 1)
            await asyncio.sleep(0.2)
            proxies = [p for p in server.node.processes() if server.node.proxy_handle(p) is not None]
            assert proxies
            for _ in range(64):  # a local process streams to the client: 64 MiB
                server.send(proxies[0], bytes(2**20))
                await asyncio.sleep(0)
            await wait_for(lambda: server.statistics()["connections"] == 0)
            sock.close()
        finally:
            await server.close()

    with caplog.at_level(logging.WARNING, logger="pyfabric.transport"):
        arun(body, allow_errors_from=("pyfabric.server", "pyfabric.transport"))
    assert "peer does not read" in caplog.text and "max_write_buffer" in caplog.text


def test_a_flood_queues_only_a_slow_service_s_short_work() -> None:
    """Issue 11, bystander latency: a raw client floods a shared service that takes >= 5 ms
    per request (without acks or credit, as an attacker would). The server lowers that
    mailbox's push-back mark to what the service handles in MAILBOX_WAIT_TARGET (0.1 s, so
    here at most max(32, 20) messages) plus a slice: the mailbox never holds the 2048 of the
    fixed mark, so another client's request waits behind a bounded amount of work."""
    async def body() -> tuple[int, float, list[int]]:
        async def slow(proc) -> None:
            while True:
                await proc.receive()
                await asyncio.sleep(0.005)

        server = await start_server(allowed=("slow",), register_ping=False)
        server.spawn(slow, name="slow")
        try:
            sock, conn = await raw_client(server.port)
            me = Pid(Atom("lazy@host"), 1, 0, 0)
            for _ in range(5_000):
                conn.send_message(Atom("slow"), (me, 0))
            data = conn.data_to_send()
            loop = asyncio.get_running_loop()
            writer = loop.create_task(loop.sock_sendall(sock, data))
            peaks: list[int] = []
            for _ in range(150):  # 1.5 s of samples
                await asyncio.sleep(0.01)
                peaks.append(server.node.mailbox_load("slow")[0])
            load = server.node.mailbox_load("slow")
            writer.cancel()
            sock.close()
            return max(peaks), load[2], peaks
        finally:
            await server.close()

    peak, service, peaks = arun(body, timeout=60, allow_errors_from=("pyfabric.server", "pyfabric.transport"))
    assert service >= 0.005, service  # measured: the service's own time per request
    assert sum(1 for p in peaks if p > 0) > 100, peaks  # the flood kept it busy throughout
    # the unknown-speed mark (64) plus one 4 KiB slice of these small requests, at most
    assert peak <= 64 + 200, peaks  # the fixed mark alone (2048) let it fill to about 2048 + a slice


def test_a_connection_paused_by_push_back_is_not_closed_for_silence(caplog: pytest.LogCaptureFixture) -> None:
    """While the server does not read a connection (a mailbox it feeds is congested), the
    peer's silence cannot be observed: the heartbeat check must not close it, however long
    the pause lasts (here > 10 of the client's 0.1 s intervals)."""

    async def body() -> tuple[int, int]:
        async def slow(proc) -> None:
            while True:
                await proc.receive()
                await asyncio.sleep(0.05)

        server = await start_server(allowed=("slow",), register_ping=False)
        server.spawn(slow, name="slow")
        try:
            sock, conn = await raw_client(server.port, heartbeat_interval=100)
            loop = asyncio.get_running_loop()
            me = Pid(Atom("lazy@host"), 1, 0, 0)
            for _ in range(400):  # 20 s of the service's work: the server pauses us for long
                conn.send_message(Atom("slow"), (me, 0))
            writer = loop.create_task(loop.sock_sendall(sock, conn.data_to_send()))
            await asyncio.sleep(1.5)
            alive = len(server.connections())
            queued = server.node.mailbox_load("slow")[0]
            writer.cancel()
            sock.close()
            return alive, queued
        finally:
            await server.close()

    with caplog.at_level(logging.WARNING, logger="pyfabric"):
        alive, queued = arun(body, timeout=60, allow_errors_from=("pyfabric.server", "pyfabric.transport"))
    assert queued > 0  # still busy with the flood: the connection was paused throughout
    assert alive == 1, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if "silent" in r.getMessage()]
