"""The `credit` state of one session: the counts both ways (docs/protocol.md section 12).

A :class:`Credit` is session state (it survives the connection, 12.5), owned by the
:class:`~._session.Session` like the :class:`~._outbox.Outbox`. As a sender it counts what
is in flight against the windows the peer announced (``out_*``, 12.2); as a receiver it
counts what it received and has not granted back (``in_*``, 12.3), the returns not granted
yet (``ret_*``), and the deliveries whose credit is owed until their mailbox has room.
Destinations are wire ``Dest`` values (an id, an atom, a ``(Name, Node)`` pair). No I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from ._constants import A_CREDIT

__all__ = ["Credit", "Windows"]

Windows = tuple[int, int, int]
"""``(credit_window, credit_bytes, credit_dest)`` as announced in the handshake (12.1)."""


class Credit:
    """Counts of a session with ``credit`` (see the module docstring)."""

    __slots__ = (
        "in_window",
        "in_bytes_max",
        "in_dest_max",
        "out_window",
        "out_bytes_max",
        "out_dest_max",
        "out_count",
        "out_bytes",
        "out_dest",
        "in_count",
        "in_bytes",
        "in_dest",
        "ret_count",
        "ret_bytes",
        "ret_dest",
        "owed",
        "_count_due",
        "_bytes_due",
        "_dest_due",
    )

    def __init__(self, ours: Windows, theirs: Windows) -> None:
        self.in_window, self.in_bytes_max, self.in_dest_max = ours  # what we grant the peer
        self.out_window, self.out_bytes_max, self.out_dest_max = theirs  # what the peer grants us
        self.out_count = 0
        self.out_bytes = 0
        self.out_dest: dict[Hashable, int] = {}
        self.in_count = 0
        self.in_bytes = 0
        self.in_dest: dict[Hashable, int] = {}
        self.ret_count = 0  # returns not granted yet
        self.ret_bytes = 0
        self.ret_dest: dict[Hashable, int] = {}
        self.owed: dict[Any, list[tuple[Hashable, int]]] = {}  # mailbox -> deliveries owed credit
        self._count_due = 0
        self._bytes_due = 0
        self._dest_due = 0
        self.set_grant_every(64)

    def set_grant_every(self, grant_every: int) -> None:
        """The thresholds of 12.4: ``grant_every`` or half the window, half of
        ``credit_dest`` (rounded up) for one destination, a quarter of ``credit_bytes``."""
        self._count_due = max(1, min(grant_every, self.in_window // 2))
        self._dest_due = (self.in_dest_max + 1) // 2
        self._bytes_due = max(1, self.in_bytes_max // 4)

    # -- sender (12.2) -----------------------------------------------------------------

    def dest_blocked(self, dest: Hashable) -> bool:
        """Is ``dest`` out of credit (``OutDest[Dest] = credit_dest``)?"""
        return self.out_dest.get(dest, 0) >= self.out_dest_max

    def conn_blocked(self) -> bool:
        """Is the connection's message window used up?"""
        return self.out_count >= self.out_window

    def bytes_fit(self, size: int) -> bool:
        """May a frame of ``size`` bytes go (a frame bigger than the byte window goes alone)?"""
        return self.out_bytes == 0 or self.out_bytes + size <= self.out_bytes_max

    def take(self, dest: Hashable, size: int) -> None:
        """A credited frame of ``size`` bytes to ``dest`` was issued."""
        self.out_count += 1
        self.out_bytes += size
        self.out_dest[dest] = self.out_dest.get(dest, 0) + 1

    def granted(self, grants: Any, nbytes: Any) -> tuple[str | None, list[Hashable]]:
        """``{credit, Grants, Bytes}`` received: apply it (clamped at 0). Returns an error
        text (``credit_overflow``, 13.4) or None, and the destinations it named."""
        if type(grants) is not list or type(nbytes) is not int or nbytes < 0:
            return "credit frame with a bad shape", []
        parsed = []
        for item in grants:
            if type(item) is not tuple or len(item) != 2 or type(item[1]) is not int or item[1] < 1:
                return "credit frame with a bad grant", []
            try:
                hash(item[0])
            except TypeError:
                return "credit frame with a bad destination", []
            parsed.append(item)
        error = None
        out_dest = self.out_dest
        total = 0
        for dest, count in parsed:
            have = out_dest.get(dest, 0)
            if count > have:
                error = f"credit for {count} messages to a destination with {have} outstanding"
                count = have
            if have - count:
                out_dest[dest] = have - count
            else:
                out_dest.pop(dest, None)
            total += count
        if total > self.out_count:
            error = error or f"credit for {total} messages with {self.out_count} outstanding"
            total = self.out_count
        if nbytes > self.out_bytes:
            error = error or f"credit for {nbytes} bytes with {self.out_bytes} outstanding"
            nbytes = self.out_bytes
        self.out_count -= total
        self.out_bytes -= nbytes
        return error, [dest for dest, _count in parsed]

    # -- receiver (12.3) ---------------------------------------------------------------

    def fits(self, dest: Hashable, size: int) -> bool:
        """Would a credited frame of ``size`` bytes to ``dest`` stay within our windows?"""
        return (
            self.in_count < self.in_window
            and self.in_dest.get(dest, 0) < self.in_dest_max
            and (self.in_bytes == 0 or self.in_bytes + size <= self.in_bytes_max)
        )

    def admit(self, dest: Hashable, size: int) -> bool:
        """A credited frame arrived: count it; False if it breaks a window (``credit_exceeded``)."""
        if self.admit_fitting(dest, size):
            return True
        self.in_count += 1
        self.in_bytes += size
        self.in_dest[dest] = self.in_dest.get(dest, 0) + 1
        return False

    def admit_fitting(self, dest: Hashable, size: int) -> bool:
        """:meth:`fits` and :meth:`admit` in one step (the fused ``m`` path): count a
        credited frame that fits our windows; False, nothing counted, for one that does not."""
        in_dest = self.in_dest
        held = in_dest.get(dest, 0)
        in_bytes = self.in_bytes
        if self.in_count >= self.in_window or held >= self.in_dest_max or (in_bytes and in_bytes + size > self.in_bytes_max):
            return False
        self.in_count += 1
        self.in_bytes = in_bytes + size
        in_dest[dest] = held + 1
        return True

    def give_back(self, dest: Hashable, size: int) -> bool:
        """The credit of one received frame is returned; True if a grant is due now (12.4)."""
        count = self.ret_count = self.ret_count + 1
        nbytes = self.ret_bytes = self.ret_bytes + size
        ret_dest = self.ret_dest
        n = ret_dest[dest] = ret_dest.get(dest, 0) + 1
        return count >= self._count_due or n >= self._dest_due or nbytes >= self._bytes_due

    def owe(self, mailbox: Any, dest: Hashable, size: int) -> None:
        """A delivery to ``mailbox`` (over ``mailbox_high``): its credit waits for room."""
        self.owed.setdefault(mailbox, []).append((dest, size))

    def recheck(self, has_room: Callable[[Any], bool]) -> bool:
        """Return the credit owed to the mailboxes that have room now; True if a grant is due."""
        due = False
        for mailbox in [m for m in self.owed if has_room(m)]:
            for dest, size in self.owed.pop(mailbox):
                due = self.give_back(dest, size) or due
        return due

    def returns_waiting(self) -> bool:
        """Returns not granted yet (a ``credit`` frame is owed within ``grant_delay``)."""
        return self.ret_count > 0

    def take_grant(self) -> tuple[Any, ...] | None:
        """The ``{credit, Grants, Bytes}`` term of the returns not granted (None if none);
        the counts drop by what it returns."""
        if not self.ret_count:
            return None
        in_dest = self.in_dest
        grants = []
        for dest, count in self.ret_dest.items():
            grants.append((dest, count))
            left = in_dest.get(dest, 0) - count
            if left > 0:
                in_dest[dest] = left
            else:
                in_dest.pop(dest, None)
        self.in_count -= self.ret_count
        self.in_bytes -= self.ret_bytes
        term = (A_CREDIT, grants, self.ret_bytes)
        self.ret_count = 0
        self.ret_bytes = 0
        self.ret_dest = {}
        return term
