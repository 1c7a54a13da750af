"""The pending queue of a session: commands that wait, in issue order per destination.

Commands wait while disconnected, and with ``acks`` / ``credit`` while the outbox is full
or their destination has no credit (docs/protocol.md 11.4, 12.2, 12.6). One destination's
commands leave in the order they were issued; a destination out of credit does not hold
the others back. :meth:`Pending.pump` offers the heads, oldest first, to an ``attempt``
function that issues a command or says why it must wait longer.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["Pending", "ISSUED", "DEST", "CONN", "STOP"]

ISSUED = 0
"""``attempt`` issued the command (or dropped it for good): it leaves the queue."""
DEST = 1
"""Its destination is out of credit: that destination waits for :meth:`Pending.unblock`."""
CONN = 2
"""A connection-wide limit holds this kind of command (message window, ``max_confirms``):
others may still go."""
STOP = 3
"""Nothing can go now (the outbox is full)."""


class Pending:
    """Waiting commands per destination key, with one issue order across keys."""

    __slots__ = ("_queues", "_ready", "_blocked", "_seq", "count")

    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[tuple[int, Any]]] = {}
        self._ready: list[tuple[int, Hashable]] = []  # heads of the keys not blocked
        self._blocked: set[Hashable] = set()
        self._seq = 0
        self.count = 0
        """Commands waiting (read it, never set it: the hot paths of the transport check it)."""

    def __len__(self) -> int:
        return self.count

    def has(self, key: Hashable) -> bool:
        """Do commands to ``key`` wait (a new one must wait behind them)?"""
        return key in self._queues

    def waiting_for(self, key: Hashable) -> int:
        """How many commands wait for ``key``."""
        queue = self._queues.get(key)
        return len(queue) if queue is not None else 0

    def add(self, key: Hashable, command: Any) -> None:
        """Queue ``command`` behind everything issued before it to ``key``."""
        seq = self._seq
        self._seq = seq + 1
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            if key not in self._blocked:
                heapq.heappush(self._ready, (seq, key))
        queue.append((seq, command))
        self.count += 1

    def unblock(self, key: Hashable) -> None:
        """Credit for ``key`` came back: its head may be offered again."""
        if key in self._blocked:
            self._blocked.discard(key)
            queue = self._queues.get(key)
            if queue:
                heapq.heappush(self._ready, (queue[0][0], key))

    def pump(self, attempt: Callable[[Any], int]) -> None:
        """Offer the heads, oldest first, to ``attempt`` until nothing more can go."""
        ready = self._ready
        queues = self._queues
        held = []
        while ready:
            key = ready[0][1]
            queue = queues[key]
            result = attempt(queue[0][1])
            if result == ISSUED:
                queue.popleft()
                self.count -= 1
                if queue:
                    heapq.heapreplace(ready, (queue[0][0], key))
                else:
                    heapq.heappop(ready)
                    del queues[key]
            elif result == DEST:
                heapq.heappop(ready)
                self._blocked.add(key)
            elif result == CONN:
                held.append(heapq.heappop(ready))
            else:
                break
        for item in held:
            heapq.heappush(ready, item)

    def take_all(self) -> list[Any]:
        """Empty the queue; its commands in issue order."""
        entries = sorted((entry for queue in self._queues.values() for entry in queue), key=lambda e: e[0])
        self.clear()
        return [command for _seq, command in entries]

    def clear(self) -> None:
        self._queues.clear()
        self._ready.clear()
        self._blocked.clear()
        self.count = 0
