"""Through a live server: the name policy for every way of addressing a process (system
names never reachable unless forced), and the per-connection table limits."""

from __future__ import annotations

import asyncio

import pytest
from transport_helpers import HOST, SECRET, WAIT, arun, close_writer, connect, read_frame, start_server, wait_for

from pyfabric import ANY, Atom, LocalProtocolError, ReceiveTimeout
from pyfabric.etf import Pid, encode
from pyfabric.protocol import Connection

SYSTEM = ["rex", "init", "code_server", "net_kernel", "global_name_server", "erl_prim_loader", "fabric_server", "pyfabric_admin"]


async def quiet(box, timeout: float = 0.2) -> bool:
    """True if nothing arrives within ``timeout`` (a negative check: it can only pass late)."""
    try:
        msg = await box.receive(timeout=timeout)
    except ReceiveTimeout:
        return True
    pytest.fail(f"a refused name received {msg!r}")


def test_system_names_are_unreachable_even_if_listed_unless_forced() -> None:
    async def body() -> None:
        server = await start_server(allowed=["ping", *SYSTEM], force_allowed=["init"])
        try:
            boxes = {name: server.mailbox(name) for name in SYSTEM}
            async with await connect(server) as client:
                node = client.peer_node
                for name in SYSTEM:
                    client.send(name, ("by_name", name))
                    client.send((name, node), ("by_name_node", name))
                    found = await client.whereis(name)
                    assert (found is None) == (name != "init"), name
                # Forced: reachable in every way.
                assert await boxes["init"].receive(timeout=WAIT) == ("by_name", "init")
                assert await boxes["init"].receive(timeout=WAIT) == ("by_name_node", "init")
                for name in SYSTEM:
                    if name != "init":
                        assert await quiet(boxes[name], 0.05)
                # The connection is still fine.
                box = client.mailbox()
                client.send("ping", (box.pid, 1))
                assert (await box.receive(match=(ANY, ANY), timeout=WAIT))[1] == (Atom("pong"), 1)
        finally:
            await server.close()

    arun(body)


class RawExtendedClient:
    """An authenticated raw connection: the core does the handshake, then we write anything."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection) -> None:
        self.reader, self.writer, self.conn = reader, writer, conn

    @classmethod
    async def open(cls, port: int) -> RawExtendedClient:
        reader, writer = await asyncio.open_connection(HOST, port)
        ids = iter(range(1, 10**9))
        conn = Connection("client", SECRET, node_name="raw@host", new_proxy_pid=lambda _i: Pid(Atom("raw@host"), next(ids), 0, 0))
        conn.start()
        writer.write(conn.data_to_send())
        while conn.state != "established":
            conn.receive_data(await reader.read(65536))
            conn.events()
            writer.write(conn.data_to_send())
        return cls(reader, writer, conn)

    def frame(self, term: object) -> None:
        body = encode(term, minor_version=1)
        self.writer.write(len(body).to_bytes(4, "big") + body)

    async def close(self) -> None:
        await close_writer(self.writer)


def test_max_proxies_drops_frames_with_limit_and_the_server_stays_bounded() -> None:
    async def body() -> None:
        server = await start_server(allowed=["ping", "sink"], max_proxies=50)
        try:
            sink = server.mailbox("sink")
            raw = await RawExtendedClient.open(server.port)
            for ident in range(1, 81):
                raw.frame((Atom("m"), Atom("sink"), (Atom("pr"), ident)))
            # 50 delivered, then error frames with code limit (and, past max_errors, a close).
            got = [await sink.receive(timeout=WAIT) for _ in range(50)]
            assert len(set(got)) == 50
            codes = []
            try:
                while True:
                    term = await asyncio.wait_for(read_frame(raw.reader), WAIT)
                    if term[0] == Atom("error"):
                        codes.append(term[1])
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            assert codes[0] == b"limit" and codes[-1] == b"too_many_errors"
            await raw.close()
            assert await quiet(sink, 0.05)
            assert len(server.node.processes()) <= 2 + 50 + 5  # ping, sink, proxies (until DEAD/expiry)
            async with await connect(server) as client:
                box = client.mailbox()
                client.send("ping", (box.pid, 2))
                assert (await box.receive(match=(ANY, ANY), timeout=WAIT))[1] == (Atom("pong"), 2)
        finally:
            await server.close()

    arun(body)


def test_max_exports_raises_on_send_and_frees_on_exit() -> None:
    async def body() -> None:
        server = await start_server(allowed=["ping", "sink"])
        try:
            sink = server.mailbox("sink")
            async with await connect(server, max_exports=3) as client:
                boxes = [client.mailbox() for _ in range(4)]
                client.send("sink", [b.pid for b in boxes[:3]])
                with pytest.raises(LocalProtocolError) as info:
                    client.send("sink", boxes[3].pid)
                assert info.value.code == "limit"
                assert client.statistics()["exports"] == 3
                boxes[0].close()  # its export is released (DEAD sent)
                await wait_for(lambda: client.statistics()["exports"] == 2)
                client.send("sink", boxes[3].pid)
                first = await sink.receive(timeout=WAIT)
                assert len(first) == 3
                assert await sink.receive(timeout=WAIT) not in first
        finally:
            await server.close()

    arun(body)
