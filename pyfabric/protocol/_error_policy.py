"""The error policy (docs/protocol.md section 9): what a bad frame costs.

A frame that cannot be handled is *dropped*: a ``FrameDropped`` event, and an
``{error, Code, Message}`` frame to a peer that agreed on ``error`` (never in answer to
an error frame). More than ``max_errors`` drops among the last ``error_window`` received
frames is *fatal* (``too_many_errors``), as is anything that breaks the framing or the
handshake. :class:`ErrorWindow` counts; the connection applies the verdict.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ._constants import A_ERROR, MAX_ERROR_TEXT, plain
from ._errors import ProtocolError, RemoteProtocolError

__all__ = ["ErrorWindow", "error_frame", "is_error_frame", "HandshakeFailure"]


class ErrorWindow:
    """Dropped frames among the most recent received ones."""

    __slots__ = ("max_errors", "window", "_frames", "_drops")

    def __init__(self, max_errors: int, window: int) -> None:
        self.max_errors = max_errors
        self.window = window
        self._frames = 0
        self._drops: deque[int] = deque()

    def frame_received(self) -> None:
        self._frames += 1

    def dropped(self) -> RemoteProtocolError | None:
        """Record a drop of the current frame; the fatal error if that was one too many."""
        drops = self._drops
        drops.append(self._frames)
        while drops and drops[0] <= self._frames - self.window:
            drops.popleft()
        if len(drops) > self.max_errors:
            return RemoteProtocolError("too_many_errors", f"{len(drops)} dropped frames among the last {self.window}")
        return None


def error_frame(error: ProtocolError) -> bytes:
    """The ``{error, Code, Message}`` frame telling the peer about ``error``."""
    return plain((A_ERROR, error.code.encode(), error.message[:MAX_ERROR_TEXT].encode("utf-8", "replace")))


def is_error_frame(term: Any) -> bool:
    return type(term) is tuple and len(term) > 0 and term[0] == A_ERROR


class HandshakeFailure(Exception):
    """Abort the handshake (the connection turns it into AuthFailed + ConnectionClosed).

    ``remote``: the peer's fault (False: our own refusal, e.g. legacy auth disabled).
    ``code``: ``"auth_failed"``, or ``"node_in_use"`` for a client node name a routing
    server refused (docs/protocol.md 16.1); ``reply``: the server's auth frame to write
    instead of ``{auth, failed}`` (the refusal's ``{auth, success, Mac, InfoBin}``).
    """

    def __init__(self, message: str, remote: bool = True, *, code: str = "auth_failed", reply: bytes | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.remote = remote
        self.code = code
        self.reply = reply
