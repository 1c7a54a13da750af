"""What a peer link does for `credit` and confirmed sends (docs/protocol.md 11.8, 12).

The runtime owns the mailboxes: after delivering a credited message the link tells the
core whether its mailbox has room (fewer than ``mailbox_high`` messages; a local proxy of
another connection counts what waits for it in that connection's pending queue), rechecks
the mailboxes still owed credit every ``grant_delay``, runs the ``grant_delay`` timer of
the core's grants, answers received confirmed sends, and keeps the futures of its own
confirmed sends. A mixin of :class:`~._peer.PeerLink` (its attributes are the link's).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..etf import Atom, Pid
from ..protocol import (
    Connection,
    FeatureNotSupported,
    MessagesUndelivered,
    SendResult,
    Session,
)
from ..runtime import Node
from ._errors import SendQueueFull, SendRefused, SendTimeout
from ._options import PeerOptions

__all__ = ["FlowLinkMixin"]

_log = logging.getLogger("pyfabric.transport")

ESTABLISHED = "established"


class FlowLinkMixin:
    """The `credit` and confirmed-send side of a peer link (see the module docstring)."""

    conn: Connection | None
    session: Session | None
    options: PeerOptions
    node: Node
    _loop: asyncio.AbstractEventLoop
    label: str
    messages_out: int
    _grant_timer: asyncio.TimerHandle | None
    _owed_timer: asyncio.TimerHandle | None
    _confirms: dict[int, asyncio.Future[str | None]]

    def _init_flow(self) -> None:
        self._grant_timer = None
        self._owed_timer = None
        self._confirms = {}

    # -- receiver: credit comes back as mailboxes have room (12.3) -----------------------

    def has_room(self, target: Any) -> bool:
        """Does ``target`` (a pid) hold fewer than ``mailbox_high`` messages? A proxy of
        another connection: what waits for it there; an ended process: yes."""
        high = self.options.config.mailbox_high
        size, cap = self.node.mailbox_size(target)
        if cap:
            return size < high
        if type(target) is Pid:
            handle = self.node.proxy_handle(target)
            link = getattr(handle, "link", None)
            if isinstance(link, FlowLinkMixin):
                return link.waiting_for(target) < high
        return True

    def waiting_for(self, key: Any) -> int:
        """Commands waiting in our session's pending queue for ``key``."""
        session = self.session
        return session.queue.waiting_for(key) if session is not None else 0

    def credit_for(self, conn: Connection, dest: Pid | Atom, token: tuple[Any, int]) -> None:
        """A credited message was delivered to ``dest``: return its credit, or owe it until
        the mailbox has room (12.3)."""
        size, cap = self.node.mailbox_size(dest)  # a local process: the common case
        if cap and size < self.options.config.mailbox_high:
            conn.credit_returned(token)
            return
        target = dest if isinstance(dest, Pid) else self.node.whereis(dest)
        if target is None:  # unregistered meanwhile
            conn.credit_returned(token)
        else:
            conn.credit_delivered(token, target, self.has_room(target))

    def _flow_timers(self, conn: Connection) -> None:
        # After every batch of events: the grant timer, and the recheck of owed mailboxes.
        loop = self._loop
        delay = self.options.config.grant_delay
        if self._grant_timer is None and conn.grant_owed():
            self._grant_timer = loop.call_later(delay, self._grant_due)
        if self._owed_timer is None and conn.owes_mailboxes():
            self._owed_timer = loop.call_later(delay, self._recheck_owed)

    def _grant_due(self) -> None:
        self._grant_timer = None
        conn = self.conn
        if conn is not None:
            conn.send_grant()
            self._schedule_flush()  # type: ignore[attr-defined]

    def _recheck_owed(self) -> None:
        self._owed_timer = None
        conn = self.conn
        if conn is None or self.node.closed:
            return
        conn.recheck_owed(self.has_room)
        self._schedule_flush()  # type: ignore[attr-defined]
        self._flow_timers(conn)

    def _stop_flow_timers(self) -> None:
        for timer in (self._grant_timer, self._owed_timer):
            if timer is not None:
                timer.cancel()
        self._grant_timer = self._owed_timer = None

    # -- sender: confirmed sends (11.8) --------------------------------------------------

    async def send_confirmed(self, dest: Any, msg: Any, timeout: float) -> None:
        """Send ``msg`` to ``dest`` and wait for the receiver to put it in the destination's
        mailbox: first until it can be issued, then for the result, ``timeout`` s in all
        (docs/protocol.md 11.8, 12.6). Raises :class:`FeatureNotSupported` without ``acks``,
        :class:`SendTimeout` (nothing sent) or :class:`SendRefused` (with its code)."""
        if isinstance(dest, str):
            dest = Atom(dest)
        session = self.session
        if session is None or session.outbox is None:
            raise FeatureNotSupported("acks", f"confirmed sends need the 'acks' feature, which {self.label} does not support")
        loop = self.node.loop
        deadline = loop.time() + timeout
        await self.wait_issuable(timeout, dest)  # type: ignore[attr-defined]
        conn = self.conn
        assert conn is not None
        if self.pending_count() >= self.options.max_pending:  # type: ignore[attr-defined]
            raise SendQueueFull(f"{self.options.max_pending} messages already wait for {self.label} (max_pending)")
        ref = conn.send_confirmed(dest, msg)
        self.messages_out += 1
        fut: asyncio.Future[str | None] = loop.create_future()
        self._confirms[ref] = fut
        self._schedule_flush()  # type: ignore[attr-defined]
        try:
            async with asyncio.timeout_at(deadline):
                error = await fut
        except TimeoutError:
            raise SendTimeout(
                f"no result for a confirmed send to {dest!r} from {self.label} within {timeout} s "
                "(it may still be delivered)"
            ) from None
        finally:
            self._confirms.pop(ref, None)  # a late result is dropped (11.8)
        if error is not None:
            raise SendRefused(error, f"confirmed send to {dest!r} refused by {self.label}: {error}")

    def confirm_done(self, ev: SendResult) -> None:
        fut = self._confirms.pop(ev.ref, None)
        if fut is None:
            _log.debug("%s: result of confirmed send %d after its caller stopped waiting", self.label, ev.ref)
        elif not fut.done():
            fut.set_result(ev.error)

    def confirms_failed(self, report: MessagesUndelivered) -> None:
        """The session ended (or a waiting confirmed send could not be issued): the
        confirmed sends of ``report`` fail with its reason."""
        for ref in report.confirms:
            self.confirm_done(SendResult(ref, report.reason))

    def fail_all_confirms(self, reason: str) -> None:
        for ref in list(self._confirms):
            self.confirm_done(SendResult(ref, reason))

