"""The configuration of a connection: one frozen record, validated once.

:class:`ConnectionConfig` is what the core (:class:`~pyfabric.protocol.Connection`), the
transports (``aconnect``, ``serve`` and the blocking ``connect`` / ``start_server``) and
their shared ``PeerOptions`` all take, so an option is added in one place: a field here
(with its check in :meth:`ConnectionConfig.build`). Everything a transport function does
not know by name is passed on to :meth:`ConnectionConfig.build`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..etf import Atom, DecodeLimits
from ._constants import (
    DEFAULT_ACK_DELAY,
    DEFAULT_ACK_EVERY,
    DEFAULT_CREDIT_BYTES,
    DEFAULT_CREDIT_DEST,
    DEFAULT_CREDIT_WINDOW,
    DEFAULT_ERROR_WINDOW,
    DEFAULT_GRANT_DELAY,
    DEFAULT_GRANT_EVERY,
    DEFAULT_MAILBOX_HIGH,
    DEFAULT_MAX_CONFIRMS,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_ERRORS,
    DEFAULT_MAX_EXPORTS,
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_HANDSHAKE_FRAME,
    DEFAULT_MAX_PROXIES,
    DEFAULT_OUTBOX_BYTES,
    DEFAULT_OUTBOX_FRAMES,
    FEATURES,
    MAX_PACKET,
)
from ._policy import NamePolicy

__all__ = ["ConnectionConfig", "CONFIG_FIELDS"]

Allowed = Iterable[Atom | str] | Callable[[str], bool] | NamePolicy


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """The options of one side of a fabric connection (immutable; build with :meth:`build`).

    ``secret``: the shared secret. ``allowed``: the name policy (which of our registered
    names the peer may reach). ``allow_legacy_auth``: talk to original (MD5-only) peers.
    ``features``: the extension features we offer or accept. ``max_frame`` /
    ``max_handshake_frame``: the largest frame accepted after / before authentication.
    ``heartbeat_interval``: the interval announced to the peer, ms (0: none).
    ``max_errors`` / ``error_window``: dropped frames tolerated among recent ones.
    ``max_proxies`` / ``max_exports``: bounds of the session's id tables.
    ``decode_limits``: limits for received terms (default derived from ``max_frame``).
    ``compress_messages``: zlib-compress ``m`` frames to one of our peers when smaller.
    ``strings``: how received Erlang lists of small integers (STRING_EXT, e.g. ``[1,2,3]``
    or ``"abc"``) are delivered in messages and exit reasons: ``"str"`` (default,
    ``'\x01\x02\x03'``) or ``"list"`` (``[1, 2, 3]``); see ``docs/terms.md``.
    ``ack_every`` / ``ack_delay`` (s): with ``acks``, we acknowledge after that many
    frames or that long after the first unacknowledged one (docs/protocol.md 11.3).
    ``outbox_frames`` / ``outbox_bytes``: the bounds of a session's unacknowledged frames
    (11.4); a command beyond them waits in the session (bounded by the transport's
    ``max_pending``). ``max_confirms``: confirmed sends issued and not answered (11.8).
    ``credit_window`` / ``credit_bytes`` / ``credit_dest``: with ``credit``, the windows we
    grant the peer (messages and bytes in flight on the connection, messages to one
    destination; announced in the handshake, fixed for the session, docs/protocol.md 12.1).
    ``mailbox_high``: credit for a message is returned once its mailbox holds fewer;
    ``grant_every`` / ``grant_delay`` (s): credit frames are written after that many returns
    or that long after the first one (12.3, 12.4).
    """

    secret: bytes
    allowed: NamePolicy
    allow_legacy_auth: bool = False
    features: frozenset[str] = FEATURES
    max_frame: int = DEFAULT_MAX_FRAME
    max_handshake_frame: int = DEFAULT_MAX_HANDSHAKE_FRAME
    heartbeat_interval: int = 0
    max_errors: int = DEFAULT_MAX_ERRORS
    error_window: int = DEFAULT_ERROR_WINDOW
    max_proxies: int = DEFAULT_MAX_PROXIES
    max_exports: int = DEFAULT_MAX_EXPORTS
    decode_limits: DecodeLimits | None = None
    compress_messages: bool = False
    strings: str = "str"
    ack_every: int = DEFAULT_ACK_EVERY
    ack_delay: float = DEFAULT_ACK_DELAY
    outbox_frames: int = DEFAULT_OUTBOX_FRAMES
    outbox_bytes: int = DEFAULT_OUTBOX_BYTES
    max_confirms: int = DEFAULT_MAX_CONFIRMS
    credit_window: int = DEFAULT_CREDIT_WINDOW
    credit_bytes: int = DEFAULT_CREDIT_BYTES
    credit_dest: int = DEFAULT_CREDIT_DEST
    mailbox_high: int = DEFAULT_MAILBOX_HIGH
    grant_every: int = DEFAULT_GRANT_EVERY
    grant_delay: float = DEFAULT_GRANT_DELAY

    @classmethod
    def build(
        cls,
        secret: bytes | str,
        *,
        allowed: Allowed = (),
        force_allowed: Iterable[Atom | str] = (),
        features: Iterable[str] | None = None,
        **options: Any,
    ) -> ConnectionConfig:
        """Check and normalise the options; ``ValueError`` / ``TypeError`` name the bad one.

        ``allowed`` is a :class:`NamePolicy`, names, or a predicate on a name;
        ``force_allowed`` opens system names explicitly; ``features`` None means all of
        :data:`FEATURES`. Every other keyword is a field of this class.
        """
        unknown = set(options) - _OTHER_FIELDS
        if unknown:
            raise TypeError(f"unknown connection options {sorted(unknown)}; known: {sorted(CONFIG_FIELDS)}")
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not isinstance(secret, (bytes, bytearray)) or not secret:
            raise ValueError("secret must be a non-empty str or bytes")
        policy = allowed if isinstance(allowed, NamePolicy) else NamePolicy(allowed, force=force_allowed)
        feats = FEATURES if features is None else frozenset(features)
        unknown_features = feats - FEATURES
        if unknown_features:
            raise ValueError(f"unknown features {sorted(unknown_features)}; version 1 knows {sorted(FEATURES)}")
        config = cls(secret=bytes(secret), allowed=policy, features=feats, **options)
        config._check()
        return config

    def _check(self) -> None:
        if not 0 < self.max_frame <= MAX_PACKET or not 0 < self.max_handshake_frame <= MAX_PACKET:
            raise ValueError("max_frame and max_handshake_frame must be in 1..2**32-1")
        if self.max_proxies < 1 or self.max_exports < 1:
            raise ValueError("max_proxies and max_exports must be at least 1")
        if self.heartbeat_interval < 0:
            raise ValueError("heartbeat_interval must not be negative")
        if self.strings not in ("str", "list"):
            raise ValueError(f"strings must be 'str' or 'list', not {self.strings!r}")
        if self.ack_every < 1 or self.outbox_frames < 1 or self.outbox_bytes < 1:
            raise ValueError("ack_every, outbox_frames and outbox_bytes must be at least 1")
        if not self.ack_delay > 0 or not self.grant_delay > 0:
            raise ValueError("ack_delay and grant_delay must be positive (seconds)")
        windows = (self.credit_window, self.credit_bytes, self.credit_dest)
        if any(type(w) is not int or w < 1 for w in windows) or self.credit_dest > self.credit_window:
            raise ValueError("credit_window, credit_bytes and credit_dest must be integers >= 1, credit_dest <= credit_window")
        if self.max_confirms < 1 or self.mailbox_high < 1 or self.grant_every < 1:
            raise ValueError("max_confirms, mailbox_high and grant_every must be at least 1")

    def replace(self, **changes: Any) -> ConnectionConfig:
        """A copy with ``changes`` applied (checked like :meth:`build`)."""
        config = dataclasses.replace(self, **changes)
        config._check()
        return config

    def limits(self) -> DecodeLimits:
        """The decode limits of established-state frames."""
        if self.decode_limits is not None:
            return self.decode_limits
        return DecodeLimits(
            max_input_size=self.max_frame,
            max_binary_size=self.max_frame,
            max_decompressed_size=self.max_frame,
            max_depth=DEFAULT_MAX_DEPTH,
        )

    def handshake_limits(self) -> DecodeLimits:
        """The decode limits of handshake frames (tiny: the peer is not authenticated yet)."""
        size = self.max_handshake_frame
        return DecodeLimits(
            max_input_size=size,
            max_binary_size=size,
            max_decompressed_size=size,
            max_depth=16,
            max_container_len=256,
            max_total_terms=4096,
            max_bignum_bytes=16,
        )


CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(ConnectionConfig)) | {"force_allowed"}
"""The keyword names :meth:`ConnectionConfig.build` accepts (the fields and ``force_allowed``)."""
_OTHER_FIELDS = CONFIG_FIELDS - {"secret", "allowed", "force_allowed", "features"}
