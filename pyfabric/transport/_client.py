"""The asyncio client: connect to a fabric server, keep the session alive, reconnect.

:func:`~._connect.aconnect` returns a connected :class:`Client`. The client owns (or shares) a
runtime :class:`~pyfabric.runtime.Node`, so it can hold mailboxes and spawn processes
whose pids travel to the server; remote pids arrive as proxies of that node.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from collections.abc import Callable, Sequence
from typing import Any

from ..etf import Atom, Pid
from ..protocol import ConnectionClosed, HandshakeComplete
from ..runtime import Node
from ._dial import dial, redial
from ._errors import ConnectFailed, NotConnected, SendQueueFull
from ._global_client import GlobalClientMixin, GlobalNames
from ._local import LocalProcesses
from ._options import PeerOptions
from ._peer import PeerLink
from ._pg_client import ClientGroups, PgClientMixin
from ._route_client import ClientNodes, RouteClientMixin, to_node
from ._stream import FrameStream

__all__ = ["Client", "ConnectionState"]

_log = logging.getLogger("pyfabric.client")

DRAIN_FLUSH_BYTES = 64 * 1024
"""``drain`` hands produced frames to the socket once this many bytes are waiting (smaller
bursts go out at the end of the loop iteration, in one write)."""
DRAIN_YIELD_EVERY = 64
"""``drain`` lets the event loop run once every this many calls even when nothing has to
wait, so a tight send loop does not starve reads and timers."""


class ConnectionState:
    """The states a :class:`Client` goes through (strings, for easy logging)."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class Client(LocalProcesses, RouteClientMixin, GlobalClientMixin, PgClientMixin):
    """A connection to one fabric server; create it with :func:`aconnect`.

    Use it as an async context manager, or call :meth:`close`. Everything here must be
    called on the client's event loop (the blocking facade, :func:`pyfabric.connect`,
    does that for other threads).

    Addressing with :meth:`send`: a :class:`~pyfabric.etf.Pid` (a local process or a proxy
    of a remote one), a remote registered name (``"ping"`` or ``Atom("ping")``), or a
    ``(name, node)`` pair, as Erlang's ``{Name, Node} ! Msg``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        options: PeerOptions,
        *,
        node: Node,
        owns_node: bool,
        ssl: _ssl.SSLContext | None,
        server_hostname: str | None,
        connect_timeout: float,
        handshake_timeout: float,
        reconnect: bool,
        backoff_initial: float,
        backoff_max: float,
        whereis_timeout: float,
        send_timeout: float,
        fallbacks: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.host = host
        """The server connected to now (or last), one of :attr:`addresses`."""
        self.port = port
        self.addresses: tuple[tuple[str, int], ...] = ((host, port), *fallbacks)
        """The server addresses, in the order they are tried (README "Failover")."""
        self._home = (host, port)  # the server of the last connection: tried first
        self.options = options
        self._node = node
        self._owns_node = owns_node
        self._ssl = ssl
        self._server_hostname = server_hostname
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._reconnect = reconnect
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._whereis_timeout = whereis_timeout
        self._send_timeout = send_timeout
        self._link = PeerLink(node, options, role="client", label=f"server {host}:{port}")
        self._link.on_closed = self._on_link_closed
        self._route_nodes = ClientNodes(node, self._link)
        self._global_names = GlobalNames(node, self._link)
        self._client_groups = ClientGroups(node, self._link)
        self._stream: FrameStream | None = None
        self._state = ConnectionState.CONNECTING
        self._listeners: list[Callable[[str], None]] = []
        self._connected = asyncio.Event()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closing = False
        self.reconnects = 0
        self.failovers = 0
        """Reconnections that went to another address than the one before."""
        self._drain_calls = 0
        node.add_node_sender(self._send_to_node)

    def _send_to_node(self, name: Atom, node: Atom, msg: Any) -> bool:
        # A local process sends to (name, node): the server's node, or with `route` any
        # other node (the server routes it to that client node, or drops it, 16.3).
        if self._state == ConnectionState.CLOSED or not (node == self.peer_node or "route" in self.features):
            return False
        self._link.send((name, node), msg)
        return True

    # -- connection life cycle ------------------------------------------------------------------

    async def _connect_once(self) -> HandshakeComplete:
        """One round of connection attempts (:func:`._dial.dial`: TCP connect + handshake):
        the current server first, then the other :attr:`addresses` in order. Raises
        ConnectFailed (every address failed) or AuthenticationError (at once)."""
        current = self._home
        failures: list[ConnectFailed | OSError] = []
        for host, port in (current, *(a for a in self.addresses if a != current)):
            self.host, self.port = host, port
            self._link.label = f"server {host}:{port}"
            try:
                ev = await dial(
                    self._link, host, port, ssl=self._ssl,
                    server_hostname=self._server_hostname or (host if self._ssl else None),
                    connect_timeout=self._connect_timeout, handshake_timeout=self._handshake_timeout,
                    heartbeat=self.options.heartbeat_ms / 1000, on_stream=self._set_stream,
                )  # fmt: skip
            except (ConnectFailed, OSError) as exc:
                failures.append(exc)
                if len(self.addresses) > 1:
                    _log.info("%s:%s: %s; trying the next address", host, port, exc)
                continue
            if (host, port) != current and self._state == ConnectionState.RECONNECTING:
                self.failovers += 1
                _log.warning("failed over from %s:%s to %s:%s (session %s)", *current, host, port,
                             "resumed" if ev.resumed else "new: proxies of the old server end with noconnection")  # fmt: skip
            self._home = (host, port)
            self._route_nodes.established(ev)
            return ev
        self.host, self.port = current  # until an attempt succeeds, the session's server
        self._link.label = f"server {current[0]}:{current[1]}"
        if len(failures) == 1:
            raise failures[0]
        raise ConnectFailed("no server could be reached: " + "; ".join(map(str, failures))) from failures[-1]

    def _set_stream(self, stream: FrameStream) -> None:
        self._stream = stream

    async def _start(self) -> None:
        await self._connect_once()
        self._set_state(ConnectionState.CONNECTED)

    def _on_link_closed(self, _link: PeerLink, ev: ConnectionClosed) -> None:
        if self._state != ConnectionState.CONNECTED:
            return  # a failed attempt: _connect_once reports it
        self._connected.clear()
        self._route_nodes.connection_lost()
        self._global_names.connection_lost()
        self._client_groups.connection_lost()
        if self._closing or not self._reconnect:
            self._finish_closed()
            return
        self._set_state(ConnectionState.RECONNECTING)
        self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        label = ", ".join(f"{host}:{port}" for host, port in self.addresses)
        ev = await redial(self._connect_once, label, self._backoff_initial, self._backoff_max, self._is_closing)
        if ev is None:
            self._finish_closed()
            return
        self.reconnects += 1
        _log.info("reconnected to %s:%s (session %s)", self.host, self.port, "resumed" if ev.resumed else "new")
        self._set_state(ConnectionState.CONNECTED)

    def _is_closing(self) -> bool:
        return self._closing

    def _finish_closed(self) -> None:
        self._link.expire("closed" if self._closing else "session_expired")
        self._route_nodes.all_down()
        self._set_state(ConnectionState.CLOSED)

    def _set_state(self, state: str) -> None:
        if state == self._state:
            return
        self._state = state
        if state == ConnectionState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:
                _log.exception("connection state listener %r failed", listener)

    # -- observing the connection ---------------------------------------------------------------

    @property
    def state(self) -> str:
        """One of :class:`ConnectionState`'s values."""
        return self._state

    def add_state_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(state)`` on every state change (on the event loop)."""
        self._listeners.append(callback)

    def remove_state_listener(self, callback: Callable[[str], None]) -> None:
        """Stop calling ``callback`` (``ValueError`` if it was not added)."""
        self._listeners.remove(callback)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected; ``TimeoutError`` after ``timeout`` s; ``NotConnected`` if closed."""
        if self._state == ConnectionState.CLOSED:
            raise NotConnected(f"the client of {self.host}:{self.port} is closed")
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    @property
    def mode(self) -> str | None:
        """``"extended"`` (one of our peers), ``"legacy"`` (an original peer), or None."""
        ev = self._link.established
        return ev.mode if ev is not None else None

    @property
    def features(self) -> frozenset[str]:
        """The extension features agreed with the server (empty for a legacy server)."""
        ev = self._link.established
        return ev.features if ev is not None else frozenset()

    @property
    def peer_node(self) -> Atom | None:
        """The server's node name, when it told us (extended peers)."""
        ev = self._link.established
        return ev.peer_node if ev is not None else None

    @property
    def writable(self) -> bool:
        """True while connected with the socket's buffer below its high-water mark: a
        send now goes out without waiting (else :meth:`drain` waits)."""
        stream = self._stream
        return self._state == ConnectionState.CONNECTED and (stream is None or stream.can_write)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Information about the current connection's transport (``"ssl_object"``,
        ``"peercert"``, ``"sockname"`` ...), as :meth:`asyncio.BaseTransport.get_extra_info`
        gives it; ``default`` while not connected."""
        stream = self._stream
        transport = stream.transport if stream is not None and self._link.connected else None
        return transport.get_extra_info(name, default) if transport is not None else default

    def drop_connection(self) -> None:
        """Cut the current connection at once, as a network failure would (nothing more
        is written); the client then reconnects as usual (resuming its session when the
        server still keeps it) unless it was created with ``reconnect=False``."""
        stream = self._stream
        if stream is not None:
            stream.abort()

    def statistics(self) -> dict[str, Any]:
        """Counters for monitoring: state, the ``server`` connected to, reconnects, failovers
        (reconnections to another address), bytes and ``socket_writes`` (of the current socket), messages
        both ways (``messages_in``: delivered here from the server; ``messages_out``: written
        or queued for it; both across reconnects), proxies, exports, queued sends; with
        ``acks``, frames not acknowledged yet, messages dropped at ``max_pending`` (12.6)."""
        stream = self._stream
        session = self._link.session
        return {
            "state": self._state,
            "mode": self.mode,
            "server": f"{self.host}:{self.port}",
            "reconnects": self.reconnects,
            "failovers": self.failovers,
            "bytes_in": stream.bytes_in if stream else 0,
            "bytes_out": stream.bytes_out if stream else 0,
            "socket_writes": stream.writes if stream else 0,
            "messages_in": self._link.messages_in,
            "messages_out": self._link.messages_out,
            "proxies": len(session.proxies) if session else 0,
            "exports": len(session.exports) if session else 0,
            "pending_sends": self._link.pending_count(),
            "frames_dropped": self._link.frames_dropped,
            "unacknowledged": len(session.outbox) if session is not None and session.outbox is not None else 0,
            "dropped_overflow": self._link.dropped_overflow,
        }

    # -- messaging -------------------------------------------------------------------------------

    def send(self, dest: Pid | Atom | str | tuple[Any, Any], msg: Any) -> None:
        """Send ``msg`` to ``dest`` (see the class docstring); never blocks.

        Raises :class:`~pyfabric.protocol.LocalProtocolError` (nothing sent) when the
        server cannot carry ``msg`` (e.g. a map to an original server), and
        :class:`NotConnected` while disconnected when ``when_disconnected="error"`` or
        the bounded queue is full. Call :meth:`drain` to wait for the bytes to leave.
        """
        if dest.__class__ is Pid:
            link = self._link
            if link.send_m(dest, msg):  # a proxy of our server's process, sent at once
                return
            session = link.session  # link.acks and link.pending_count(), inlined (every send)
            if session is not None and session.outbox is not None and session.queue.count >= self.options.max_pending:
                raise SendQueueFull(f"{self.options.max_pending} messages already wait for {link.label} (max_pending)")
            self._node.send(dest, msg)
            return
        if self._state == ConnectionState.CLOSED:
            raise NotConnected(f"the client of {self.host}:{self.port} is closed")
        if isinstance(dest, str):
            dest = Atom(dest)
        elif isinstance(dest, tuple):
            if len(dest) != 2:
                raise TypeError(f"a (name, node) destination has two items, got {dest!r}")
            dest = (Atom(dest[0]) if isinstance(dest[0], str) else dest[0], Atom(dest[1]) if isinstance(dest[1], str) else dest[1])
            if dest[1] == self._node.name:
                self._node.send(dest, msg)  # our own node: delivered here, as Erlang does
                return
        elif dest.__class__ is not Atom:
            raise TypeError(f"send: dest must be a Pid, a name or a (name, node) pair, got {type(dest).__name__}")
        self._link.send(dest, msg)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until queued sends have been written to the socket's buffer and the buffer is
        below its high-water mark; while reconnecting, wait for the reconnection.

        With ``acks``, also wait until no send waits for room in the outbox. ``timeout``
        defaults to the client's ``send_timeout``; raises :class:`NotConnected` when it
        expires or the client closes (:class:`SendQueueFull` when connected and sends
        still wait for the server's acks).
        """
        stream = self._stream
        if self._state == ConnectionState.CONNECTED and stream is not None:
            # Fast path (a send loop calls this after every send): bound what is buffered
            # without a timer or a context switch per call.
            link = self._link
            conn = link.conn
            if conn is not None and conn.output.size >= DRAIN_FLUSH_BYTES:
                link.flush()
            # link.pending_count(), inlined (every call): connected, the link has its session
            session = link.session
            if stream.can_write and (session is None or not session.queue.count):
                self._drain_calls += 1
                if self._drain_calls % DRAIN_YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                return
        timeout = self._send_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self._state == ConnectionState.CLOSED:
                        raise NotConnected(f"the client of {self.host}:{self.port} is closed")
                    if self._state == ConnectionState.CONNECTED and self._stream is not None:
                        await self._stream.drain()
                        if self._link.pending_count():
                            # With `acks`, sends wait for outbox room (docs/protocol.md 12.6).
                            await self._link.wait_idle()
                            continue
                        if self._state == ConnectionState.CONNECTED:
                            return
                    await self._connected.wait()
        except TimeoutError:
            if self._state == ConnectionState.CONNECTED:  # acks: the outbox stayed full
                waiting = self._link.pending_count()
                why = (
                    f"{waiting} sends still wait for the acks of {self.host}:{self.port}"
                    if waiting
                    else f"the socket's write buffer stayed full ({self.host}:{self.port} does not read)"
                )
                raise SendQueueFull(f"{why} after {timeout} s; they stay queued") from None
            raise NotConnected(
                f"still not connected to {self.host}:{self.port} after {timeout} s; queued sends stay queued"
            ) from None

    @property
    def acks(self) -> bool:
        """Does the session with the server have ``acks`` (lossless across reconnects,
        docs/protocol.md 11)?"""
        return self._link.acks

    async def wait_issuable(self, timeout: float | None = None, dest: Any = None) -> None:
        """Wait until a send to ``dest`` (None: any) would be written at once (connected,
        outbox room, credit), at most ``timeout`` (``send_timeout``); else :class:`SendTimeout`."""
        await self._link.wait_issuable(self._send_timeout if timeout is None else timeout, dest)

    async def send_confirmed(self, dest: Pid | Atom | str | tuple[Any, Any], msg: Any, *, timeout: float | None = None) -> None:
        """Send ``msg``; return once the server put it in the destination's mailbox (11.8),
        ``timeout`` s in all (default ``send_timeout``). Raises :class:`SendRefused` (``.code``:
        the server's, or why the session ended), :class:`SendTimeout`, ``FeatureNotSupported``."""
        await self._link.send_confirmed(dest, msg, self._send_timeout if timeout is None else timeout)

    async def whereis(self, name: Atom | str, *, node: Atom | str | None = None, timeout: float | None = None) -> Pid | None:
        """The server's process registered as ``name``, as a proxy pid; None if the server
        does not have it or does not allow it. ``node``: ask another client node of a
        routing server instead (its allowed names; docs/protocol.md 16.5); this client's own
        node name resolves here, without asking the server.

        Needs one of our servers (the ``whereis`` feature): with an original server it
        raises :class:`~pyfabric.protocol.FeatureNotSupported`; send to the name instead.

        While disconnected it raises :class:`NotConnected`, like :meth:`send`: at once
        with ``when_disconnected="error"``, else once ``connect_timeout`` seconds pass
        without a reconnection (and at once when the client is closed).
        """
        if node is not None and to_node(node) == self._node.name:
            return self._node.whereis(name)
        await self._ready(f"whereis({str(name)!r})")
        if node is not None and to_node(node) == self.peer_node:
            node = None  # the server's own name
        return await self._link.whereis(name, self._whereis_timeout if timeout is None else timeout, node=node)

    # -- closing ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection, stop reconnecting, end proxies with ``noconnection``
        (and close the node if this client created it)."""
        if self._closing:
            return
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            try:
                await self._reconnect_task
            except asyncio.CancelledError:
                pass
        stream = self._stream
        if self._link.acks and self._link.connected:
            # A clean close reports nothing: wait for the server's acks first (11.7).
            await self._link.wait_acknowledged(self._send_timeout)
        if self._owns_node and self._link.connected and stream is not None:
            # End our processes while the server can still hear of it: their DEAD notices
            # (reason `shutdown`) go out before the close. The protocol has no close frame,
            # so otherwise the server would keep their proxies until its session_timeout.
            stream.pause_reading()
            await self._node.close()
        self._link.close()
        if stream is not None:
            stream.close()
            try:
                async with asyncio.timeout(2):
                    await asyncio.shield(stream.closed)
            except TimeoutError:
                stream.abort()
        if self._state != ConnectionState.CLOSED:
            self._finish_closed()
        self._node.remove_node_sender(self._send_to_node)
        if self._owns_node:
            await self._node.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Client {self.host}:{self.port} {self._state} {self.mode or ''}>"
