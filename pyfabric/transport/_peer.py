"""One peer of a local node: a fabric session bound to the runtime, across reconnects.

A :class:`PeerLink` owns the protocol :class:`~pyfabric.protocol.Connection` currently in
use for one peer (a server we connected to, or one client of our server), turns the
core's events into runtime operations (deliver messages, end proxies, links, whereis),
turns runtime operations on proxies into protocol commands (through :class:`ProxyHandle`
and :class:`~._peer_commands.PeerCommandsMixin`),
and emits DEAD notices for the local processes the peer knows about (through
:meth:`Node.watch`). It does no socket I/O itself: a :class:`~._stream.FrameStream`
feeds it bytes and writes what it produces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..etf import Atom, Pid
from ..protocol import (
    NEED_DATA,
    ROUTE_EVENTS,
    AuthFailed,
    Connection,
    ConnectionClosed,
    Deferred,
    ExitSignalReceived,
    FrameDropped,
    HandshakeComplete,
    LinkExitReceived,
    LinkRequested,
    LocalProtocolError,
    MessageReceived,
    MessageRouted,
    MessagesUndelivered,
    PeerError,
    ProxyDied,
    RouteHooks,
    SendResult,
    Session,
    UnlinkRequested,
    WhereisReplied,
    WhereisRequested,
)
from ..runtime import Node, NotRegistered, WatchToken
from ._delivery import DeliveryMixin
from ._errors import NotConnected
from ._flowlink import FlowLinkMixin
from ._options import PeerOptions
from ._peer_commands import PeerCommandsMixin
from ._proxyhandle import ProxyHandle
from ._waiters import Waiters

__all__ = ["PeerLink", "ProxyHandle"]

_log = logging.getLogger("pyfabric.transport")

ESTABLISHED = "established"
WRITE_PIECES_AT = 16 * 1024
"""Bytes from which the frames of one flush are handed to the socket as they are (one
scatter-gather write) instead of joined into one buffer first."""


class PeerLink(PeerCommandsMixin, DeliveryMixin, FlowLinkMixin):
    """The session with one peer, bound to ``node``; see the module docstring.

    ``writer`` is set by the stream while a connection is up: it takes bytes to write.
    ``on_established`` / ``on_closed`` let the owner (client or server) follow the
    connection's life.
    """

    def __init__(self, node: Node, options: PeerOptions, *, role: str, label: str) -> None:
        self.node = node
        self._loop = node.loop
        self.options = options
        self._mailbox_high = options.config.mailbox_high
        self.role = role
        self.label = label
        self.conn: Connection | None = None
        self.session: Session | None = None
        self.established: HandshakeComplete | None = None
        self.auth_error: Exception | None = None
        self.close_event: ConnectionClosed | None = None
        self.writer: Callable[[bytes | list[bytes]], None] | None = None
        self.closer: Callable[[], None] | None = None
        self.on_established: Callable[[PeerLink, HandshakeComplete], PeerLink | None] | None = None
        self.on_closed: Callable[[PeerLink, ConnectionClosed], None] | None = None
        self.on_auth_failed: Callable[[PeerLink, AuthFailed], None] | None = None
        """Server: told of every failed authentication (per-address throttling)."""
        self.on_route_event: Callable[[PeerLink, Any], None] | None = None
        """Told of the events of the `route` feature (the server's router, the client's nodes)."""
        self._watches: dict[Pid, WatchToken] = {}
        self._whereis: Waiters[Pid | None] = Waiters(node.loop)
        self._written: list[tuple[Deferred, Callable[[str | None], None]]] = []  # see send_routed
        self._flush_scheduled = False
        self.frames_dropped = 0
        self.messages_in = 0
        """Messages from the peer delivered to a local process (at a routing server: or
        handed on to another client), across reconnects of this session's link."""
        self.messages_out = 0
        """Messages to the peer written or queued for it (refused sends not counted)."""
        self.destinations: dict[Any, int] | None = None
        """If a dict: messages delivered per destination (the server's stream empties it
        after each slice it feeds, to check those mailboxes)."""
        self._init_delivery()
        self._init_flow()
        self.taken_over_by: PeerLink | None = None
        """Server: the link of the session this link's connection resumed (it owns the
        connection now, and every proxy and export the connection creates)."""

    # -- building connections -------------------------------------------------------------

    def new_connection(
        self, *, find_session: Callable[[bytes], Session | None] | None = None, route: RouteHooks | None = None
    ) -> Connection:
        """A fresh protocol connection for this peer. A client's continues our session:
        it asks for a resume when the session has an id, and takes over the commands
        deferred while disconnected either way."""
        conn = Connection(
            self.role,
            config=self.options.config,
            node_name=self.node.name,
            new_proxy_pid=self._new_proxy_pid,
            is_alive=self.node.is_alive,
            new_dead_pid=self._new_dead_pid,
            on_export=self._exported,
            session=self.session if self.role == "client" else None,
            find_session=find_session,
            route=route,
            peer=self.label,
        )
        # `established` is kept: it describes the session (features, mode) until the new
        # connection's handshake replaces it.
        conn.deliver = self._deliver  # the fused m path (docs/architecture.md)
        self.conn = conn
        self.close_event = None
        return conn

    def adopt(self, other: PeerLink, ev: HandshakeComplete) -> None:
        """Server: ``other``'s new connection resumed our session; take it over (the
        connection, its stream's label, the rest of its events and later proxies)."""
        self.conn = other.conn
        if self.conn is not None:
            self.conn.deliver = self._deliver  # our counts, our destinations
        self.established = ev
        self.session = other.conn.session if other.conn is not None else self.session
        self.label = other.label
        other.conn = None
        other.taken_over_by = self

    def _owner(self) -> PeerLink:
        owner = self
        while owner.taken_over_by is not None:
            owner = owner.taken_over_by
        return owner

    def _new_proxy_pid(self, remote_id: int) -> Pid:
        handle = ProxyHandle(self._owner())
        pid = self.node.new_proxy(handle)
        handle.pid = pid
        return pid

    def _new_dead_pid(self, local_id: int) -> Pid:
        # A pid whose process has already exited: sending does nothing, monitoring gives
        # noproc (docs/protocol.md 4.1).
        return self.node.dead_pid()

    # -- bytes in / out ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:
            return
        conn.receive_data(data)
        if conn.has_events():  # else a part of a frame: nothing happened
            self._process_events()

    def connection_lost(self) -> None:
        conn = self.conn
        if conn is None:
            return
        if conn.state != "closed":
            conn.connection_lost()
        self._process_events()

    def handshake_timed_out(self) -> None:
        conn = self.conn
        if conn is not None and conn.state not in (ESTABLISHED, "closed"):
            conn.handshake_timed_out()
            self._process_events()

    def heartbeat(self) -> None:
        conn = self.conn
        if conn is not None and conn.state == ESTABLISHED and "heartbeat" in conn.features:
            conn.heartbeat()
            self._flush()

    def _process_events(self, events: Any = None) -> None:
        conn = self.conn
        assert conn is not None  # only a link with a connection has events
        node = self.node
        delivered = self.messages_in
        if events is None:
            # One event at a time, each handled before the next frame is read: the messages
            # the core hands to _deliver meanwhile keep their place among the events.
            events = iter(conn.next_event, NEED_DATA)
        for ev in events:
            kind = ev.__class__
            if kind is MessageReceived:
                self._deliver(ev.dest, ev.payload, ev.credit, ev.ref)
            elif kind is ProxyDied:
                node.terminate_proxy(ev.pid, ev.reason)
            elif kind is LinkRequested:
                if not self._exit_refused(ev.local_pid, "link"):
                    node.remote_link(ev.proxy_pid, ev.local_pid)
            elif kind is UnlinkRequested:
                node.remote_unlink(ev.proxy_pid, ev.local_pid)
            elif kind is ExitSignalReceived:
                if not self._exit_refused(ev.to_local, "exit signal"):
                    node.remote_exit(ev.from_proxy, ev.to_local, ev.reason)
            elif kind is LinkExitReceived:
                if not self._exit_refused(ev.to_local, "link signal"):
                    node.remote_link_exit(ev.from_proxy, ev.to_local, ev.reason)
            elif kind is WhereisRequested:
                try:
                    conn.reply_whereis(ev.req_id, node.whereis(ev.name))
                except LocalProtocolError as exc:  # max_exports reached: the peer learns nothing
                    _log.warning("%s: whereis %s answered undefined: %s", self.label, ev.name, exc)
                    conn.reply_whereis(ev.req_id, None)
            elif kind is WhereisReplied:
                self._whereis.resolve(ev.req_id, ev.pid)
            elif kind is HandshakeComplete:
                owner = self._established(ev)
                if owner is not self:
                    # A server found the session this connection resumed: its link takes
                    # over the connection and the rest of the events.
                    owner._process_events(events)
                    return
            elif kind is AuthFailed:
                self.auth_error = ev.error
                # A server logs a client's failure; a client raises AuthenticationError
                # to its caller (or logs the reconnect giving up): a warning would repeat it.
                (_log.warning if self.role == "server" else _log.info)("%s: authentication failed: %s", self.label, ev.message)
                if self.on_auth_failed is not None:
                    self.on_auth_failed(self, ev)
            elif kind is FrameDropped:
                self.frames_dropped += 1
                _log.warning("%s: dropped a frame (%s): %s", self.label, ev.code, ev.detail)
            elif kind is PeerError:
                _log.warning("%s: peer reported %s: %s", self.label, ev.code, ev.message)
                if ev.code == "not_resumable" and self.role == "server" and self.session is not None:
                    self._end_session_now()
            elif kind is MessagesUndelivered:
                self.report_undelivered(ev)
            elif kind is SendResult:
                self.confirm_done(ev)
            elif kind is ConnectionClosed:
                self._closed(ev)
            elif kind in ROUTE_EVENTS:
                if kind is MessageRouted:
                    self.messages_in += 1
                if self.on_route_event is not None:
                    self.on_route_event(self, ev)
        # Written at the end of this loop pass, together with what the local processes
        # woken by these events send meanwhile (their wake-ups run first): one socket
        # write for a reply and the acks or grants these frames made due. Scheduled now
        # also when nothing waits yet but messages were delivered: a woken process's
        # reply then leaves in the pass that wakes it, not one loop iteration later.
        if not self._flush_scheduled and (conn.output.size or self.messages_in != delivered):
            self._schedule_flush()
        if conn is not None:
            timer = self._ack_timer
            if conn.ack_owed():
                if timer is None:
                    self._ack_timer = self._loop.call_later(self.options.config.ack_delay, self._ack_due)
            elif timer is not None:
                # The ack went with these frames (``ack_every``): the next frame handled
                # starts its own ``ack_delay`` (docs/protocol.md 11.3), so that an early
                # timer does not add a standalone ack for a frame or two.
                timer.cancel()
                self._ack_timer = None
            self._flow_timers(conn)
        self._update_idle()

    def _deliver(self, dest: Pid | Atom, payload: Any, credit: Any, ref: Any = None) -> None:
        """A received message into its mailbox: counted, a confirmed send (``ref``) answered,
        its credit returned or owed (12.3); to an unregistered name dropped, ``noproc``.
        Also the fused m path's delivery (``Connection.deliver``: a MessageReceived without its event)."""
        conn: Connection = self.conn  # type: ignore[assignment]  # only a link with a connection delivers
        try:
            if credit is None:
                self.node.send(dest, payload)
                room = False
            else:
                room = self.node.send_with_room(dest, payload, self._mailbox_high)
        except NotRegistered:
            _log.debug("%s: message to unregistered name %s dropped", self.label, dest)
            if ref:
                conn.send_result(ref, "noproc")
            conn.credit_returned(credit)
            return
        dests = self.destinations
        if dests is not None:
            dests[dest] = dests.get(dest, 0) + 1
        self.messages_in += 1
        if ref:
            conn.send_result(ref, None)
        if credit is not None:
            if room:  # a local process with room: FlowMixin.credit_returned, one call less
                if conn.session.credit.give_back(*credit):  # type: ignore[union-attr]
                    conn.send_grant()
            else:
                self.credit_for(conn, dest, credit)

    def _exit_refused(self, pid: Pid, what: str) -> bool:
        """``refuse_remote_exits``: True if the peer may not link to / signal ``pid``."""
        refuse = self.options.refuse_remote_exits
        if refuse is not True and not (refuse and any(self.node.whereis(n) == pid for n in refuse)):
            return False
        _log.warning("%s: remote %s to %s refused (refuse_remote_exits)", self.label, what, pid)
        return True

    def pending_output(self) -> int:
        """Bytes produced but not yet handed to the socket."""
        conn = self.conn
        return conn.pending_output() if conn is not None else 0

    def flush(self) -> None:
        """Hand everything produced so far to the socket now."""
        self._flush()

    def _flush(self) -> None:
        conn = self.conn
        if conn is None:
            return
        if conn.output.size < WRITE_PIECES_AT:
            data = conn.data_to_send()  # small: joined, one copy
            if data and self.writer is not None:
                self.writer(data)
        else:
            pieces = conn.data_to_send_pieces()  # large: the frames as they are, no copy
            if self.writer is not None:
                self.writer(pieces)

    def _schedule_flush(self) -> None:
        # Everything produced in one loop iteration (sends, received frames' acks and
        # grants, timers) goes out in one socket write, in the order the core queued it,
        # at the end of this pass of the ready callbacks: a lone frame is not held back
        # past it (the loop polls for I/O only after the pass). An orderly close and
        # ``flush()`` write at once.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._flush()

    # -- life cycle -------------------------------------------------------------------------

    def _established(self, ev: HandshakeComplete) -> PeerLink:
        self.established = ev
        assert self.conn is not None  # the handshake was this connection's
        self.session = self.conn.session
        if not ev.resumed:
            self._forget_exports()
        _log.info(
            "%s: connected (%s%s, features: %s)",
            self.label,
            ev.mode,
            ", session resumed" if ev.resumed else "",
            ", ".join(sorted(ev.features)) or "none",
        )
        owner = self
        if self.on_established is not None:
            owner = self.on_established(self, ev) or self
        owner._send_deferred()
        return owner

    def _closed(self, ev: ConnectionClosed) -> None:
        self.close_event = ev
        if ev.code is not None and self.auth_error is not None and ev.error is self.auth_error:
            _log.debug("%s: connection closed: %s (%s)", self.label, ev.message, ev.code)  # logged as AuthFailed
        elif ev.code is not None:
            _log.warning("%s: connection closed: %s (%s)", self.label, ev.message, ev.code)
        else:
            _log.info("%s: connection closed: %s", self.label, ev.message)
        if self.session is None or self.session.id is None:
            # No session to resume (legacy peer, 'session' not agreed, or a first
            # handshake that failed): the core already ended the proxies (noconnection)
            # and the exports are void too. With a session, the watches stay so that
            # DEAD notices of processes ending while disconnected are sent after a resume.
            self._forget_exports()
        self._whereis.fail_all(NotConnected(f"connection to {self.label} closed while waiting for whereis"))
        self._flush()
        if self.closer is not None:
            self.closer()
        if self.on_closed is not None:
            self.on_closed(self, ev)

    def expire(self, reason: str = "session_expired") -> None:
        """End the session for good: proxies end with ``noconnection``, exports and
        deferred sends are dropped; with ``acks`` the messages it cannot vouch for are
        reported with ``reason`` (docs/protocol.md 11.7)."""
        self._stop_flow_timers()
        self.fail_written(reason)
        if self.session is not None:
            self._report_ending(reason)
            for pid, _remote_id in self.session.expire():
                self.node.terminate_proxy(pid, Atom("noconnection"))
        self._forget_exports()

    def _forget_exports(self) -> None:
        for token in self._watches.values():
            self.node.unwatch(token)
        self._watches.clear()

    # -- exports: DEAD notices ------------------------------------------------------------

    def _exported(self, pid: Pid, _local_id: int) -> None:
        # The core exported a local pid: its DEAD notice must follow when it ends.
        owner = self._owner()
        if pid not in owner._watches and owner.node.is_alive(pid):
            owner._watches[pid] = owner.node.watch(pid, owner._exported_exited)

    def end_export(self, pid: Pid, reason: Any) -> None:
        """Tell the peer now that our export ``pid`` ended with ``reason`` (its DEAD, queued
        while disconnected), and forget its id: shipped again, it gets a new one (a routing
        server ends its exports of a lost client's proxies, docs/protocol.md 16.4)."""
        owner = self._owner()
        token = owner._watches.pop(pid, None)
        if token is not None:
            owner.node.unwatch(token)
        conn = owner.conn
        if conn is None:
            return
        session = conn.session
        ident = session.export_ids.get(pid)
        if ident is None:
            return
        conn.process_exited(pid, reason)
        session.ended_exports.pop(ident, None)
        session.ended_export_ids.pop(pid, None)
        owner._schedule_flush()

    def _exported_exited(self, pid: Pid, reason: Any) -> None:
        self._watches.pop(pid, None)
        conn = self.conn
        if conn is None:
            return
        conn.process_exited(pid, reason)
        self._schedule_flush()

    def close(self) -> None:
        """Close the current connection in an orderly way (flushes what is queued)."""
        conn = self.conn
        if conn is not None and conn.state != "closed":
            if conn.ack_owed():
                conn.send_ack()  # what we received must not be reported unconfirmed (11.7)
            conn.close()
            self._process_events()
