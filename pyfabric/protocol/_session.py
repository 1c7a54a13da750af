"""One session's outstanding state: the id tables, their graves, and the outbox.

A :class:`Session` outlives a :class:`~pyfabric.protocol.Connection` when the ``session``
feature is agreed: the transport hands the same object to the connection that resumes it
(client: ``Connection(..., session=old.session)``; server: the ``find_session``
callback returns it). Without that feature it is simply the connection's tables (and the
outbox of commands waiting for the next connection).

It is the one owner of outstanding work: what each side exported, the proxies we hold,
the DEAD notices and commands that wait for a connection, and the recent DEAD notices
resent after a resume (docs/protocol.md section 7). With ``acks`` its :attr:`Session.outbox`
(:class:`~._outbox.Outbox`) keeps the counts and unacknowledged frames instead of the DEAD
resend, and the deferred commands are the pending queue of section 12.6.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from ..etf import Atom, Pid, decode
from ._credit import Credit
from ._events import MessagesUndelivered, UndeliveredMessage
from ._outbox import Outbox
from ._pending import Pending

__all__ = [
    "Session",
    "GRAVES",
    "RESEND_DEAD",
    "Deferred",
    "SendMessage",
    "ConfirmedSend",
    "LinkCommand",
    "dest_key",
    "key_of",
    "UnlinkCommand",
    "ExitSignalCommand",
]

GRAVES = 1024
"""Ended ids remembered per table and session: enough for the pids still in flight or held
by the peer's processes in the common case, bounded so a long session cannot grow."""

RESEND_DEAD = 256
"""DEAD notices of ended exports a session remembers and sends again after a resume
(docs/protocol.md section 7): a notice lost in the cut still arrives; the receiver
ignores the ones it already had."""


@dataclass(frozen=True, slots=True)
class SendMessage:
    """``send_message(dest, payload)`` kept while disconnected."""

    dest: Any
    payload: Any


@dataclass(frozen=True, slots=True)
class ConfirmedSend:
    """``send_confirmed(dest, payload)`` waiting to be issued as ``{mc, Ref, ...}`` (11.8)."""

    ref: int
    dest: Any
    payload: Any


@dataclass(frozen=True, slots=True)
class LinkCommand:
    """``link(local_pid, proxy_pid)`` kept while disconnected."""

    local_pid: Pid
    proxy_pid: Pid


@dataclass(frozen=True, slots=True)
class UnlinkCommand:
    """``unlink(local_pid, proxy_pid)`` kept while disconnected."""

    local_pid: Pid
    proxy_pid: Pid


@dataclass(frozen=True, slots=True)
class ExitSignalCommand:
    """``exit_signal(local_pid, proxy_pid, reason)`` kept while disconnected (``link_exit``:
    ``link_exit(...)``, the link signal of 5.2)."""

    local_pid: Pid
    proxy_pid: Pid
    reason: Any
    link_exit: bool = False


Deferred = SendMessage | ConfirmedSend | LinkCommand | UnlinkCommand | ExitSignalCommand


def dest_key(command: Deferred) -> Any:
    """The destination a waiting command keeps its order with (docs/protocol.md 11.4): the
    proxy pid, the name as an atom, or the ``(name, node)`` pair."""
    t = type(command)
    return key_of(command.dest if t is SendMessage or t is ConfirmedSend else command.proxy_pid)  # type: ignore[union-attr]


def key_of(dest: Any) -> Any:
    """:func:`dest_key` of a destination as the user gave it (always hashable)."""
    t = type(dest)
    if t is Pid or t is Atom:
        return dest
    if t is str:
        return Atom(dest)
    if t is tuple and len(dest) == 2:
        return tuple(Atom(x) if type(x) is str else x for x in dest)
    try:
        hash(dest)
    except TypeError:
        return ("unhashable", id(dest))  # refused when its turn comes
    return dest


class Session:
    """The id tables and the outbox of one session.

    * exports: local pids we shipped as ``{pr, Id}``; ids count from 1 and are never
      reused (an ended process's entry is removed, a later export gets a new id);
    * proxies: one proxy pid per remote id the peer shipped to us;
    * graves: the last :data:`GRAVES` ended exports and dead proxies, so that a pid that
      comes back after its process ended is still the same pid (``{pl, Id}`` of an ended
      export maps back to it; a dead proxy shipped back goes out as ``{pl, Id}`` and a
      ``{pr, Id}`` of a dead proxy's id is that dead proxy), docs/protocol.md 4.3;
    * the outbox: DEAD notices that could not be sent while disconnected (sent right
      after a resume, together with the last :data:`RESEND_DEAD` ones), and the commands
      the transport deferred (:meth:`defer`, sent by ``Connection.send_deferred``).
    """

    __slots__ = (
        "id",
        "export_ids",
        "exports",
        "next_export_id",
        "proxies",
        "proxy_ids",
        "attached",
        "ended_exports",
        "ended_export_ids",
        "dead_proxies",
        "dead_proxy_ids",
        "_dead_queue",
        "_recent_dead",
        "queue",
        "outbox",
        "credit",
        "confirms",
        "next_ref",
    )

    def __init__(self, session_id: bytes | None = None) -> None:
        self.id = session_id
        self.export_ids: dict[Pid, int] = {}  # local pid -> our id
        self.exports: dict[int, Pid] = {}  # our id -> local pid
        self.next_export_id = 1
        self.proxies: dict[int, Pid] = {}  # peer's id -> proxy pid
        self.proxy_ids: dict[Pid, int] = {}  # proxy pid -> peer's id
        self.attached = False  # a live connection currently uses these tables
        self.ended_exports: dict[int, Pid] = {}  # our id -> local pid whose process ended
        self.ended_export_ids: dict[Pid, int] = {}  # local pid whose process ended -> our id
        self.dead_proxies: dict[int, Pid] = {}  # peer's id -> proxy pid that ended
        self.dead_proxy_ids: dict[Pid, int] = {}  # proxy pid that ended -> peer's id
        self._dead_queue: list[bytes] = []  # DEAD frames waiting for a resume
        self._recent_dead: deque[bytes] = deque(maxlen=RESEND_DEAD)  # the last DEAD frames
        self.queue = Pending()  # commands that wait (docs/protocol.md 12.6)
        self.outbox: Outbox | None = None  # with `acks`: counts and unacknowledged frames
        self.credit: Credit | None = None  # with `credit`: the counts both ways (12)
        self.confirms: dict[int, tuple[Any, Any]] = {}  # mc issued, not answered: ref -> (dest, msg)
        self.next_ref = 1  # the Ref of the next confirmed send (11.8)

    # -- id tables ------------------------------------------------------------------------

    def export(self, pid: Pid) -> tuple[int, bool]:
        """Our id for ``pid``: (id, True) when this call created it."""
        ident = self.export_ids.get(pid)
        if ident is not None:
            return ident, False
        ident = self.next_export_id
        self.next_export_id = ident + 1
        self.export_ids[pid] = ident
        self.exports[ident] = pid
        return ident, True

    def unexport(self, pid: Pid) -> int | None:
        """The process ``pid`` ended: its id leaves the table (into the graves)."""
        ident = self.export_ids.pop(pid, None)
        if ident is not None:
            del self.exports[ident]
            graves = self.ended_exports
            graves[ident] = pid
            self.ended_export_ids[pid] = ident
            if len(graves) > GRAVES:
                oldest = next(iter(graves))
                self.ended_export_ids.pop(graves.pop(oldest), None)
        return ident

    def forget_export(self, pid: Pid) -> None:
        """Undo the newest export, which the peer never saw (the frame was not sent)."""
        ident = self.export_ids.pop(pid)
        del self.exports[ident]
        if ident == self.next_export_id - 1:
            self.next_export_id = ident

    def add_proxy(self, remote_id: int, pid: Pid) -> None:
        """Record ``pid`` as the proxy of the peer's process ``remote_id``."""
        self.proxies[remote_id] = pid
        self.proxy_ids[pid] = remote_id

    def drop_proxy(self, remote_id: int) -> Pid | None:
        """The peer's process ``remote_id`` ended: its proxy leaves the table (into the graves)."""
        pid = self.proxies.pop(remote_id, None)
        if pid is not None:
            self.proxy_ids.pop(pid, None)
            self.dead_proxies[remote_id] = pid
            self.dead_proxy_ids[pid] = remote_id
            if len(self.dead_proxies) > GRAVES:
                oldest = next(iter(self.dead_proxies))
                del self.dead_proxy_ids[self.dead_proxies.pop(oldest)]
        return pid

    # -- the outbox -----------------------------------------------------------------------

    def dead_sent(self, frame: bytes, *, queued: bool) -> None:
        """The DEAD notice ``frame`` (an encoded frame) of an ended export was sent, or,
        with ``queued``, is kept for a resume."""
        self._recent_dead.append(frame)
        if queued:
            self._dead_queue.append(frame)

    def take_dead_notices(self) -> list[bytes]:
        """After a resume: the DEAD frames to send, in order (docs/protocol.md section 7).

        The last :data:`RESEND_DEAD` notices that are not queued, then the queued ones;
        the queue is emptied, the recent ones are kept for a later resume.
        """
        queued, self._dead_queue = self._dead_queue, []
        waiting = set(queued)
        return [f for f in self._recent_dead if f not in waiting] + queued

    def dead_notices_waiting(self) -> int:
        """DEAD notices kept for a resume (not sent yet)."""
        return len(self._dead_queue)

    @property
    def pending(self) -> list[Any]:
        """The DEAD terms kept for a resume, oldest first (read only; a decoded copy)."""
        return [decode(frame) for frame in self._dead_queue]

    def defer(self, command: Deferred) -> None:
        """Keep a command the transport could not send now (sent by ``send_deferred``)."""
        self.queue.add(dest_key(command), command)

    def deferred_count(self) -> int:
        """Commands waiting in :meth:`defer`'s queue."""
        return self.queue.count

    def new_ref(self) -> int:
        """The ``Ref`` of a new confirmed send (a per-session counter, 11.8)."""
        ref = self.next_ref
        self.next_ref = ref + 1
        return ref

    def undelivered(self, reason: str, peer_node: Atom | None) -> MessagesUndelivered | None:
        """The session ends (with ``acks``): the report of the messages it cannot vouch
        for (docs/protocol.md 11.7), or None when there are none or no ``acks``. Empties
        the outbox and the deferred commands (they are never sent in another session)."""
        outbox = self.outbox
        if outbox is None:
            return None
        in_outbox = {note[2] for _frame, note in outbox.frames if note is not None and note[2]}
        refs = list(self.confirms)
        # Confirmed sends acknowledged but not answered: delivery unknown.
        messages = [UndeliveredMessage(d, m, True, "unconfirmed") for r, (d, m) in self.confirms.items() if r not in in_outbox]
        messages += outbox.undelivered()
        for c in self.queue.take_all():
            if type(c) is SendMessage:
                messages.append(UndeliveredMessage(c.dest, c.payload, False, "unsent"))
            elif type(c) is ConfirmedSend:
                messages.append(UndeliveredMessage(c.dest, c.payload, True, "unsent"))
                refs.append(c.ref)
        self.confirms.clear()
        if not messages and not refs:
            return None
        return MessagesUndelivered(reason, self.id, peer_node, tuple(messages), tuple(refs))

    def take_deferred(self) -> list[Deferred]:
        """Empty the deferred commands' queue and return what it held, oldest first."""
        return self.queue.take_all()

    def hand_over(self, successor: Session) -> None:
        """This session was not resumed: deferred commands move to ``successor`` (the
        ids they name are checked again when they are sent); the rest ends here. With
        ``acks`` nothing moves: call :meth:`undelivered` first (docs/protocol.md 11.7)."""
        for command in self.queue.take_all():
            successor.defer(command)

    def expire(self) -> list[tuple[Pid, int]]:
        """End the session for good: forget every table and the outbox; returns the
        (proxy, remote id) pairs, which the runtime terminates with ``noconnection``."""
        proxies = list(self.proxy_ids.items())
        for table in (
            self.export_ids,
            self.exports,
            self.proxies,
            self.proxy_ids,
            self.ended_exports,
            self.ended_export_ids,
            self.dead_proxies,
            self.dead_proxy_ids,
            self.queue,
            self._recent_dead,
            self.confirms,
        ):
            table.clear()
        self._dead_queue = []
        if self.outbox is not None:
            self.outbox.undelivered()
        return proxies

    def __repr__(self) -> str:
        sid = self.id.hex() if self.id else None
        return f"Session(id={sid}, exports={len(self.exports)}, proxies={len(self.proxies)})"
