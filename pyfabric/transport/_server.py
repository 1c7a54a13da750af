"""The asyncio server: many fabric clients at once, each with its own id space.

:func:`~._serve.serve` starts listening and returns a :class:`Server`. Every accepted connection
gets its own :class:`~._peer.PeerLink` (its own protocol state and id tables) bound to
the server's runtime node, so local processes registered there and allowed by name are
reachable from every client. A bad client only ever affects its own connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..etf import Atom, Pid
from ..protocol import (
    AuthFailed,
    ConnectionClosed,
    HandshakeComplete,
    NodeNameInUse,
)
from ..runtime import Node
from ._admission import (
    DEFAULT_MAX_PENDING_PER_ADDRESS,
    PendingTable,
)
from ._kept import KeptSessions
from ._local import LocalProcesses
from ._options import (
    PeerOptions,
)
from ._peer import PeerLink
from ._router import (
    DEFAULT_ROUTE_GRACE,
    DEFAULT_ROUTE_HEARTBEAT,
    Router,
    RoutingPolicy,
)
from ._server_conn import ServerConnection
from ._stream import DEFAULT_MAX_WRITE_BUFFER, FrameStream
from ._throttle import (
    AuthThrottle,
    address_key,
)

__all__ = ["Server", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_KEPT_SESSIONS"]

_log = logging.getLogger("pyfabric.server")

DEFAULT_MAX_CONNECTIONS = 1024
"""Concurrent client connections (file descriptors are finite). When full, a new connection
takes the place of the oldest one still in its handshake, if any; else it is closed."""
DEFAULT_MAX_KEPT_SESSIONS = 1024
"""Sessions of disconnected clients kept for a resume; beyond it the oldest one expires
(its proxies end with ``noconnection``)."""


class _Accepted:
    """Book-keeping for one accepted connection (until it closes)."""

    __slots__ = ("link", "stream", "timer", "handshaking", "address", "key", "evicted")

    def __init__(self, link: PeerLink, stream: FrameStream, address: str | None) -> None:
        self.link = link
        self.stream = stream
        self.address = address
        self.key = address_key(address) if address is not None else None
        self.evicted = False  # closed to make room: not the client's failure
        self.timer: asyncio.TimerHandle | None = None
        self.handshaking = True  # in Server._pending until it ends


class Server(LocalProcesses):
    """A running fabric server; create it with :func:`serve`.

    Use it as an async context manager, or call :meth:`close`. Local processes on
    :attr:`node` registered under a name listed in ``allowed`` can be reached by clients
    (by name, ``{Name, Node}`` or ``whereis``); pids shipped to clients work everywhere.
    """

    def __init__(
        self,
        options: PeerOptions,
        *,
        node: Node,
        owns_node: bool,
        handshake_timeout: float,
        session_timeout: float,
        max_connections: int,
        max_pending_handshakes: int,
        throttle: AuthThrottle | None = None,
        max_kept_sessions: int = DEFAULT_MAX_KEPT_SESSIONS,
        max_pending_per_address: int = DEFAULT_MAX_PENDING_PER_ADDRESS,
        max_write_buffer: int = DEFAULT_MAX_WRITE_BUFFER,
        routing: RoutingPolicy = False,
        route_grace: float = DEFAULT_ROUTE_GRACE,
        route_heartbeat: float = DEFAULT_ROUTE_HEARTBEAT,
    ) -> None:
        if max_connections < 0:
            raise ValueError("max_connections must not be negative")
        self.options = options
        self._throttle = throttle if throttle is not None else AuthThrottle()
        self._node = node
        self._owns_node = owns_node
        self._handshake_timeout = handshake_timeout
        self._max_connections = max_connections
        self._max_write_buffer = max_write_buffer
        self._server: asyncio.base_events.Server | None = None
        self._accepted: dict[FrameStream, _Accepted] = {}
        self._pending: PendingTable[_Accepted] = PendingTable(
            max_pending_handshakes,
            max_pending_per_address,
            heard=lambda e: e.stream.has_spoken(),
            evict=self._evict,
            label=lambda e: e.link.label,
        )
        self._kept = KeptSessions(session_timeout, max_kept_sessions)
        self._closing = False
        self.connections_total = 0
        self.connections_refused = 0
        self.connections_throttled = 0
        self.auth_failures = 0
        self.handshake_timeouts = 0
        self._router = None if routing is False else Router(
            node, routing, grace=route_grace, heartbeat=route_heartbeat, end_session=self._kept.end_link,
            links=lambda: {e.link for e in self._accepted.values()} | set(self._kept.links.values()),
        )  # fmt: skip
        self._kept.on_ended = self._router.session_ended if self._router is not None else None
        node.add_node_sender(self._send_to_node)

    def _send_to_node(self, name: Atom, node: Atom, msg: Any) -> bool:
        """A local process sends to ``(name, node)``: ``node`` is a client's node name (a
        routing server's table, else the node an established client announced)."""
        link = self._router.holder(node) if self._router is not None else None
        if link is None:
            link = next((e.link for e in self._accepted.values() if e.link.connected and e.link.established is not None
                         and e.link.established.peer_node == node), None)  # fmt: skip
        if link is None:
            return False
        link.send(name, msg)  # an atom Dest: the client's own name policy applies (16.3)
        return True

    # -- accepting -----------------------------------------------------------------------------

    def _protocol_factory(self) -> FrameStream:
        link = PeerLink(self._node, self.options, role="server", label="client ?")
        stream = FrameStream(
            link, heartbeat=self.options.heartbeat_ms / 1000, push_back=True, max_write_buffer=self._max_write_buffer
        )
        original_made = stream.connection_made

        def connection_made(transport: asyncio.BaseTransport) -> None:
            original_made(transport)
            self._accept(stream)

        stream.connection_made = connection_made  # type: ignore[method-assign]
        return stream

    def _accept(self, stream: FrameStream) -> None:
        peer = stream.peername
        label = f"client {peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else f"client {peer}"
        link = stream.link
        link.label = label
        address = peer[0] if isinstance(peer, tuple) and peer and isinstance(peer[0], str) else None
        if address is not None and not self._closing:
            left, first = self._throttle.blocked(address)
            if left > 0:
                self.connections_refused += 1
                self.connections_throttled += 1
                (_log.warning if first else _log.debug)(
                    "%s refused: too many failed authentications from %s (blocked for %.0f s more)", label, address, left
                )
                stream.abort()
                return
        if self._closing:
            self.connections_refused += 1
            _log.info("%s refused: server closing", label)
            stream.abort()
            return
        entry = _Accepted(link, stream, address)
        self._pending.make_room(entry.key, address, self._accepted.__len__, self._max_connections)
        if len(self._accepted) >= self._max_connections:
            self.connections_refused += 1
            _log.warning("%s refused: %d connections, all authenticated (max_connections)", label, len(self._accepted))
            stream.abort()
            return
        self.connections_total += 1
        self._accepted[stream] = entry
        self._pending.add(entry, entry.key)
        link.on_established = lambda lk, ev: self._established(entry, lk, ev)
        link.on_auth_failed = lambda lk, ev: self._auth_failed(entry, ev)
        link.on_closed = lambda lk, ev: self._closed(entry, lk, ev)
        link.new_connection(find_session=self._kept.find, route=self._router.hooks if self._router else None)
        entry.timer = asyncio.get_running_loop().call_later(self._handshake_timeout, self._handshake_timeout_fired, entry)
        stream.closed.add_done_callback(lambda _f: self._stream_gone(entry))

    def _evict(self, victim: _Accepted) -> None:
        """Close a pending connection to make room (the pending table chose it)."""
        victim.evicted = True
        self._handshake_done(victim)
        self._accepted.pop(victim.stream, None)  # its slot is free now, not when its close completes
        victim.stream.abort()

    def _handshake_done(self, entry: _Accepted) -> None:
        if entry.handshaking:
            entry.handshaking = False
            self._pending.remove(entry)
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None

    def _handshake_timeout_fired(self, entry: _Accepted) -> None:
        entry.timer = None
        if entry.link.established is None:
            _log.warning("%s: handshake not completed within %s s; closing", entry.link.label, self._handshake_timeout)
            self.handshake_timeouts += 1
            entry.link.handshake_timed_out()
            entry.stream.close()

    def _auth_failed(self, entry: _Accepted, ev: AuthFailed) -> None:
        if entry.evicted or isinstance(ev.error, NodeNameInUse):
            return  # closed to make room, or a node name in use: says nothing about the secret
        # Wrong secrets and handshakes that time out alike (a host holding connections
        # idle is as hostile as one guessing).
        self.auth_failures += 1
        if entry.address is not None and self._throttle.failed(entry.address):
            throttle = self._throttle
            _log.warning(
                "%s: %d failed authentications from %s within %s s: refusing its new connections for %s s",
                entry.link.label,
                throttle.max_failures,
                entry.address,
                throttle.window,
                throttle.block_time,
            )

    def _established(self, entry: _Accepted, link: PeerLink, ev: HandshakeComplete) -> PeerLink:
        self._handshake_done(entry)
        owner = link
        if ev.resumed and ev.session_id in self._kept.links:
            # The client resumed its session: the session's link takes over this stream.
            owner = self._kept.resumed(ev.session_id)
            owner.adopt(link, ev)
            owner.on_closed = lambda lk, e: self._closed(entry, lk, e)
            entry.link = owner
            entry.stream.attach(owner)
        elif ev.session_id is not None:
            self._kept.links[ev.session_id] = link
        if ev.resume_refused == "not_resumable" and ev.refused_session_id is not None:
            # The session asked for cannot be resumed losslessly: it ends now (11.6).
            self._kept.end(ev.refused_session_id, "not_resumable")
        owner.on_session_ended = lambda lk, sid: self._kept.end(sid, None)
        if self._router is not None:
            self._router.established(owner, ev)
        entry.stream.start_heartbeat(self.options.heartbeat_ms / 1000, ev.peer_heartbeat / 1000)
        return owner

    def _closed(self, entry: _Accepted, link: PeerLink, ev: ConnectionClosed) -> None:
        if link.established is None:
            return  # handshake never completed: nothing to keep
        session_id = link.session.id if link.session is not None else None
        kept = session_id is not None and "session" in link.established.features and not self._closing
        if self._router is not None and kept:
            self._router.lost(link)
        elif self._router is not None:
            self._router.session_ended(link)
        if kept and session_id is not None:
            self._kept.keep(session_id)  # for a resume; it ends for good after session_timeout
        elif session_id is not None:
            self._kept.links.pop(session_id, None)
            link.expire("closed" if self._closing else "session_expired")

    def _stream_gone(self, entry: _Accepted) -> None:
        if self._accepted.pop(entry.stream, None) is None:
            return
        self._handshake_done(entry)

    # -- public API -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the server listens on (useful with ``port=0``)."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def sockets(self) -> list[Any]:
        """The listening sockets (empty once closed)."""
        return list(self._server.sockets) if self._server is not None else []

    def send(self, dest: Pid | Atom | str | tuple[Atom | str, Atom | str], msg: Any) -> None:
        """Send to a local process, a proxy of a client's process, or ``(name, node)``: a
        name on this server's node, or a name a client node allows (the client with that
        node name; see :meth:`Node.send`)."""
        self._node.send(dest, msg)

    def connections(self) -> list[ServerConnection]:
        """The client connections open now (handshaking or established), oldest first."""
        return [ServerConnection(entry.link, entry.stream) for entry in self._accepted.values()]

    @property
    def max_connections(self) -> int:
        """Concurrent client connections accepted at most. It may be changed while the
        server runs: lowering it refuses new connections and never closes open ones."""
        return self._max_connections

    @max_connections.setter
    def max_connections(self, value: int) -> None:
        if type(value) is not int or value < 0:
            raise ValueError(f"max_connections must be a non-negative int, got {value!r}")
        self._max_connections = value

    def statistics(self) -> dict[str, Any]:
        """Counters: connections (open, handshaking, total, refused, refused because their
        address is blocked after failed authentications), failed authentications,
        addresses tracked by the throttle, sessions kept, messages from and to the clients
        connected now (``messages_in`` / ``messages_out``: the sums of their
        :meth:`ServerConnection.statistics`)."""
        links = [entry.link for entry in self._accepted.values()]
        return {
            "connections": len(self._accepted),
            "handshaking": len(self._pending),
            "connections_evicted": self._pending.evicted,
            "handshake_timeouts": self.handshake_timeouts,
            "connections_total": self.connections_total,
            "connections_refused": self.connections_refused,
            "connections_throttled": self.connections_throttled,
            "auth_failures": self.auth_failures,
            "throttled_addresses": len(self._throttle),
            "sessions": len(self._kept.links),
            "sessions_waiting_resume": len(self._kept.expiry),
            "messages_in": sum(link.messages_in for link in links),
            "messages_out": sum(link.messages_out for link in links),
        }

    async def serve_forever(self) -> None:
        """Serve until cancelled (or :meth:`close`)."""
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening, close every client connection, end their proxies with
        ``noconnection`` (and close the node if this server created it)."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        acking = [entry.link.wait_acknowledged(2.0) for entry in self._accepted.values() if entry.link.acks]
        if acking:
            # A clean shutdown reports nothing: give the clients' acks a moment (11.7).
            await asyncio.gather(*acking)
        for entry in list(self._accepted.values()):
            entry.link.close()
            entry.stream.close()
        waits = [entry.stream.closed for entry in list(self._accepted.values())]
        if waits:
            _done, pending = await asyncio.wait(waits, timeout=2)
            for entry in list(self._accepted.values()):
                if entry.stream.closed in pending:
                    entry.stream.abort()
        self._kept.close()
        if self._router is not None:
            self._router.close()
        self._node.remove_node_sender(self._send_to_node)
        if self._server is not None:
            await self._server.wait_closed()
        if self._owns_node:
            await self._node.close()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        port = self.port if self._server is not None and self._server.sockets else None
        return f"<Server port={port} connections={len(self._accepted)}>"
