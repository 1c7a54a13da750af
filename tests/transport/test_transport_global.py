"""``Client.register_global`` / ``unregister_global`` (docs/protocol.md 17) against a scripted
server on 127.0.0.1 that offers `global` the way an erlang_peer server does (the real one is
interop_tests/test_interop_global.py): the answers and the typed errors, the name ending with
the process (its DEAD), a request void when the connection is lost, the blocking facade, and
a pyfabric server that does not offer the feature."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from transport_helpers import HOST, SECRET, arun, close_writer, connect, served_in_thread, start_server, wait_for

import pyfabric
from pyfabric import Atom, FeatureNotSupported, GlobalNameError, GlobalNameInUse, NotConnected
from pyfabric.etf import decode, encode
from pyfabric.protocol._handshake import server_mac

A = Atom


def _plain(term: Any) -> bytes:
    return encode(term, minor_version=1)


class ScriptedGlobalServer:
    """Accepts one client at a time: the extended handshake offering `global` (no session),
    then ``register_global`` / ``unregister_global`` answered as 17.2 says: a name held by
    another id is ``in_use``, ``refused`` names are ``not_allowed``, a DEAD ends the names
    of that id. The name ``cut`` makes it close the connection instead of answering."""

    def __init__(self, refused: tuple[str, ...] = ("forbidden",)) -> None:
        self.refused = {n.encode() for n in refused}
        self.names: dict[bytes, int] = {}  # name -> the client's id of its process
        self.taken_by_others = {b"taken"}
        self.frames: list[Any] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> ScriptedGlobalServer:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        # the clients are closed first: each handler ends on its connection's EOF
        await asyncio.wait_for(asyncio.gather(*self._handlers), 5)
        await self._server.wait_closed()

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
            offer = {b"version": 1, b"features": [b"whereis", b"link", b"error", b"global"], b"node": b"srv@127.0.0.1",
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
                if tag == A("register_global"):
                    _, req, name, ident = term
                    if name == b"cut":
                        break
                    holder = self.names.get(name)
                    if name in self.refused:
                        result: Any = (A("error"), b"not_allowed")
                    elif name in self.taken_by_others or (holder is not None and holder != ident):
                        result = (A("error"), b"in_use")
                    else:
                        self.names[name] = ident
                        result = A("ok")
                    write(_plain((A("global_reply"), req, result)))
                elif tag == A("unregister_global"):
                    _, req, name = term
                    ok = self.names.pop(name, None) is not None
                    write(_plain((A("global_reply"), req, A("ok") if ok else (A("error"), b"not_registered"))))
                elif tag == A("DEAD"):
                    ident = term[1][1]
                    self.names = {n: i for n, i in self.names.items() if i != ident}
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            await close_writer(writer)


@contextlib.asynccontextmanager
async def scripted(**client_options: Any) -> AsyncIterator[tuple[ScriptedGlobalServer, pyfabric.Client]]:
    server = await ScriptedGlobalServer().start()
    client = await connect(server.port, **client_options)
    try:
        yield server, client
    finally:
        await client.close()
        await server.close()


async def idle(proc: Any) -> None:
    await proc.receive()


def test_register_conflicts_unregister_and_the_typed_errors() -> None:
    async def body() -> None:
        async with scripted() as (server, client):
            assert "global" in client.features
            proc = client.spawn(idle)
            other = client.spawn(idle)
            await client.register_global("py_echo", proc)
            await client.register_global(A("py_echo"), proc)  # again, same process: ok
            assert server.names == {b"py_echo": 1}
            with pytest.raises(GlobalNameInUse) as in_use:
                await client.register_global("py_echo", other)
            assert in_use.value.code == "in_use" and in_use.value.name == "py_echo"
            assert isinstance(in_use.value, GlobalNameError)
            with pytest.raises(GlobalNameInUse):
                await client.register_global("taken", proc)
            with pytest.raises(GlobalNameError) as refused:
                await client.register_global("forbidden", proc)
            assert refused.value.code == "not_allowed" and not isinstance(refused.value, GlobalNameInUse)
            await client.unregister_global("py_echo")
            with pytest.raises(GlobalNameError) as missing:
                await client.unregister_global("py_echo")
            assert missing.value.code == "not_registered"
            with pytest.raises(TypeError):
                await client.register_global("x", "not a pid")  # type: ignore[arg-type]

    arun(body)


def test_the_name_ends_with_the_process() -> None:
    async def body() -> None:
        async with scripted() as (server, client):
            proc = client.spawn(idle)
            await client.register_global("short_lived", proc)
            assert server.names == {b"short_lived": 1}
            client.send(proc, "bye")  # idle returns: the process ends, its DEAD goes out
            await wait_for(lambda: server.names == {}, what="the name gone with the process")
            assert (A("DEAD"), (A("pr"), 1), A("normal")) in server.frames
            box = client.mailbox()  # a mailbox is a process too: closing it ends the name
            await client.register_global("a_box", box.pid)
            assert server.names == {b"a_box": 2}
            box.close()
            await wait_for(lambda: server.names == {}, what="the name gone with the mailbox")

    arun(body)


def test_a_request_pending_when_the_connection_is_lost_raises_not_connected() -> None:
    async def body() -> None:
        async with scripted(reconnect=False) as (_server, client):
            proc = client.spawn(idle)
            with pytest.raises(NotConnected):
                await client.register_global("cut", proc)
            with pytest.raises(NotConnected):
                await client.register_global("later", proc)  # closed now

    arun(body)


def test_a_pyfabric_server_does_not_offer_global() -> None:
    async def body() -> None:
        server = await start_server()
        client = await connect(server)
        try:
            assert "global" not in client.features
            proc = client.spawn(idle)
            with pytest.raises(FeatureNotSupported) as info:
                await client.register_global("py_echo", proc)
            assert info.value.feature == "global"
            with pytest.raises(FeatureNotSupported):
                await client.unregister_global("py_echo")
        finally:
            await client.close()
            await server.close()

    arun(body)


def test_blocking_register_global() -> None:
    async def start() -> ScriptedGlobalServer:
        return await ScriptedGlobalServer().start()

    with served_in_thread(start) as thread_server, pyfabric.connect(HOST, thread_server.port, SECRET) as client:
        box = client.mailbox()
        client.register_global("blocking_box", box.pid)
        with pytest.raises(GlobalNameInUse):
            client.register_global("taken", box.pid)
        client.unregister_global("blocking_box")
        with pytest.raises(GlobalNameError):
            client.unregister_global("blocking_box")
