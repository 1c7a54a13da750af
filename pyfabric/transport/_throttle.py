"""Per-address throttling of failed authentications (a server's defence against guessing).

After ``max_failures`` failed handshakes (wrong secret, refused legacy client, bad
handshake frames, or no complete handshake within the server's ``handshake_timeout``: a
host holding connections open without authenticating is treated like one guessing) from
one address within ``window`` seconds, new connections from that
address are refused at once for ``block_time`` seconds. IPv6 addresses count per /64 (one
host usually holds a whole /64). At most ``max_addresses`` addresses are tracked (the
least recently seen is forgotten first), so the table's memory is bounded.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable

__all__ = [
    "AuthThrottle",
    "DEFAULT_MAX_AUTH_FAILURES",
    "DEFAULT_AUTH_FAILURE_WINDOW",
    "DEFAULT_AUTH_BLOCK_TIME",
    "DEFAULT_MAX_TRACKED_ADDRESSES",
]

DEFAULT_MAX_AUTH_FAILURES = 5
"""Failed authentications from one address (within the window) that trigger a block; 0 = off."""
DEFAULT_AUTH_FAILURE_WINDOW = 60.0
"""Seconds over which failed authentications of one address are counted."""
DEFAULT_AUTH_BLOCK_TIME = 60.0
"""Seconds new connections from a blocked address are refused."""
DEFAULT_MAX_TRACKED_ADDRESSES = 10_000
"""Addresses remembered at most (least recently seen forgotten first)."""


class _Entry:
    __slots__ = ("failures", "blocked_until", "warned")

    def __init__(self, max_failures: int) -> None:
        self.failures: deque[float] = deque(maxlen=max_failures)
        self.blocked_until = 0.0
        self.warned = False


def address_key(address: str) -> str:
    """The unit an address is throttled as: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.version == 6:
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class AuthThrottle:
    """Counts failed authentications per address and says which addresses are blocked."""

    def __init__(
        self,
        max_failures: int = DEFAULT_MAX_AUTH_FAILURES,
        window: float = DEFAULT_AUTH_FAILURE_WINDOW,
        block_time: float = DEFAULT_AUTH_BLOCK_TIME,
        *,
        max_addresses: int = DEFAULT_MAX_TRACKED_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_failures < 0 or window < 0 or block_time < 0 or max_addresses < 1:
            raise ValueError("max_auth_failures, auth_failure_window and auth_block_time must not be negative")
        self.max_failures = max_failures
        self.window = window
        self.block_time = block_time
        self.max_addresses = max_addresses
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_failures > 0 and self.block_time > 0

    def __len__(self) -> int:
        return len(self._entries)

    def failed(self, address: str) -> bool:
        """Record a failed authentication; True when it starts a block of ``address``."""
        if not self.enabled:
            return False
        key = address_key(address)
        now = self._clock()
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(self.max_failures)
            while len(self._entries) > self.max_addresses:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        if entry.blocked_until > now:
            return False  # a handshake that was already under way when the block began
        failures = entry.failures
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        failures.append(now)
        if len(failures) >= self.max_failures:
            failures.clear()
            entry.blocked_until = now + self.block_time
            entry.warned = False
            return True
        return False

    def blocked(self, address: str) -> tuple[float, bool]:
        """``(seconds left, first refusal of this block)``; ``(0.0, False)`` when not blocked."""
        if not self.enabled:
            return 0.0, False
        key = address_key(address)
        entry = self._entries.get(key)
        if entry is None:
            return 0.0, False
        now = self._clock()
        left = entry.blocked_until - now
        if left > 0:
            first = not entry.warned
            entry.warned = True
            return left, first
        if entry.blocked_until:
            entry.blocked_until = 0.0
        if not entry.failures or entry.failures[-1] <= now - self.window:
            del self._entries[key]
        return 0.0, False
