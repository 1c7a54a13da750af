"""What a peer link does for `acks` (docs/protocol.md 11, 12.6): the ``ack_delay`` timer,
reports of undelivered messages, waiting for outbox room, for the peer's acks, for the
pending queue to empty. A mixin of :class:`~._peer.PeerLink` (its attributes are the link's).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..protocol import Connection, MessagesUndelivered, Session, UndeliveredMessage
from ..runtime import Node
from ._errors import SendTimeout
from ._options import PeerOptions

__all__ = ["DeliveryMixin"]

_log = logging.getLogger("pyfabric.transport")

ESTABLISHED = "established"


class DeliveryMixin:
    """The `acks` side of a peer link (see the module docstring)."""

    conn: Connection | None
    session: Session | None
    established: Any
    options: PeerOptions
    node: Node
    label: str
    role: str
    dropped_overflow: int
    on_session_ended: Callable[[Any, bytes], None] | None
    _ack_timer: asyncio.TimerHandle | None
    _idle: asyncio.Event
    _room: asyncio.Event
    _flush: Callable[[], None]
    expire: Callable[..., None]
    pending_count: Callable[[], int]

    def _ack_due(self) -> None:
        self._ack_timer = None
        conn = self.conn
        if conn is not None:
            conn.send_ack()
            self._flush()

    def _update_idle(self) -> None:
        if self.pending_count() == 0:
            self._idle.set()
            if self.can_issue():
                self._room.set()
        else:
            self._idle.clear()

    def can_issue(self) -> bool:
        """Would a send be written at once (connected; with ``acks``, nothing waits and the
        outbox has room, docs/protocol.md 11.4)?"""
        conn = self.conn
        return conn is not None and conn.state == ESTABLISHED and not conn.must_wait()

    async def wait_issuable(self, timeout: float) -> None:
        """Wait until :meth:`can_issue` (at most ``timeout`` s, then :class:`SendTimeout`)."""
        try:
            async with asyncio.timeout(timeout):
                while not self.can_issue():
                    self._room.clear()
                    await self._room.wait()
        except TimeoutError:
            raise SendTimeout(
                f"could not send to {self.label} within {timeout} s (not connected, or "
                f"{self.options.config.outbox_frames} frames unacknowledged); nothing was sent"
            ) from None

    async def wait_idle(self) -> None:
        """Return once no command waits (for a connection or for outbox room)."""
        while self.pending_count():
            self._idle.clear()
            await self._idle.wait()

    def _end_session_now(self) -> None:
        # The client could not resume losslessly and told us (docs/protocol.md 11.6).
        session = self.session
        assert session is not None
        session_id = session.id
        self.expire("not_resumable")
        if self.on_session_ended is not None and session_id is not None:
            self.on_session_ended(self, session_id)

    def report_undelivered(self, report: MessagesUndelivered) -> None:
        """Tell the user which messages a session cannot vouch for (docs/protocol.md 11.7):
        one warning with the counts, then the ``on_undelivered`` callback."""
        unsent = sum(1 for m in report.messages if m.state == "unsent")
        _log.warning(
            "%s: %d messages not confirmed (%d unconfirmed, %d unsent): %s",
            self.label,
            len(report.messages),
            len(report.messages) - unsent,
            unsent,
            report.reason,
        )
        callback = self.options.on_undelivered
        if callback is not None:
            try:
                callback(report)
            except Exception:
                _log.exception("%s: on_undelivered callback failed", self.label)

    def overflowed(self, dest: Any, msg: Any) -> None:
        """A local process's message found ``max_pending`` waiting: dropped, counted,
        logged (the first one) and reported as ``overflow`` (docs/protocol.md 12.6)."""
        self.dropped_overflow += 1
        if self.dropped_overflow == 1:
            _log.warning("%s: %d messages wait (max_pending): dropping further ones", self.label, self.options.max_pending)
        session = self.session
        lost = UndeliveredMessage(dest, msg, False, "unsent")
        peer = self.established.peer_node if self.established is not None else None
        self.report_undelivered(MessagesUndelivered("overflow", session.id if session else None, peer, (lost,)))

    async def wait_acknowledged(self, timeout: float) -> bool:
        """With ``acks``: wait (at most ``timeout`` s) until nothing waits and the peer has
        acknowledged every frame of ours, so that a clean close reports nothing
        (docs/protocol.md 11.7); True when it did."""
        loop = self.node.loop
        deadline = loop.time() + timeout
        while True:
            conn = self.conn
            if conn is None or conn.state != ESTABLISHED:
                return False
            if conn.unacknowledged() == 0 and self.pending_count() == 0:
                return True
            if loop.time() >= deadline:
                return False
            self._flush()
            await asyncio.sleep(0.005)

