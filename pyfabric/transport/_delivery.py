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
    _waiters: int
    _overflow_batch: list[UndeliveredMessage]
    _overflow_since: int | None
    _flush: Callable[[], None]
    _schedule_flush: Callable[[], None]
    expire: Callable[..., None]
    pending_count: Callable[[], int]

    def _init_delivery(self) -> None:
        self.dropped_overflow = 0
        """Messages from local processes dropped because ``max_pending`` were waiting."""
        self.on_session_ended = None
        """Server: told when a session ends before its connection closes (``not_resumable``)."""
        self._ack_timer = None
        self._idle = asyncio.Event()  # set while no command waits (see wait_idle)
        self._idle.set()
        self._overflow_batch = []  # dropped at max_pending, reported together
        self._overflow_since = None  # dropped_overflow when the overflow began
        self._room = asyncio.Event()  # set when a command would be issued at once (wait_issuable)
        self._waiters = 0  # callers in wait_issuable and wait_idle (_update_idle wakes them)

    @property
    def acks(self) -> bool:
        """Does the current session have ``acks`` (docs/protocol.md 11)?"""
        session = self.session
        return session is not None and session.outbox is not None

    def _report_ending(self, reason: str) -> None:
        # The session ends: what it cannot vouch for (docs/protocol.md 11.7).
        assert self.session is not None
        peer = self.established.peer_node if self.established is not None else None
        report = self.session.undelivered(reason, peer)
        if report is not None:
            self.report_undelivered(report)

    def _ack_due(self) -> None:
        self._ack_timer = None
        conn = self.conn
        if conn is not None:
            conn.send_ack()
            self._schedule_flush()

    def _update_idle(self) -> None:
        if self._overflow_since is not None:
            self._overflow_ended()
        if self._waiters:  # else nobody to tell (each waiter clears its event before it waits)
            if self.pending_count() == 0:
                self._idle.set()
            else:
                self._idle.clear()
            self._room.set()  # waiters of wait_issuable check again (an ack, a grant, a result)

    def can_issue(self, dest: Any = None) -> bool:
        """Would a send to ``dest`` (None: any) be written at once (connected; with ``acks``,
        nothing to it waits, the outbox has room and, with ``credit``, it has credit,
        docs/protocol.md 11.4, 12.2)?"""
        conn = self.conn
        return conn is not None and conn.state == ESTABLISHED and not conn.must_wait_for(dest)

    async def wait_issuable(self, timeout: float, dest: Any = None) -> None:
        """Wait until :meth:`can_issue` (at most ``timeout`` s, then :class:`SendTimeout`)."""
        self._waiters += 1
        try:
            async with asyncio.timeout(timeout):
                while not self.can_issue(dest):
                    self._room.clear()
                    await self._room.wait()
        except TimeoutError:
            raise SendTimeout(
                f"could not send to {self.label} within {timeout} s (not connected, "
                f"{self.options.config.outbox_frames} frames unacknowledged, or no credit "
                "from the receiver); nothing was sent"
            ) from None
        finally:
            self._waiters -= 1

    async def wait_idle(self) -> None:
        """Return once no command waits (for a connection or for outbox room)."""
        self._waiters += 1
        try:
            while self.pending_count():
                self._idle.clear()
                await self._idle.wait()
        finally:
            self._waiters -= 1

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
        self.confirms_failed(report)  # type: ignore[attr-defined]
        callback = self.options.on_undelivered
        if callback is not None:
            try:
                callback(report)
            except Exception:
                _log.exception("%s: on_undelivered callback failed", self.label)

    def overflowed(self, dest: Any, msg: Any) -> None:
        """A local process's message found ``max_pending`` waiting: dropped, counted,
        reported as ``overflow`` in batches (one report per loop iteration), logged at the
        first drop and once more, with the count, when the overflow ends (12.6)."""
        self.dropped_overflow += 1
        batch = self._overflow_batch
        if not batch:
            self.node.loop.call_soon(self._report_overflow)
        if self._overflow_since is None:
            self._overflow_since = self.dropped_overflow - 1
            _log.warning("%s: %d messages wait (max_pending): dropping new ones", self.label, self.options.max_pending)
        batch.append(UndeliveredMessage(dest, msg, False, "unsent"))

    def _report_overflow(self) -> None:
        batch, self._overflow_batch = self._overflow_batch, []
        session = self.session
        peer = self.established.peer_node if self.established is not None else None
        report = MessagesUndelivered("overflow", session.id if session else None, peer, tuple(batch))
        callback = self.options.on_undelivered
        if callback is not None:
            try:
                callback(report)
            except Exception:
                _log.exception("%s: on_undelivered callback failed", self.label)

    def _overflow_ended(self) -> None:
        if self._overflow_since is not None and self.pending_count() < self.options.max_pending:
            _log.warning("%s: overflow ended: %d messages dropped", self.label, self.dropped_overflow - self._overflow_since)
            self._overflow_since = None

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

