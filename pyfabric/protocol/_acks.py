"""What a connection does for `acks` beyond counting (docs/protocol.md section 11).

The counts and the outbox are the session's (:class:`~._outbox.Outbox`); these functions
are the connection's decisions about them: whether a user command must wait for outbox
room (11.4), issuing the waiting ones as room appears, and writing acknowledgements
(11.3). Sans-IO like the rest of the core: the transport runs the ``ack_delay`` timer.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from ..etf import Atom, Pid
from ._commands import Commands
from ._config import ConnectionConfig
from ._constants import A_ACK, plain
from ._error_policy import error_frame
from ._errors import LocalProtocolError, RemoteProtocolError
from ._established import Established
from ._events import Event, MessagesUndelivered, SendResult, UndeliveredMessage
from ._framing import FrameWriter
from ._handshake import Agreement
from ._outbox import Outbox
from ._pending import CONN, DEST, ISSUED, STOP
from ._session import ConfirmedSend, Deferred, SendMessage, Session
from ._state import ESTABLISHED, ConnectionState

__all__ = ["AcksMixin", "must_wait", "pump", "write_ack", "after_handshake", "refuse_resume"]

log = logging.getLogger("pyfabric.protocol")


def must_wait(session: Session, config: ConnectionConfig, key: Any = None) -> bool:
    """With ``acks``, must a user command to ``key`` (None: any destination) wait in the
    pending queue: commands to it wait already (all of them for None), the outbox is full
    (docs/protocol.md 11.4), or, with ``credit``, a message to it would have no credit (12.2)?"""
    outbox = session.outbox
    if outbox is None:
        return False
    pending = session.queue
    if (pending.has(key) if key is not None else len(pending) > 0) or not outbox.has_room(config.outbox_frames, config.outbox_bytes):
        return True
    credit = session.credit
    if credit is None or key is None:
        return False
    if credit.conn_blocked():
        return True
    wire = session.proxy_ids.get(key) if type(key) is Pid else key
    return wire is not None and credit.dest_blocked(wire)


def pump(
    session: Session, cmd: Commands, config: ConnectionConfig, events: deque[Event], peer: str, peer_node: Atom | None
) -> list[tuple[Deferred, LocalProtocolError]]:
    """Issue the waiting commands that can go now, oldest first per destination (11.4,
    12.2). A message that cannot be carried any more is reported (``MessagesUndelivered``
    with its error code, docs/protocol.md 12.2); the other failed commands are returned."""
    outbox = session.outbox
    assert outbox is not None
    failed: list[tuple[Deferred, LocalProtocolError]] = []
    credit = session.credit
    proxy_ids = session.proxy_ids

    def attempt(command: Deferred) -> int:
        if not outbox.has_room(config.outbox_frames, config.outbox_bytes):
            return STOP
        t = type(command)
        try:
            if t is SendMessage or t is ConfirmedSend:
                dest = command.dest  # type: ignore[union-attr]
                ref = command.ref if t is ConfirmedSend else 0  # type: ignore[union-attr]
                if ref and len(session.confirms) >= config.max_confirms:
                    return CONN
                if type(dest) is Pid and dest not in proxy_ids:
                    cmd.forget(command)
                    log.debug("peer %s: waiting message to an ended proxy dropped", peer)
                    if ref:
                        events.append(SendResult(ref, "noproc"))
                    return ISSUED
                if credit is not None:
                    if credit.conn_blocked():
                        return CONN
                    if credit.dest_blocked(cmd.wire_dest(dest)):
                        return DEST
                return ISSUED if cmd.send_message(dest, command.payload, ref, waiting=command) else CONN  # type: ignore[union-attr]
            if not cmd.replay(command):
                log.debug("peer %s: waiting %s to an ended proxy dropped", peer, t.__name__)
        except LocalProtocolError as exc:
            if t is SendMessage or t is ConfirmedSend:
                cmd.forget(command)
                ref = command.ref if t is ConfirmedSend else 0  # type: ignore[union-attr]
                lost = UndeliveredMessage(command.dest, command.payload, bool(ref), "unsent")  # type: ignore[union-attr]
                events.append(MessagesUndelivered(exc.code, session.id, peer_node, (lost,), (ref,) if ref else ()))
            else:
                failed.append((command, exc))
        return ISSUED

    session.queue.pump(attempt)
    return failed


def write_ack(outbox: Outbox, writer: FrameWriter) -> None:
    """Queue ``{ack, Received}`` if it advances (docs/protocol.md 11.3); else nothing."""
    if outbox.received > outbox.ack_sent:
        outbox.ack_sent = outbox.received
        writer.write(plain((A_ACK, outbox.received)))


def after_handshake(session: Session, agreed: Agreement, writer: FrameWriter, events: Any) -> None:
    """Right after ``HandshakeComplete``: the report of an old session that ended, then,
    on a resume, the replay (``acks``, 11.5) or the DEAD resend (section 7)."""
    if agreed.undelivered is not None:
        events.append(agreed.undelivered)
    if not agreed.resumed:
        return
    if session.outbox is not None:
        # Our frames the peer has not handled, unchanged, before any new one.
        frames = session.outbox.resume(agreed.peer_received)
    else:
        # What could not be sent while disconnected, and the recent DEAD notices in case
        # one was lost in the cut.
        frames = session.take_dead_notices()
    for frame in frames:
        writer.write(frame)
    credit = session.credit
    if credit is not None:
        # Returns made while disconnected go in one grant right after the replay (12.4).
        term = credit.take_grant()
        if term is not None:
            frame = plain(term)
            writer.write(frame)
            session.outbox.issue(frame)  # type: ignore[union-attr]


def refuse_resume(agreed: Agreement, writer: FrameWriter, events: Any, peer: str) -> tuple[str, RemoteProtocolError]:
    """Client: the server resumed with a count out of range (docs/protocol.md 11.6): report
    the old session's messages and tell the server; returns the close's message and error
    (the next connection starts a new session: the old id was cleared)."""
    if agreed.undelivered is not None:
        events.append(agreed.undelivered)
    message = "the server's received count is outside what our outbox holds; starting a new session"
    error = RemoteProtocolError("not_resumable", message)
    log.warning("peer %s: %s", peer, message)
    if "error" in agreed.features:
        writer.write(error_frame(error))
    return message, error


class AcksMixin:
    """The `acks` part of :class:`~pyfabric.protocol.Connection` (its attributes are the
    connection's: ``_session``, ``_writer``, ``_events``, ``_state``, ``_cmd``, ``_est``)."""

    _session: Session
    _writer: FrameWriter
    _events: deque[Event]
    _state: ConnectionState
    _cmd: Commands | None
    _est: Established | None
    config: ConnectionConfig
    peer: str
    peer_node: Atom | None
    _drop: Callable[[RemoteProtocolError], None]

    def _handled(self, outbox: Outbox) -> None:
        # Counted before it is acted on: nothing between here and the end of its handler
        # can lose its effects (the transport carries out every event it got).
        outbox.received += 1
        if outbox.received - outbox.ack_sent >= self.config.ack_every:
            write_ack(outbox, self._writer)

    def _ack_received(self, term: Any) -> None:
        est = self._est
        assert est is not None  # an ack is a frame of an established connection
        try:
            est.dispatch(term)
        except RemoteProtocolError as exc:
            self._drop(exc)
            return
        if self._session.deferred_count():
            self._pump()

    def _run_or_wait(self, command: Deferred, run: Callable[..., None], *args: Any) -> None:
        if must_wait(self._session, self.config):
            self._session.defer(command)
        else:
            run(*args)

    def _pump(self) -> list[tuple[Deferred, LocalProtocolError]]:
        cmd = self._cmd
        assert cmd is not None  # commands wait for room only once established
        return pump(self._session, cmd, self.config, self._events, self.peer, self.peer_node)

    def must_wait(self) -> bool:
        """With ``acks``: would a user command wait now (earlier ones wait, or the outbox is full)?"""
        return must_wait(self._session, self.config)

    def ack_owed(self) -> bool:
        """With ``acks``: frames handled since our last ack (call :meth:`send_ack` within ``ack_delay``)."""
        outbox = self._session.outbox
        return outbox is not None and outbox.received > outbox.ack_sent and self._state.state == ESTABLISHED

    def send_ack(self) -> None:
        """Queue ``{ack, Received}`` if it advances (docs/protocol.md 11.3); else nothing."""
        outbox = self._session.outbox
        if outbox is not None and self._state.state == ESTABLISHED:
            write_ack(outbox, self._writer)

    def waiting(self) -> int:
        """Commands waiting in the session (for a connection, or for outbox room)."""
        return self._session.deferred_count()

    def unacknowledged(self) -> int:
        """With ``acks``: our frames the peer has not acknowledged yet (0 without)."""
        outbox = self._session.outbox
        return len(outbox) if outbox is not None else 0

