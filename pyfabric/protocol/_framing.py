"""``{packet, 4}`` framing: the receive buffer and the outbound buffer of one connection.

:class:`FrameReader` buffers received bytes and cuts them into frames without copying
when it can (a chunk holding whole frames is decoded in place). :class:`FrameWriter`
holds everything queued for the socket, in order. Neither knows what a frame means.
"""

from __future__ import annotations

import struct
from typing import Any

from ..etf import DecodeError, DecodeLimits, decode, decoder_from
from ._constants import MAX_PACKET
from ._errors import LocalProtocolError

__all__ = ["FrameReader", "FrameWriter", "FrameTooLarge"]

_COMPACT_AT = 64 * 1024
_JOIN_BELOW = 64 * 1024  # a rest this small is joined with the next chunk (see feed)
_u32 = struct.Struct(">I")
_unpack_u32 = _u32.unpack_from
_pack_u32 = _u32.pack


class FrameTooLarge(Exception):
    """A received length prefix exceeds the limit (the buffer has been discarded)."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"peer announced a frame of {length} bytes, the limit is {limit}")
        self.length = length
        self.limit = limit


class FrameReader:
    """Received bytes, cut into ``{packet, 4}`` frames."""

    __slots__ = ("_buf", "_pos", "_limits", "_decode_at")

    def __init__(self) -> None:
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._limits: DecodeLimits | None = None
        self._decode_at = decoder_from()  # for self._limits (see decode)

    def __len__(self) -> int:
        """Bytes held (including already consumed ones not compacted away yet)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        buf = self._buf
        if self._pos >= len(buf):
            # Nothing buffered: keep an immutable chunk as is, frames decode in place.
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = 0
            return
        if isinstance(buf, bytes):
            if len(buf) - self._pos < _JOIN_BELOW:
                # A small rest (a frame cut by the read): joined with the new chunk into an
                # immutable buffer, its frames then decode in place too (one copy, as a
                # bytearray's append would be).
                self._buf = b"".join((memoryview(buf)[self._pos :], data))
                self._pos = 0
                return
            self._buf = buf = bytearray(memoryview(buf)[self._pos :])
            self._pos = 0
        elif self._pos >= _COMPACT_AT and self._pos * 2 >= len(buf):
            del buf[: self._pos]
            self._pos = 0
        buf += data

    def clear(self) -> None:
        self._buf, self._pos = b"", 0

    def next_frame(self, limit: int) -> tuple[int, int] | None:
        """The (start, end) span of the next whole frame, or None; raises FrameTooLarge."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 4:
            return None
        (length,) = _unpack_u32(buf, pos)
        if length > limit:
            self.clear()
            raise FrameTooLarge(length, limit)
        start = pos + 4
        end = start + length
        if end > len(buf):
            return None
        self._pos = end
        return start, end

    def frame_ready(self, limit: int) -> bool:
        """Would :meth:`next_frame` return a frame (or raise) now, rather than None?"""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 4:
            return False
        length: int = _unpack_u32(buf, pos)[0]
        return length > limit or pos + 4 + length <= len(buf)

    def frame_bytes(self, start: int, end: int) -> bytes:
        buf = self._buf
        if type(buf) is bytes and start == 0 and end == len(buf):
            return buf
        return bytes(memoryview(buf)[start:end])

    def decode(self, start: int, end: int, limits: DecodeLimits) -> Any:
        """The term of the frame at ``start:end``; raises DecodeError."""
        buf = self._buf
        if type(buf) is bytes:
            if limits is not self._limits:  # the options are checked once per limits
                self._decode_at = decoder_from(limits=limits)
                self._limits = limits
            term, stop = self._decode_at(buf, start)
            if stop != end:
                raise DecodeError("the term does not end where the frame ends", stop - start)
            return term
        view = memoryview(buf)
        try:
            frame = view[start:end]
            try:
                return decode(frame, limits=limits)
            finally:
                frame.release()
        finally:
            view.release()


class FrameWriter:
    """Frames queued for the socket, length-prefixed, in the order they were queued.

    The frames are kept as they are (a length prefix and the frame, two pieces each):
    :meth:`take` copies them once into one ``bytes``, :meth:`take_pieces` not at all
    (for a transport with scatter-gather writes)."""

    __slots__ = ("_out", "size")

    def __init__(self) -> None:
        self._out: list[bytes] = []
        self.size = 0
        """Bytes queued (prefixes included): ``len()`` without a call."""

    def __len__(self) -> int:
        return self.size

    def write(self, frame: bytes, limit: int | None = None) -> None:
        """Queue ``frame``; LocalProtocolError (nothing queued) if it exceeds ``limit``."""
        size = len(frame)
        if limit is not None and size > limit:
            raise LocalProtocolError(
                "frame_too_large",
                f"frame of {size} bytes exceeds the peer's limit of {limit} bytes",
            )
        if size > MAX_PACKET:
            raise LocalProtocolError("frame_too_large", f"frame of {size} bytes does not fit {{packet,4}}")
        out = self._out
        out.append(_pack_u32(size))
        out.append(frame)
        self.size += size + 4

    def take(self) -> bytes:
        """Everything queued, as one ``bytes`` (one copy), and forget it."""
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        self.size = 0
        return data

    def take_pieces(self) -> list[bytes]:
        """Everything queued, as the pieces written (no copy; their concatenation is what
        :meth:`take` would return), and forget it."""
        out = self._out
        if not out:
            return []
        self._out = []
        self.size = 0
        return out
