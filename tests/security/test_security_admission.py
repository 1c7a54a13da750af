"""Connection admission an unauthenticated attacker cannot exhaust (issue 11 item 2).

A full pending-handshake table (global or per address) or a full connection table makes
room by closing the oldest unauthenticated connection, preferring one that has sent
nothing, so idle sockets never lock a real client out.
"""

from __future__ import annotations

import asyncio
import socket
import time

from transport_helpers import HOST, arun, close_writer, connect, frame, start_server, wait_for

from pyfabric import Atom


async def eof(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionError:
        return True


def test_idle_connections_beyond_the_per_address_limit_make_room_for_a_client() -> None:
    async def body() -> None:
        server = await start_server(max_pending_per_address=3, max_auth_failures=0)
        try:
            socks = [await asyncio.open_connection(HOST, server.port) for _ in range(10)]
            await wait_for(lambda: server.statistics()["handshaking"] == 3)
            async with await connect(server, reconnect=False) as client:
                assert client.state == "connected"
            stats = server.statistics()
            assert stats["connections_evicted"] == 8 and stats["connections_refused"] == 0
            for reader, _writer in socks[:7]:
                assert await eof(reader)
            for _reader, writer in socks:
                await close_writer(writer)
        finally:
            await server.close()

    arun(body, allow_errors_from=("pyfabric.server",))


def test_a_connection_that_started_its_handshake_outlives_idle_ones() -> None:
    async def body() -> None:
        server = await start_server(max_pending_handshakes=2, allow_legacy_auth=True, max_auth_failures=0)
        try:
            talker = await asyncio.open_connection(HOST, server.port)
            talker[1].write(frame((Atom("hello"), "localhost")))
            await asyncio.sleep(0.1)
            idle = [await asyncio.open_connection(HOST, server.port) for _ in range(3)]
            await asyncio.sleep(0.2)
            # The talker is the oldest, but it has spoken: the idle ones were evicted.
            assert not talker[0].at_eof()
            assert server.statistics()["connections_evicted"] == 2
            for reader, _writer in idle[:2]:
                assert await eof(reader)
            for _reader, writer in [talker, *idle]:
                await close_writer(writer)
        finally:
            await server.close()

    arun(body, allow_errors_from=("pyfabric.server",))


def test_a_hello_not_yet_read_counts_as_spoken() -> None:
    """A server accepts a batch of connections before it reads any of them: a client whose
    hello waits in the kernel when idle ones arrive right after it is not taken for idle."""

    async def body() -> None:
        server = await start_server(max_pending_handshakes=2, allow_legacy_auth=True, max_auth_failures=0)
        try:
            # Blocking calls, the loop does not run in between: the server accepts all four
            # in one go, before it has read the talker's hello.
            talker = socket.create_connection((HOST, server.port))
            talker.sendall(frame((Atom("hello"), "localhost")))
            time.sleep(0.05)  # the hello is in the server's receive buffer
            idle = [socket.create_connection((HOST, server.port)) for _ in range(3)]
            try:
                await wait_for(lambda: server.statistics()["connections_evicted"] == 2)
                await asyncio.sleep(0.1)
                talker.setblocking(False)
                try:
                    assert talker.recv(1) != b"", "the talker was evicted"
                except BlockingIOError:
                    pass  # open, nothing to read: still pending, as it should be
                assert server.statistics()["handshaking"] == 2
            finally:
                for sock in [talker, *idle]:
                    sock.close()
        finally:
            await server.close()

    arun(body, allow_errors_from=("pyfabric.server",))


def test_a_full_connection_table_evicts_a_pending_connection() -> None:
    async def body() -> None:
        server = await start_server(max_connections=2, max_auth_failures=0)
        try:
            async with await connect(server, reconnect=False):
                reader, writer = await asyncio.open_connection(HOST, server.port)
                await wait_for(lambda: server.statistics()["connections"] == 2)
                async with await connect(server, reconnect=False) as second:
                    assert second.state == "connected"
                assert await eof(reader)
                await close_writer(writer)
        finally:
            await server.close()

    arun(body, allow_errors_from=("pyfabric.server",))
