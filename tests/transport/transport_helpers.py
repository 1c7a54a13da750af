"""Shared helpers for the transport tests (imported by name: ``from transport_helpers import ...``).

``arun(body)`` runs ``body()`` in a fresh event loop (asyncio's or uvloop's) under a generous
timeout, and fails the test if asyncio logged an error (a task destroyed while pending, an
exception never retrieved...). ``pair()`` is a server with an allowed ``ping`` process and a
client connected to it, both on 127.0.0.1 port 0, both closed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import hashlib
import logging
import socket
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar

import pytest

from pyfabric import ANY, Atom, Client, Server, aconnect, decode, encode, serve

SECRET = b"transport-secret"
HOST = "127.0.0.1"
HANDSHAKE_TIMEOUT = 5.0
"""Seconds a test waits for a message before it fails (generous: no timing assertions)."""
WAIT = 5.0

NORMAL = Atom("normal")
KILL = Atom("kill")
KILLED = Atom("killed")
NOPROC = Atom("noproc")
NOCONNECTION = Atom("noconnection")
EXIT = Atom("EXIT")
DOWN = Atom("DOWN")
PROCESS = Atom("process")
PONG = Atom("pong")
PING = Atom("ping")

LOOPS = ["asyncio", "uvloop"]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def arun(
    body: Callable[[], Awaitable[Any]], *, loop: str = "asyncio", timeout: float = 20.0, allow_errors_from: tuple[str, ...] = ()
) -> Any:
    """``asyncio.run(body())`` with a timeout; fails on asyncio/pyfabric error logs (except
    from the loggers named in ``allow_errors_from``)."""
    handler = _Collect()
    watched = [logging.getLogger(name) for name in ("asyncio", "pyfabric")]
    for logger in watched:
        logger.addHandler(handler)

    async def main() -> Any:
        async with asyncio.timeout(timeout):
            return await body()

    try:
        if loop == "uvloop":
            uvloop = pytest.importorskip("uvloop")
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                result = runner.run(main())
        else:
            result = asyncio.run(main())
        gc.collect()
    finally:
        for logger in watched:
            logger.removeHandler(handler)
    errors = [r.getMessage() for r in handler.records if r.name not in allow_errors_from]
    assert not errors, errors
    return result


async def ping(proc: Any) -> None:
    """The seed example's server process: ``{From, M}`` -> ``From ! {self(), {pong, M}}``."""
    while True:
        sender, msg = await proc.receive((ANY, ANY))
        proc.send(sender, (proc.pid, (PONG, msg)))


async def start_server(*, allowed: Any = ("ping",), register_ping: bool = True, **options: Any) -> Server:
    options.setdefault("handshake_timeout", HANDSHAKE_TIMEOUT)
    server = await serve(HOST, 0, SECRET, allowed=allowed, **options)
    if register_ping:
        server.spawn(ping, name="ping")
    return server


async def restart_serve(port: int, secret: bytes, **options: Any) -> Server:
    """``serve`` on the port of a server that was just closed. A client reconnecting in a loop
    can, rarely, connect to itself on that port (TCP simultaneous open on loopback when its
    ephemeral source port is the target port) and hold it for a moment: try again then."""
    for _ in range(50):
        try:
            return await serve("127.0.0.1", port, secret, **options)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            await asyncio.sleep(0.1)
    return await serve("127.0.0.1", port, secret, **options)


async def connect(server_or_port: Server | int, **options: Any) -> Client:
    port = server_or_port if isinstance(server_or_port, int) else server_or_port.port
    options.setdefault("backoff_initial", 0.02)
    options.setdefault("backoff_max", 0.2)
    return await aconnect(HOST, port, options.pop("secret", SECRET), **options)


@contextlib.asynccontextmanager
async def served(**options: Any) -> AsyncIterator[Server]:
    """``start_server(**options)``, closed afterwards."""
    server = await start_server(**options)
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def pair(server_options: dict[str, Any] | None = None, **client_options: Any) -> AsyncIterator[tuple[Server, Client]]:
    """A server (``ping`` registered and allowed) and a client connected to it."""
    server = await start_server(**(server_options or {}))
    try:
        client = await connect(server, **client_options)
        try:
            yield server, client
        finally:
            await client.close()
    finally:
        await server.close()


class _Closable(Protocol):
    async def close(self) -> None: ...


S = TypeVar("S", bound=_Closable)


@contextlib.contextmanager
def served_in_thread(start: Callable[[], Awaitable[S]]) -> Iterator[S]:
    """The server ``start()`` makes, running on an event loop of its own in a daemon thread
    (for tests of the blocking facade, whose calls block the test's thread); closed, and its
    loop stopped, after."""
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> None:
    """Poll ``predicate`` until true (fails after ``timeout`` s; no timing assertions)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def server_connections(server: Server) -> list[Any]:
    """The server's open client connections (``ServerConnection``: ``abort()`` one to cut it)."""
    return server.connections()


class Relay:
    """A TCP relay on 127.0.0.1 in front of a server port: the network of a test.

    Every connection made to ``relay.port`` is forwarded to the target port. ``freeze()``
    stops forwarding on the connections open now, in both directions, without closing
    anything: each side then hears nothing from the other (a silent peer, or a path
    that died without a FIN). Later connections are forwarded normally.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        self.freeze()
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        self._writers += [writer, up_writer]
        pumps = [asyncio.create_task(self._pump(reader, up_writer)), asyncio.create_task(self._pump(up_reader, writer))]
        self._pumps += pumps

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
            writer.close()  # EOF travels on
        except (ConnectionError, OSError):
            writer.transport.abort()

    def freeze(self) -> None:
        for task in self._pumps:
            task.cancel()


# -- raw sockets (legacy peers, hostile clients) ------------------------------------------------


def frame(term: Any) -> bytes:
    body = encode(term, minor_version=1)
    return struct.pack(">I", len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> Any:
    header = await reader.readexactly(4)
    (size,) = struct.unpack(">I", header)
    return decode(await reader.readexactly(size))


def legacy_response(challenge: str, secret: bytes = SECRET) -> str:
    return hashlib.md5(challenge.encode("latin-1") + secret).hexdigest()


async def legacy_handshake(port: int, secret: bytes = SECRET) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
    """Speak the original client's handshake; return the stream pair and the auth result."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(frame((Atom("hello"), "localhost")))
    tag, challenge = await read_frame(reader)
    assert tag == Atom("challenge"), tag
    writer.write(frame((Atom("response"), legacy_response(challenge, secret))))
    try:
        result = await read_frame(reader)
    except asyncio.IncompleteReadError:
        result = None
    return reader, writer, result


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def free_socket_kwargs() -> dict[str, Any]:
    return {"family": socket.AF_INET}
