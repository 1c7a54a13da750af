"""The `acks` state of one session: the counts both ways and the outbox (docs/protocol.md 11).

Sequence numbers are implicit: :attr:`Outbox.sent` counts the sequenced frames we issued,
:attr:`Outbox.received` the ones we handled from the peer. The outbox keeps every frame
we issued and the peer has not acknowledged (numbers ``acked + 1 .. sent``) as the exact
bytes written, so that a resume replays them unchanged from the peer's count + 1. A
message frame keeps its destination and message too, for the report of section 11.7.
"""

from __future__ import annotations

from collections import deque
from typing import Any, TypeGuard

from ._events import UndeliveredMessage

__all__ = ["Outbox", "Note"]

Note = tuple[Any, Any, int]
"""What a message frame remembers: (destination as the user gave it, message, the ``Ref``
of a confirmed send or 0)."""


class Outbox:
    """Counts and unacknowledged frames of a session with ``acks`` (see the module docstring)."""

    __slots__ = ("sent", "acked", "received", "ack_sent", "frames", "nbytes")

    def __init__(self) -> None:
        self.sent = 0  # sequenced frames we issued (the last one's number)
        self.acked = 0  # the peer has handled our frames 1..acked
        self.received = 0  # we have handled the peer's frames 1..received
        self.ack_sent = 0  # the last count we gave the peer (ack frame or resume handshake)
        self.frames: deque[tuple[bytes, Note | None]] = deque()  # numbers acked+1 .. sent
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.frames)

    def issue(self, frame: bytes, note: Note | None = None) -> None:
        """A sequenced frame was issued (written, or kept for the replay): it gets the next number."""
        self.sent += 1
        self.frames.append((frame, note))
        self.nbytes += len(frame)

    def has_room(self, max_frames: int, max_bytes: int) -> bool:
        """May a user command's frame be admitted (docs/protocol.md 11.4)?"""
        return len(self.frames) < max_frames and self.nbytes < max_bytes

    def in_range(self, count: object) -> TypeGuard[int]:
        """Is ``count`` (the peer's ``received`` in a resume) one we can replay from?"""
        return type(count) is int and self.acked <= count <= self.sent

    def ack(self, n: Any) -> bool:
        """``{ack, N}``: drop frames up to ``n``; False (nothing changed) if ``n`` is not
        an integer above the previous ack and at most :attr:`sent` (``bad_ack``)."""
        if type(n) is not int or not self.acked < n <= self.sent:
            return False
        pop = self.frames.popleft
        nbytes = self.nbytes
        for _ in range(n - self.acked):
            nbytes -= len(pop()[0])
        self.nbytes = nbytes
        self.acked = n
        return True

    def resume(self, peer_count: int) -> list[bytes]:
        """The peer's count in a resume handshake (checked with :meth:`in_range`) acks
        what it covers; returns the frames to replay, in order."""
        if peer_count > self.acked:
            self.ack(peer_count)
        self.ack_sent = self.received  # our count travelled in the handshake
        return [frame for frame, _note in self.frames]

    def handled(self) -> None:
        """We handled one more sequenced frame of the peer."""
        self.received += 1

    def owed(self) -> int:
        """Frames handled since the last count we gave the peer."""
        return self.received - self.ack_sent

    def undelivered(self) -> list[UndeliveredMessage]:
        """The messages written and not acknowledged, oldest first; the outbox is emptied."""
        out = [UndeliveredMessage(note[0], note[1], bool(note[2]), "unconfirmed") for _f, note in self.frames if note is not None]
        self.frames.clear()
        self.nbytes = 0
        return out
