"""The closed set of exceptions raised by :mod:`pyfabric.etf`.

Anything the codec raises for bad input or unencodable values is one of these;
any other exception escaping ``encode``/``decode`` is a bug.

    ETFError
    ├── DecodeError (also ValueError)      malformed or rejected input, has ``.offset``
    │   ├── TruncatedError                 input ended before the term was complete
    │   ├── LimitExceeded                  a DecodeLimits bound was hit, has ``.limit``
    │   ├── UnsafeTermError                rejected by policy (funs in safe mode, atoms
    │   │                                   outside the allow-list)
    │   └── UnsupportedTermError           valid ETF this codec deliberately does not
    │                                       decode (LOCAL_EXT, distribution header/atom cache)
    └── EncodeError (also TypeError)       a Python value that has no ETF form
"""

from __future__ import annotations

__all__ = [
    "ETFError",
    "DecodeError",
    "TruncatedError",
    "LimitExceeded",
    "UnsafeTermError",
    "UnsupportedTermError",
    "EncodeError",
]


class ETFError(Exception):
    """Base class of every error raised by the ETF codec."""


class DecodeError(ETFError, ValueError):
    """The input is not a valid (or acceptable) encoded term.

    ``offset`` is the byte offset in the input where the problem was found
    (for a compressed term: the offset of the compressed term; the message then
    also gives the offset inside the decompressed data).
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at offset {offset})")
        self.reason = message
        self.offset = offset


class TruncatedError(DecodeError):
    """The input ended before the term was complete (more bytes could make it valid)."""


class LimitExceeded(DecodeError):
    """A :class:`DecodeLimits` bound was exceeded; ``limit`` names the field."""

    def __init__(self, limit: str, message: str, offset: int) -> None:
        super().__init__(f"limit {limit} exceeded: {message}", offset)
        self.limit = limit


class UnsafeTermError(DecodeError):
    """The term is well formed but rejected by policy (safe mode or atom allow-list)."""


class UnsupportedTermError(DecodeError):
    """The term uses an encoding this codec does not decode (for example LOCAL_EXT)."""


class EncodeError(ETFError, TypeError):
    """A Python value cannot be represented as an Erlang term.

    ``path`` describes where in the value the problem is (for example
    ``"[2][0]"`` or ``"{map value}"``); empty for the top-level value.
    """

    def __init__(self, message: str, path: str = "") -> None:
        where = f" at {path}" if path else ""
        super().__init__(f"{message}{where}")
        self.reason = message
        self.path = path
