"""The public view of one client connection of a :class:`~._server.Server`.

:meth:`Server.connections` lists them: for monitoring (who is connected, what was
agreed, TLS details), for a server that talks to a client's own registered processes
(:meth:`ServerConnection.whereis`, :meth:`ServerConnection.send`), and to cut one
connection (:meth:`ServerConnection.abort`), as an operator or a test does.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..etf import Atom, Pid
from ..protocol import Session
from ._errors import SendQueueFull

if TYPE_CHECKING:
    from ._peer import PeerLink
    from ._stream import FrameStream

__all__ = ["ServerConnection"]


class ServerConnection:
    """One accepted client connection: a handle that stays valid, and inert, after the
    connection closes; two handles of the same connection compare equal. Call its
    methods on the server's event loop."""

    __slots__ = ("_link", "_stream")

    def __init__(self, link: PeerLink, stream: FrameStream) -> None:
        self._link = link
        self._stream = stream

    @property
    def peername(self) -> Any:
        """The client's address, as the socket reports it (``(host, port)`` for TCP)."""
        return self._stream.peername

    @property
    def label(self) -> str:
        """The name logs use for this client (``"client host:port"``)."""
        return self._link.label

    @property
    def established(self) -> bool:
        """True once the handshake completed, while the connection is up."""
        return self._link.connected and self._link.writer == self._stream.write

    @property
    def mode(self) -> str | None:
        """``"extended"``, ``"legacy"``, or None before the handshake completed."""
        ev = self._link.established
        return ev.mode if ev is not None else None

    @property
    def features(self) -> frozenset[str]:
        """The features agreed with this client (empty for a legacy one)."""
        ev = self._link.established
        return ev.features if ev is not None else frozenset()

    @property
    def session(self) -> Session | None:
        """The client's session (its id tables), once the handshake completed."""
        return self._link.session

    @property
    def frames_dropped(self) -> int:
        """Frames of this client dropped by the error policy so far."""
        return self._link.frames_dropped

    def statistics(self) -> dict[str, Any]:
        """Counters of this client connection, as :meth:`Client.statistics` has them:
        ``bytes_in`` / ``bytes_out`` / ``socket_writes`` (this socket), ``messages_in`` (messages from the
        client delivered here, or routed on to another client) / ``messages_out`` (to the
        client, written or queued; both for its session, across resumes), ``proxies``,
        ``exports``, ``pending_sends``, ``frames_dropped``, ``unacknowledged`` (with
        ``acks``), ``dropped_overflow``."""
        link = self._link
        stream = self._stream
        session = link.session
        return {
            "mode": self.mode,
            "bytes_in": stream.bytes_in,
            "bytes_out": stream.bytes_out,
            "socket_writes": stream.writes,
            "messages_in": link.messages_in,
            "messages_out": link.messages_out,
            "proxies": len(session.proxies) if session else 0,
            "exports": len(session.exports) if session else 0,
            "pending_sends": link.pending_count(),
            "frames_dropped": link.frames_dropped,
            "unacknowledged": len(session.outbox) if session is not None and session.outbox is not None else 0,
            "dropped_overflow": link.dropped_overflow,
        }

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Transport information (``"peercert"``, ``"ssl_object"``, ``"socket"`` ...),
        as :meth:`asyncio.BaseTransport.get_extra_info` gives it."""
        transport = self._stream.transport
        return transport.get_extra_info(name, default) if transport is not None else default

    def send(self, dest: Pid | Atom | str | tuple[Any, Any], msg: Any) -> None:
        """Send ``msg`` to a process of this client: a proxy pid of it, or a name the
        client allows (``"name"``, ``Atom``, or ``(name, node)``)."""
        if isinstance(dest, str):
            dest = Atom(dest)
        self._link.send(dest, msg)

    async def send_confirmed(self, dest: Pid | Atom | str | tuple[Any, Any], msg: Any, *, timeout: float = 5.0) -> None:
        """Send ``msg`` and wait until the client has put it in the destination's mailbox
        (docs/protocol.md 11.8; see :meth:`Client.send_confirmed`): raises
        :class:`~pyfabric.transport.SendRefused` with its code,
        :class:`~pyfabric.transport.SendTimeout` after ``timeout`` s, or
        :class:`~pyfabric.protocol.FeatureNotSupported` without ``acks``."""
        await self._link.send_confirmed(dest, msg, timeout)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until no send to this client waits in the pending queue (for outbox room
        or credit, docs/protocol.md 12.6), at most ``timeout`` s; then
        :class:`~pyfabric.transport.SendQueueFull` (the sends stay queued)."""
        try:
            async with asyncio.timeout(timeout):
                await self._link.wait_idle()
        except TimeoutError:
            raise SendQueueFull(f"{self._link.pending_count()} sends still wait for {self.label} after {timeout} s") from None

    async def whereis(self, name: Atom | str, timeout: float | None = None) -> Pid | None:
        """The client's process registered as ``name`` (a proxy pid), or None if it has
        none or does not allow it; needs the ``whereis`` feature."""
        return await self._link.whereis(name, timeout)

    def close(self) -> None:
        """Close the connection in an orderly way (what is queued is written first)."""
        self._link.close()
        self._stream.close()

    def abort(self) -> None:
        """Cut the connection at once, as a network failure would: nothing more is
        written, and a client with a session may resume it."""
        self._stream.abort()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ServerConnection) and other._stream is self._stream

    def __hash__(self) -> int:
        return id(self._stream)

    def __repr__(self) -> str:
        return f"<ServerConnection {self.label} {self.mode or 'handshaking'}>"
