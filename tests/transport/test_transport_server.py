"""Server robustness: many clients, hostile raw sockets, limits, auth, legacy peers, heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct

import pytest
from transport_helpers import (
    HOST,
    PONG,
    SECRET,
    WAIT,
    Relay,
    arun,
    close_writer,
    connect,
    frame,
    legacy_handshake,
    pair,
    read_frame,
    start_server,
    wait_for,
)

from pyfabric import Atom, AuthenticationError, ConnectFailed, LocalProtocolError, Pid
from pyfabric.protocol import Connection

T = Atom("t")
PR = Atom("pr")
M = Atom("m")
# The protocol's own warnings about hostile input are expected here.
QUIET = ("pyfabric.server", "pyfabric.transport", "pyfabric.protocol")


async def assert_serves(server) -> None:
    """A fresh client still gets its pong."""
    client = await connect(server, reconnect=False)
    try:
        async with client.mailbox() as box:
            client.send("ping", (box.pid, "alive?"))
            assert (await box.receive(timeout=WAIT))[1] == (PONG, "alive?")
    finally:
        await client.close()


async def eof(reader: asyncio.StreamReader) -> bytes:
    """Read until the server closes (fails the test by timeout if it never does)."""
    with contextlib.suppress(ConnectionError):
        return await reader.read()
    return b""


def test_many_concurrent_clients_with_their_own_id_spaces() -> None:
    async def body() -> None:
        server = await start_server()
        try:

            async def one(i: int) -> tuple[Pid, Pid]:
                client = await connect(server)
                try:
                    ping = await client.whereis("ping")
                    async with client.mailbox() as box:
                        for n in range(20):
                            client.send(ping if n % 2 else "ping", (box.pid, (i, n)))
                        for n in range(20):
                            sender, reply = await box.receive(timeout=WAIT)
                            assert sender == ping and reply == (PONG, (i, n))
                        return ping, box.pid
                finally:
                    await client.close()

            clients = await asyncio.gather(*(one(i) for i in range(20)))
            assert server.statistics()["connections_total"] == 20
            assert len(clients) == 20
        finally:
            await server.close()

    arun(body)


def test_each_connection_has_its_own_id_tables() -> None:
    async def body() -> None:
        server = await start_server()
        try:
            c1 = await connect(server)
            c2 = await connect(server)
            try:
                p1 = await c1.whereis("ping")
                p2 = await c2.whereis("ping")
                links = server.connections()
                assert [dict(link.session.exports) for link in links] == [{1: server.node.whereis("ping")}] * 2
                async with c1.mailbox() as b1, c2.mailbox() as b2:
                    c1.send(p1, (b1.pid, 1))
                    c2.send(p2, (b2.pid, 2))
                    assert await b1.receive(timeout=WAIT) == (p1, (PONG, 1))
                    assert await b2.receive(timeout=WAIT) == (p2, (PONG, 2))
                    # Two proxies on the server, one per client process, in separate tables.
                    assert sorted(len(link.session.proxies) for link in links) == [1, 1]
            finally:
                await c1.close()
                await c2.close()
        finally:
            await server.close()

    arun(body)


@pytest.mark.parametrize(
    "junk",
    [
        b"",  # connect and close
        b"\x00\x00",  # a truncated header
        b"\xff\xff\xff\xff",  # a length header far over max_frame
        struct.pack(">I", 5) + b"hello",  # a frame that is not ETF
        struct.pack(">I", 1 << 20),  # a large length header, body never sent
        os.urandom(4096),
        frame((Atom("nonsense"), 1, 2)),
    ],
    ids=["close", "short", "oversize", "not-etf", "large-no-body", "random", "bad-handshake-term"],
)
def test_hostile_raw_clients_do_not_disturb_others(junk: bytes) -> None:
    async def body() -> None:
        server = await start_server(max_frame=1 << 16)
        try:
            client = await connect(server)
            try:
                reader, writer = await asyncio.open_connection(HOST, server.port)
                writer.write(junk)
                if junk in (struct.pack(">I", 1 << 20),):
                    pass  # the server waits for the body (until the handshake timeout)
                else:
                    writer.write_eof()
                    await eof(reader)  # the server closes it
                await close_writer(writer)
                await assert_serves(server)
                async with client.mailbox() as box:
                    client.send("ping", (box.pid, "still here"))
                    assert (await box.receive(timeout=WAIT))[1] == (PONG, "still here")
                assert client.reconnects == 0
                await wait_for(lambda: server.statistics()["handshaking"] == 0)
            finally:
                await client.close()
        finally:
            await server.close()

    arun(body, allow_errors_from=QUIET)


def test_handshake_timeout_closes_silent_clients_and_frees_their_slot() -> None:
    async def body() -> None:
        # Timeouts count as failed authentications: not throttled here, this is about slots.
        server = await start_server(handshake_timeout=0.1, max_pending_handshakes=2, max_auth_failures=0)
        try:
            for _round in range(3):  # more timed-out handshakes than slots: none may leak
                socks = [await asyncio.open_connection(HOST, server.port) for _ in range(2)]
                for reader, _writer in socks:
                    await eof(reader)  # closed by the server after handshake_timeout
                for _reader, writer in socks:
                    await close_writer(writer)
                await wait_for(lambda: server.statistics()["handshaking"] == 0)
            await assert_serves(server)
        finally:
            await server.close()

    arun(body, allow_errors_from=QUIET)


def test_half_handshake_times_out() -> None:
    """A legacy hello, then nothing: {auth, failed} then a close after handshake_timeout."""

    async def body() -> None:
        server = await start_server(handshake_timeout=0.1, allow_legacy_auth=True)
        try:
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(frame((Atom("hello"), "localhost")))
            assert (await read_frame(reader))[0] == Atom("challenge")
            assert await read_frame(reader) == (Atom("auth"), Atom("failed"))
            await eof(reader)
            await close_writer(writer)
            await wait_for(lambda: server.statistics()["handshaking"] == 0)
        finally:
            await server.close()

    arun(body, allow_errors_from=QUIET)


def test_max_connections_enforced() -> None:
    async def body() -> None:
        server = await start_server(max_connections=2)
        try:
            c1 = await connect(server)
            c2 = await connect(server, reconnect=False)
            try:
                with pytest.raises(ConnectFailed):
                    await connect(server, reconnect=False)
                assert server.statistics()["connections_refused"] == 1
                await c2.close()
                await wait_for(lambda: server.statistics()["connections"] == 1)
                await assert_serves(server)
                async with c1.mailbox() as box:
                    c1.send("ping", (box.pid, 1))
                    assert (await box.receive(timeout=WAIT))[1] == (PONG, 1)
            finally:
                await c1.close()
                await c2.close()
        finally:
            await server.close()

    arun(body, allow_errors_from=QUIET)


def test_max_pending_handshakes_enforced() -> None:
    """A full pending table does not refuse the newest: the oldest idle connection goes."""

    async def body() -> None:
        server = await start_server(max_pending_handshakes=2)
        try:
            socks = [await asyncio.open_connection(HOST, server.port) for _ in range(2)]
            await wait_for(lambda: server.statistics()["handshaking"] == 2)
            async with await connect(server, reconnect=False) as client:
                assert client.state == "connected"
            await eof(socks[0][0])  # the oldest idle one was closed to make room
            assert server.statistics()["connections_evicted"] == 1
            for _reader, writer in socks:
                await close_writer(writer)
            await wait_for(lambda: server.statistics()["handshaking"] == 0)
            await assert_serves(server)
        finally:
            await server.close()

    arun(body, allow_errors_from=QUIET)


def test_wrong_secret_raises_authentication_error() -> None:
    async def body() -> None:
        server = await start_server()
        try:
            with pytest.raises(AuthenticationError):
                await connect(server, secret=b"wrong")
            await wait_for(lambda: server.statistics()["handshaking"] == 0)
            assert server.statistics()["connections"] == 0
            await assert_serves(server)
        finally:
            await server.close()

    arun(body, allow_errors_from=QUIET)


def test_legacy_client_refused_by_default() -> None:
    async def body() -> None:
        server = await start_server()
        try:
            reader, writer, result = await legacy_handshake(server.port)
            assert result == (Atom("auth"), Atom("failed"))
            await eof(reader)
            await close_writer(writer)
            await assert_serves(server)
        finally:
            await server.close()

    arun(body, allow_errors_from=QUIET)


def test_legacy_client_accepted_when_allowed() -> None:
    async def body() -> None:
        server = await start_server(allow_legacy_auth=True)
        try:
            reader, writer, result = await legacy_handshake(server.port)
            assert result == (Atom("auth"), Atom("success"))
            writer.write(frame((M, Atom("ping"), (T, ((PR, 1), Atom("hello"))))))
            reply = await read_frame(reader)
            # ping answers {self(), {pong, hello}} to our process 1; ping is its export 1.
            assert reply == (M, 1, (T, ((PR, 1), (T, (PONG, Atom("hello"))))))
            # The wrong secret is refused even with legacy auth allowed.
            r2, w2, result2 = await legacy_handshake(server.port, secret=b"wrong")
            assert result2 == (Atom("auth"), Atom("failed"))
            await close_writer(w2)

            # A map cannot reach a legacy peer: a local error before anything is written.
            proxy = next(iter(server.node.proxies()))
            with pytest.raises(LocalProtocolError):
                server.send(proxy, {"a": 1})
            with server.mailbox() as box:
                with pytest.raises(LocalProtocolError):
                    box.send(proxy, (1, {Atom("k"): 2}))
            # ...and the connection stays up: the next message arrives, alone.
            server.send(proxy, Atom("after"))
            assert await read_frame(reader) == (M, 1, Atom("after"))
            writer.write(frame((M, Atom("ping"), (T, ((PR, 1), 2)))))
            assert await read_frame(reader) == (M, 1, (T, ((PR, 1), (T, (PONG, 2)))))
            await close_writer(writer)
        finally:
            await server.close()

    arun(body, allow_errors_from=QUIET)


def test_maps_to_a_peer_without_maps_feature_raise_before_writing() -> None:
    async def body() -> None:
        async with pair(features=["whereis", "link", "session", "heartbeat", "error"]) as (_server, client):
            ping = await client.whereis("ping")
            assert "maps" not in client.features
            async with client.mailbox() as box:
                sent_before = client.statistics()["bytes_out"]
                with pytest.raises(LocalProtocolError):
                    client.send(ping, (box.pid, {1: 2}))
                with pytest.raises(LocalProtocolError):
                    client.send("ping", (box.pid, {1: 2}))
                await asyncio.sleep(0)
                assert client.statistics()["bytes_out"] == sent_before
                client.send(ping, (box.pid, "ok"))
                assert await box.receive(timeout=WAIT) == (ping, (PONG, "ok"))
                client.send(ping, (box.pid, [1, 2.5]))
                assert await box.receive(timeout=WAIT) == (ping, (PONG, [1, 2.5]))

    arun(body)


def test_heartbeats_keep_an_idle_connection_up() -> None:
    async def body() -> None:
        async with pair({"heartbeat": 0.2}, heartbeat=0.2) as (server, client):
            await asyncio.sleep(1.0)  # five intervals of idleness: heartbeats flow
            assert client.state == "connected" and client.reconnects == 0
            assert server.statistics()["connections"] == 1
            async with client.mailbox() as box:
                client.send("ping", (box.pid, 1))
                assert (await box.receive(timeout=WAIT))[1] == (PONG, 1)

    arun(body)


def test_silent_client_is_dropped_by_the_server() -> None:
    async def body() -> None:
        server = await start_server(heartbeat=0.05)
        try:
            async with Relay(server.port) as relay:
                # A client that speaks the handshake, then neither sends nor reads anything.
                reader, writer = await asyncio.open_connection(HOST, relay.port)
                silent = Connection(
                    "client", SECRET, node_name="silent@host", new_proxy_pid=lambda i: None, heartbeat_interval=50
                )
                silent.start()
                writer.write(silent.data_to_send())
                while silent.state != "established":
                    silent.receive_data(await reader.read(65536))
                    silent.events()
                    writer.write(silent.data_to_send())
                await wait_for(lambda: server.statistics()["connections"] == 1)
                relay.freeze()
                await wait_for(lambda: server.statistics()["connections"] == 0)
                writer.transport.abort()
            await assert_serves(server)
        finally:
            await server.close()

    arun(body, allow_errors_from=QUIET)


def test_silent_server_is_dropped_by_the_client() -> None:
    async def body() -> None:
        server = await start_server(heartbeat=0.05)
        try:
            relay = await Relay(server.port).__aenter__()
            client = await connect(relay.port, heartbeat=0.05)
            states: list[str] = []
            client.add_state_listener(states.append)
            try:
                relay.freeze()  # the server's heartbeats no longer arrive
                await wait_for(lambda: states[:1] == ["reconnecting"])
                await wait_for(lambda: client.state == "connected")
                async with client.mailbox() as box:
                    client.send("ping", (box.pid, 1))
                    assert (await box.receive(timeout=WAIT))[1] == (PONG, 1)
            finally:
                await client.close()
                await relay.__aexit__(None, None, None)
        finally:
            await server.close()

    arun(body, allow_errors_from=QUIET)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_receiving_process_runs_between_read_bursts(loop: str) -> None:
    """A burst of small messages does not all land in a mailbox before its process runs
    (uvloop reads many buffers in a row): a bounded mailbox keeps up."""

    async def body() -> None:
        server = await start_server(allowed=("ping", "sink"))
        counted: list[int] = []

        async def sink(proc) -> None:
            n = 0
            while True:
                msg = await proc.receive()
                if msg.__class__ is tuple:
                    counted.append(n)
                    proc.send(msg[1], n)
                    n = 0
                else:
                    n += 1

        server.spawn(sink, name="sink", max_mailbox=15_000)
        try:
            client = await connect(server)
            try:
                async with client.mailbox() as box:
                    total = 0
                    for _round in range(3):
                        for _ in range(25_000):
                            client.send("sink", 1)
                        total += 25_000
                        await client.drain()
                    client.send("sink", (Atom("done"), box.pid))
                    assert await box.receive(timeout=WAIT * 2) == total
            finally:
                await client.close()
        finally:
            await server.close()

    arun(body, loop=loop)
