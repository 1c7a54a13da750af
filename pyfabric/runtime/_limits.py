"""Mailbox options (the bound, the overflow policy, their defaults and checks) and the
statistics snapshot of one process: the values :class:`~._process.LocalProcess` is built
with and reports, apart from the mailbox code itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pyfabric.etf import Atom, Pid

__all__ = [
    "ProcessStatistics",
    "Overflow",
    "OVERFLOW_POLICIES",
    "DEFAULT_MAX_MAILBOX",
    "DEFAULT_OVERFLOW",
    "check_max_mailbox",
    "check_overflow",
]

Overflow = Literal["exit", "drop_new", "drop_old"]
OVERFLOW_POLICIES: tuple[str, ...] = ("exit", "drop_new", "drop_old")

DEFAULT_MAX_MAILBOX = 100_000
"""Default bound of a mailbox, in messages.

Erlang mailboxes are unbounded; ours are not, so that a fast remote sender cannot exhaust
the Python node's memory. The value holds about one second of traffic at the 100k msg/s
target, far more than any burst a live receiver lets accumulate, so reaching it means the
receiver is stuck or far too slow, which the overflow policy then makes visible.
"""

DEFAULT_OVERFLOW: Overflow = "exit"
"""Default overflow policy: the process exits with reason ``mailbox_overflow``.

Like Erlang's ``max_heap_size`` kill, this turns an overloaded receiver into an ordinary,
observable process exit (links and monitors fire, a ``Mailbox`` raises
:class:`ProcessExited` on its next receive) instead of silently losing messages.
``"drop_new"`` (discard the incoming message) and ``"drop_old"`` (discard the oldest queued
message) are the alternatives; both log a warning once per overflow episode.
"""


@dataclass(frozen=True, slots=True)
class ProcessStatistics:
    """A snapshot of one process, from :meth:`LocalProcess.statistics`."""

    pid: Pid
    alive: bool
    exit_reason: Any
    queued: int
    max_mailbox: int
    overflow: str
    received: int
    """Messages accepted into the mailbox so far (dropped ones excluded)."""
    dropped: int
    """Messages lost to the overflow policy so far."""
    links: int
    monitors: int
    """Monitors this process holds on others."""
    monitored_by: int
    trap_exit: bool
    registered_name: Atom | None


def check_max_mailbox(value: int) -> int:
    """``value`` if it is a valid ``max_mailbox`` (a positive int), else ``ValueError``."""
    if type(value) is not int or value < 1:
        raise ValueError(f"max_mailbox must be a positive int, got {value!r}")
    return value


def check_overflow(value: str) -> Overflow:
    """``value`` if it is one of :data:`OVERFLOW_POLICIES`, else ``ValueError``."""
    if value not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}; got {value!r}")
    return value  # type: ignore[return-value]
