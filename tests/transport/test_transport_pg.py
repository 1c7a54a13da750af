"""``Client.join`` / ``leave`` / ``members`` (docs/protocol.md 18) against a scripted server
on 127.0.0.1 that offers `pg` the way a clustered erlang_peer server does (the real one is
interop_tests/test_interop_cluster_groups.py): the answers and the typed errors, members as
pids (our own process as itself, another as a proxy), membership ending with the process (its
DEAD), a request void when the connection is lost, the blocking facade, and a pyfabric server
that does not offer the feature."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from transport_helpers import HOST, SECRET, arun, close_writer, connect, served_in_thread, start_server, wait_for

import pyfabric
from pyfabric import Atom, FeatureNotSupported, GroupError, NotConnected, Pid
from pyfabric.etf import decode, encode
from pyfabric.protocol._handshake import server_mac

A = Atom
OTHER = 77  # the server's id of a member that is not this client's


def _plain(term: Any) -> bytes:
    return encode(term, minor_version=1)


class ScriptedGroupServer:
    """Accepts one client at a time: the extended handshake offering `pg` (no session), then
    ``pg_join`` / ``pg_leave`` / ``pg_members`` answered as 18.2 says, every group also
    holding a process of the server (``{pr, 77}``); ``refused`` groups are ``not_allowed``,
    a DEAD takes that id out of every group, the group ``cut`` makes it close the connection
    instead of answering."""

    def __init__(self, refused: tuple[bytes, ...] = (b"forbidden",)) -> None:
        self.refused = set(refused)
        self.groups: dict[bytes, set[int]] = {}  # group -> the client's ids in it
        self.frames: list[Any] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> ScriptedGroupServer:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(asyncio.gather(*self._handlers), 5)
        await self._server.wait_closed()

    def _answer(self, term: Any) -> Any:
        tag, group = term[0], term[2]
        if group in self.refused:
            return (A("error"), b"not_allowed")
        ids = self.groups.setdefault(group, set())
        if tag == A("pg_join"):
            ids.add(term[3])
            return A("ok")
        if tag == A("pg_leave"):
            if term[3] not in ids:
                return (A("error"), b"not_member")
            ids.discard(term[3])
            return A("ok")
        return (A("ok"), [(A("pl"), i) for i in sorted(ids)] + [(A("pr"), OTHER)])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)

        async def read() -> bytes:
            (size,) = struct.unpack(">I", await reader.readexactly(4))
            return await reader.readexactly(size)

        def write(raw: bytes) -> None:
            writer.write(struct.pack(">I", len(raw)) + raw)

        try:
            hello = await read()
            offer = {b"version": 1, b"features": [b"whereis", b"link", b"error", b"pg"], b"node": b"srv@127.0.0.1",
                     b"max_frame": 1 << 20, b"heartbeat": 0}  # fmt: skip
            challenge = _plain((A("challenge"), b"\x07" * 32, offer))
            write(challenge)
            response = await read()
            info_bin = _plain({b"resumed": A("false")})
            write(_plain((A("auth"), A("success"), server_mac(SECRET, hello, challenge, response, info_bin), info_bin)))
            while True:
                term = decode(await read())
                self.frames.append(term)
                tag = term[0]
                if tag in (A("pg_join"), A("pg_leave"), A("pg_members")):
                    if term[2] == b"cut":
                        break
                    write(_plain((A("pg_reply"), term[1], self._answer(term))))
                elif tag == A("DEAD"):
                    for ids in self.groups.values():
                        ids.discard(term[1][1])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            await close_writer(writer)


@contextlib.asynccontextmanager
async def scripted(**client_options: Any) -> AsyncIterator[tuple[ScriptedGroupServer, pyfabric.Client]]:
    server = await ScriptedGroupServer().start()
    client = await connect(server.port, **client_options)
    try:
        yield server, client
    finally:
        await client.close()
        await server.close()


async def idle(proc: Any) -> None:
    await proc.receive()


def test_join_members_leave_and_the_typed_errors() -> None:
    async def body() -> None:
        async with scripted() as (server, client):
            assert "pg" in client.features
            proc = client.spawn(idle)
            await client.join("workers", proc)
            await client.join(b"workers", proc)  # again: ok
            assert server.groups == {b"workers": {1}}
            members = await client.members("workers")
            assert len(members) == 2 and members[0] == proc
            assert isinstance(members[1], Pid) and members[1] != proc  # the server's member, a proxy
            client.send(members[1], "hello")  # a member can be sent to
            await wait_for(lambda: any(t[0] == A("m") for t in server.frames), what="the message to the member")
            with pytest.raises(GroupError) as refused:
                await client.join("forbidden", proc)
            assert refused.value.code == "not_allowed" and refused.value.group == b"forbidden"
            with pytest.raises(GroupError) as refused_members:
                await client.members("forbidden")
            assert refused_members.value.code == "not_allowed"
            await client.leave("workers", proc)
            with pytest.raises(GroupError) as missing:
                await client.leave("workers", proc)
            assert missing.value.code == "not_member"
            never = client.spawn(idle)  # never exported: not a member through us, nothing sent
            sent = len(server.frames)
            with pytest.raises(GroupError) as not_ours:
                await client.leave("workers", never)
            assert not_ours.value.code == "not_member" and len(server.frames) == sent
            with pytest.raises(TypeError):
                await client.join("x", "not a pid")  # type: ignore[arg-type]

    arun(body)


def test_membership_ends_with_the_process() -> None:
    async def body() -> None:
        async with scripted() as (server, client):
            proc = client.spawn(idle)
            await client.join("short", proc)
            assert server.groups == {b"short": {1}}
            client.send(proc, "bye")  # idle returns: the process ends, its DEAD goes out
            await wait_for(lambda: server.groups == {b"short": set()}, what="membership gone with the process")
            assert [p for p in await client.members("short") if p == proc] == []

    arun(body)


def test_a_request_pending_when_the_connection_is_lost_raises_not_connected() -> None:
    async def body() -> None:
        async with scripted(reconnect=False) as (_server, client):
            proc = client.spawn(idle)
            with pytest.raises(NotConnected):
                await client.join("cut", proc)
            with pytest.raises(NotConnected):
                await client.members("later")  # closed now

    arun(body)


def test_a_pyfabric_server_does_not_offer_pg() -> None:
    async def body() -> None:
        server = await start_server()
        client = await connect(server)
        try:
            assert "pg" not in client.features
            proc = client.spawn(idle)
            with pytest.raises(FeatureNotSupported) as info:
                await client.join("g", proc)
            assert info.value.feature == "pg"
            with pytest.raises(FeatureNotSupported):
                await client.members("g")
        finally:
            await client.close()
            await server.close()

    arun(body)


def test_blocking_join_members_leave() -> None:
    async def start() -> ScriptedGroupServer:
        return await ScriptedGroupServer().start()

    with served_in_thread(start) as thread_server, pyfabric.connect(HOST, thread_server.port, SECRET) as client:
        box = client.mailbox()
        client.join("blocking", box.pid)
        members = client.members("blocking")
        assert members[0] == box.pid and len(members) == 2
        client.leave("blocking", box.pid)
        with pytest.raises(GroupError):
            client.leave("blocking", box.pid)
