"""The closed set of exceptions raised by :mod:`pyfabric.protocol`.

    ProtocolError                 has ``.code`` (docs/protocol.md section 9, or ``illegal_state``)
    ├── LocalProtocolError        our own caller misused the core (illegal command in this
    │   │                         state, a value the peer cannot carry, a frame too large
    │   │                         for the peer); nothing was written, the connection is intact
    │   └── FeatureNotSupported   the command needs a feature the peer did not agree on
    ├── RemoteProtocolError       the peer broke the protocol (carried by ``ConnectionClosed``
    │                             and ``FrameDropped`` events, never raised by ``next_event``)
    └── AuthenticationError       the handshake failed (carried by ``AuthFailed``)

Nothing a peer sends makes the core raise: remote faults become events. Anything else
escaping the core is a bug.
"""

from __future__ import annotations

__all__ = [
    "CODES",
    "ProtocolError",
    "LocalProtocolError",
    "FeatureNotSupported",
    "RemoteProtocolError",
    "AuthenticationError",
    "ConfirmRefused",
    "NodeNameInUse",
]

# The codes of docs/protocol.md section 9 (the ones that travel in error frames), plus
# ``illegal_state`` for a command our own caller issued in the wrong state (never sent).
CODES = frozenset(
    {
        "frame_too_large",
        "auth_failed",
        "bad_term",
        "unknown_frame",
        "unknown_id",
        "not_allowed",
        "bad_payload",
        "limit",
        "too_many_errors",
        "illegal_state",
        "bad_ack",
        "not_resumable",
        "credit_exceeded",
        "credit_overflow",
        "node_in_use",
    }
)


class ProtocolError(Exception):
    """Base class of every protocol error; ``code`` says which class of error it is."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:  # pragma: no cover - a bug in the core itself
            raise AssertionError(f"unknown protocol error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class LocalProtocolError(ProtocolError):
    """Our own caller did something the protocol does not allow; nothing was sent."""


class FeatureNotSupported(LocalProtocolError):
    """The command needs a feature this peer does not support or did not agree on."""

    def __init__(self, feature: str, message: str | None = None, code: str = "unknown_frame") -> None:
        super().__init__(
            code,
            message or f"{feature!r} is not supported by this peer (feature not agreed)",
        )
        self.feature = feature


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class AuthenticationError(ProtocolError):
    """The handshake failed: wrong secret, refused legacy auth, bad or late handshake frame."""

    def __init__(self, message: str, code: str = "auth_failed") -> None:
        super().__init__(code, message)


class NodeNameInUse(AuthenticationError):
    """A routing server refused our client node name: another connected client holds it
    (docs/protocol.md 16.1). The credentials were fine; a later attempt may succeed once
    the other client is gone."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "node_in_use")


class ConfirmRefused(RemoteProtocolError):
    """A confirmed send (``mc``) refused by its receiver: dropped like a refused ``m``, but
    its ``mc_result`` already tells the peer, so no error frame (docs/protocol.md 11.8)."""
