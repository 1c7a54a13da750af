"""Options shared by clients and servers, validated once."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..etf import Atom, DecodeLimits
from ..protocol import DEFAULT_MAX_EXPORTS, DEFAULT_MAX_FRAME, DEFAULT_MAX_PROXIES, FEATURES, NamePolicy

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

DEFAULT_MAX_PENDING = 10_000
"""Sends queued while disconnected, at most: bounded so a dead peer cannot eat memory."""

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
    """What every peer link of a client or server is configured with."""

    secret: bytes
    policy: NamePolicy
    allow_legacy_auth: bool = False
    features: frozenset[str] = FEATURES
    max_frame: int = DEFAULT_MAX_FRAME
    heartbeat: float = DEFAULT_HEARTBEAT
    decode_limits: DecodeLimits | None = None
    compress: bool = False
    when_disconnected: str = "wait"
    max_pending: int = DEFAULT_MAX_PENDING
    max_proxies: int = DEFAULT_MAX_PROXIES
    max_exports: int = DEFAULT_MAX_EXPORTS

    @property
    def heartbeat_ms(self) -> int:
        return int(self.heartbeat * 1000) if "heartbeat" in self.features else 0

    @classmethod
    def build(
        cls,
        secret: bytes | str,
        *,
        allowed: Iterable[Atom | str] | Callable[[str], bool] = (),
        force_allowed: Iterable[Atom | str] = (),
        allow_legacy_auth: bool = False,
        features: Iterable[str] | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        heartbeat: float = DEFAULT_HEARTBEAT,
        decode_limits: DecodeLimits | None = None,
        compress: bool = False,
        when_disconnected: str = "wait",
        max_pending: int = DEFAULT_MAX_PENDING,
        max_proxies: int = DEFAULT_MAX_PROXIES,
        max_exports: int = DEFAULT_MAX_EXPORTS,
    ) -> PeerOptions:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not isinstance(secret, (bytes, bytearray)) or not secret:
            raise ValueError("secret must be a non-empty str or bytes")
        if when_disconnected not in WHEN_DISCONNECTED:
            raise ValueError(f"when_disconnected must be one of {WHEN_DISCONNECTED}, got {when_disconnected!r}")
        if heartbeat < 0 or max_pending < 0:
            raise ValueError("heartbeat and max_pending must not be negative")
        if max_proxies < 1 or max_exports < 1:
            raise ValueError("max_proxies and max_exports must be at least 1")
        feats = FEATURES if features is None else frozenset(features)
        return cls(
            secret=bytes(secret),
            policy=NamePolicy(allowed, force=force_allowed),
            allow_legacy_auth=bool(allow_legacy_auth),
            features=feats,
            max_frame=max_frame,
            heartbeat=heartbeat,
            decode_limits=decode_limits,
            compress=compress,
            when_disconnected=when_disconnected,
            max_pending=max_pending,
            max_proxies=max_proxies,
            max_exports=max_exports,
        )
