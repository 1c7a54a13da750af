"""Options shared by clients and servers, validated once.

A :class:`PeerOptions` is the protocol core's :class:`~pyfabric.protocol.ConnectionConfig`
plus what only a transport needs (heartbeat timing, the queue kept while disconnected).
``aconnect`` and ``serve`` pass every option they do not use themselves to
:meth:`PeerOptions.build`, which passes every one it does not use to
:meth:`ConnectionConfig.build`: a new connection option is one new field there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..etf import Atom
from ..protocol import ConnectionConfig, MessagesUndelivered

__all__ = [
    "PeerOptions",
    "DEFAULT_HEARTBEAT",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_SESSION_TIMEOUT",
    "DEFAULT_WRITE_BUFFER_HIGH",
]

DEFAULT_HEARTBEAT = 15.0
"""Seconds of silence after which we send a heartbeat (extended peers only); a peer silent
for three of its own intervals is considered lost."""

DEFAULT_MAX_PENDING = 250_000
"""Sends and link commands waiting per connection, at most: while disconnected, and with
``acks`` also while the outbox is full (docs/protocol.md 12.6, 13.2); bounded so a dead or
slow peer cannot eat memory. Beyond it a send raises :class:`SendQueueFull`."""

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
"""Seconds a handshake may take before the connection is closed."""

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds a TCP (and TLS) connect may take."""

DEFAULT_SESSION_TIMEOUT = 60.0
"""Seconds a server keeps a disconnected client's session (its proxies and ids) for a resume."""

DEFAULT_WRITE_BUFFER_HIGH = 4 * 1024 * 1024
"""Bytes buffered for the socket above which ``drain()`` waits (backpressure)."""

WHEN_DISCONNECTED = ("wait", "error")


@dataclass(frozen=True, slots=True)
class PeerOptions:
    """What every peer link of a client or server is configured with.

    ``config``: the protocol options of every connection. ``heartbeat``: seconds of
    silence before we send a heartbeat (announced to the peer as
    ``config.heartbeat_interval`` ms when the feature is offered). ``when_disconnected``:
    ``"wait"`` (keep up to ``max_pending`` sends for the next connection) or ``"error"``.
    ``on_undelivered``: called with a :class:`~pyfabric.protocol.MessagesUndelivered` when
    a session with ``acks`` ends with messages it cannot vouch for, or a local process's
    message overflows ``max_pending`` (docs/protocol.md 11.7, 12.6); they are logged too.
    """

    config: ConnectionConfig
    heartbeat: float = DEFAULT_HEARTBEAT
    when_disconnected: str = "wait"
    max_pending: int = DEFAULT_MAX_PENDING
    refuse_remote_exits: bool | frozenset[Atom] = False
    """True: no peer may link to or send an exit signal to any local process; a set of
    names: not to the processes registered under them (README "Security")."""
    on_undelivered: Callable[[MessagesUndelivered], None] | None = None

    @property
    def heartbeat_ms(self) -> int:
        """The heartbeat interval announced to the peer, ms (0: none)."""
        return self.config.heartbeat_interval

    @classmethod
    def build(
        cls,
        secret: bytes | str,
        *,
        heartbeat: float = DEFAULT_HEARTBEAT,
        when_disconnected: str = "wait",
        max_pending: int = DEFAULT_MAX_PENDING,
        compress: bool = False,
        refuse_remote_exits: bool | Iterable[Atom | str] = False,
        on_undelivered: Callable[[MessagesUndelivered], None] | None = None,
        **options: Any,
    ) -> PeerOptions:
        """Check the options; ``compress`` is ``ConnectionConfig.compress_messages`` and
        every other keyword goes to :meth:`ConnectionConfig.build` (``allowed``,
        ``force_allowed``, ``allow_legacy_auth``, ``features``, ``max_frame``,
        ``decode_limits``, ``max_proxies``, ``max_exports``, ...)."""
        if when_disconnected not in WHEN_DISCONNECTED:
            raise ValueError(f"when_disconnected must be one of {WHEN_DISCONNECTED}, got {when_disconnected!r}")
        if heartbeat < 0 or max_pending < 0:
            raise ValueError("heartbeat and max_pending must not be negative")
        if "heartbeat_interval" in options:
            raise TypeError("pass heartbeat (seconds) rather than heartbeat_interval to a transport")
        config = ConnectionConfig.build(secret, compress_messages=bool(compress), **options)
        if "heartbeat" in config.features:
            config = config.replace(heartbeat_interval=int(heartbeat * 1000))
        refuse: bool | frozenset[Atom] = (
            refuse_remote_exits
            if isinstance(refuse_remote_exits, bool)
            else frozenset(n if isinstance(n, Atom) else Atom(n) for n in refuse_remote_exits)
        )
        return cls(
            config=config,
            heartbeat=heartbeat,
            when_disconnected=when_disconnected,
            max_pending=max_pending,
            refuse_remote_exits=refuse,
            on_undelivered=on_undelivered,
        )
