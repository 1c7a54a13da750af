"""Which unauthenticated connection makes room for a new one (a server's pending table).

A server keeps every connection still in its handshake here, oldest first, also grouped by
address (IPv4 address, IPv6 /64: :func:`~._throttle.address_key`). When the table, one
address's share of it or the server's connection table is full, the new connection is not
refused: the oldest pending connection that has sent nothing yet is closed instead (else
the oldest pending one), so idle sockets can delay a real client, which sends its hello
at once, but never lock it out (issue 11). "Sent" counts bytes the kernel holds that the
loop has not read yet: a server accepts connections in batches, so a real client's hello
can be waiting unread while many newer idle connections from its address arrive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = [
    "PendingTable",
    "DEFAULT_MAX_PENDING_HANDSHAKES",
    "DEFAULT_MAX_PENDING_PER_ADDRESS",
    "DEFAULT_SERVER_HANDSHAKE_TIMEOUT",
]

_log = logging.getLogger("pyfabric.server")

DEFAULT_MAX_PENDING_HANDSHAKES = 128
"""Connections still in their handshake (slowloris defence). When full, a new connection is
not refused: it takes the place of the oldest pending one (one that has sent nothing first),
so a flood of idle connections can delay legitimate clients but never lock them out."""
DEFAULT_MAX_PENDING_PER_ADDRESS = 32
"""Pending handshakes from one address (IPv4 address, IPv6 /64); a new one from an address
at its limit takes the place of that address's oldest pending one (same rule as above),
so one host cannot fill the table for the others."""
DEFAULT_SERVER_HANDSHAKE_TIMEOUT = 5.0
"""Seconds an unauthenticated client has to finish its handshake (TLS included): a real
client needs two round trips. A timeout counts as a failed authentication of its address
(``max_auth_failures``), so a host that keeps connections idle gets blocked like a guesser."""
EVICTION_LOG_INTERVAL = 10.0
"""Seconds between two warnings about evicted connections (an attack evicts thousands)."""

E = TypeVar("E")


class PendingTable(Generic[E]):
    """Pending entries (any object), oldest first, per address key; see the module docstring.

    ``heard(entry)`` says whether the entry's peer has sent anything; ``evict(entry)``
    closes it (the table has already forgotten it).
    """

    def __init__(
        self,
        max_pending: int,
        max_per_address: int,
        *,
        heard: Callable[[E], bool],
        evict: Callable[[E], None],
        label: Callable[[E], str] = repr,
    ) -> None:
        if max_pending < 1 or max_per_address < 1:
            raise ValueError("max_pending_handshakes and max_pending_per_address must be at least 1")
        self.max_pending = max_pending
        self.max_per_address = max_per_address
        self._heard = heard
        self._evict = evict
        self._label = label
        self._all: dict[E, Any] = {}  # entry -> its address key
        self._by_key: dict[Any, dict[E, None]] = {}
        self._logged = 0.0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._all)

    def make_room(self, key: Any, address: str | None, connections: Callable[[], int], max_connections: int) -> None:
        """Before adding a connection from ``key``: evict whatever the limits require
        (``connections()``: the server's open connections, pending ones included)."""
        same = self._by_key.get(key)
        if same is not None and len(same) >= self.max_per_address:
            self._evict_one(same, f"{self.max_per_address} pending handshakes from {address} (max_pending_per_address)")
        if len(self._all) >= self.max_pending:
            self._evict_one(self._all, f"{self.max_pending} pending handshakes (max_pending_handshakes)")
        if self._all and connections() == max_connections > 0:  # room for exactly this one
            self._evict_one(self._all, f"{max_connections} connections (max_connections)")

    def add(self, entry: E, key: Any) -> None:
        self._all[entry] = key
        self._by_key.setdefault(key, {})[entry] = None

    def remove(self, entry: E) -> bool:
        """Forget ``entry`` (its handshake ended); False if it was not pending."""
        if entry not in self._all:
            return False
        key = self._all.pop(entry)
        same = self._by_key.get(key)
        if same is not None:
            same.pop(entry, None)
            if not same:
                del self._by_key[key]
        return True

    def _evict_one(self, among: dict[E, Any], why: str) -> None:
        victim = next((e for e in among if not self._heard(e)), None)
        if victim is None:
            victim = next(iter(among))
        self.remove(victim)
        self.evicted += 1
        now = time.monotonic()
        if now - self._logged >= EVICTION_LOG_INTERVAL:
            self._logged = now
            _log.warning(
                "%s closed unauthenticated to make room for a new connection: %s (%d evicted so far)",
                self._label(victim),
                why,
                self.evicted,
            )
        self._evict(victim)
