"""The asyncio side of one TCP/TLS connection: bytes between a socket and a PeerLink.

:class:`FrameStream` is an :class:`asyncio.Protocol`: it feeds received bytes to its
:class:`~._peer.PeerLink`, writes what the link produces, applies write backpressure
(``drain``), runs the heartbeat timer and notices a silent peer. It knows nothing about
frames or terms: the protocol core does.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from ._options import DEFAULT_WRITE_BUFFER_HIGH
from ._peer import PeerLink

__all__ = ["FrameStream"]

_log = logging.getLogger("pyfabric.transport")

READ_BURST = 64 * 1024
"""Bytes handled per event-loop iteration before reading pauses until the next one: local
processes get to run between bursts (uvloop reads up to 32 buffers in a row, enough to
queue hundreds of thousands of small messages before the receiving process runs once)."""


class FrameStream(asyncio.Protocol):
    """One connection's bytes; see the module docstring."""

    def __init__(self, link: PeerLink, *, heartbeat: float = 0.0) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.peername: Any = None
        self._heartbeat = heartbeat
        self._hb_handle: asyncio.TimerHandle | None = None
        self._last_recv = 0.0
        self._last_send = 0.0
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.closed = asyncio.get_running_loop().create_future()
        self.bytes_in = 0
        self.bytes_out = 0
        self._burst = 0
        self._burst_paused = False
        self._read_paused = False  # paused for good by pause_reading()

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peername = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # not TCP (tests over other socket kinds)
                pass
        transport.set_write_buffer_limits(high=DEFAULT_WRITE_BUFFER_HIGH)
        self.attach(self.link)
        self._last_recv = self._last_send = time.monotonic()

    def attach(self, link: PeerLink) -> None:
        """Make ``link`` the one this stream feeds (a server's resumed session takes over)."""
        self.link = link
        link.writer = self.write
        link.closer = self.close

    def data_received(self, data: bytes) -> None:
        self._last_recv = time.monotonic()
        self.bytes_in += len(data)
        if not self._burst:
            asyncio.get_running_loop().call_soon(self._end_burst)
        self._burst += len(data)
        try:
            self.link.data_received(data)
        except Exception:  # a bug must not leave a half-dead connection behind
            _log.exception("%s: internal error while handling received data; closing", self.link.label)
            self.close()
            return
        if self._burst >= READ_BURST and not self._burst_paused:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                self._burst_paused = True
                transport.pause_reading()

    def _end_burst(self) -> None:
        self._burst = 0
        if self._burst_paused:
            self._burst_paused = False
            transport = self.transport
            if transport is not None and not transport.is_closing() and not self._read_paused:
                transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hb_handle is not None:
            self._hb_handle.cancel()
            self._hb_handle = None
        link = self.link
        current = link.writer == self.write
        if current:
            link.writer = None
            link.closer = None
        try:
            # A stream whose link has moved on to a newer connection (a server session
            # taken over by a resume) must not end that connection.
            if current or link.writer is None:
                link.connection_lost()
        finally:
            self._can_write.set()
            if not self.closed.done():
                self.closed.set_result(exc)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- writing --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._last_send = time.monotonic()
        self.bytes_out += len(data)
        transport.write(data)

    @property
    def can_write(self) -> bool:
        """False while the socket's write buffer is above its high-water mark."""
        return self._can_write.is_set()

    async def drain(self) -> None:
        """Wait until the socket's write buffer is below its high-water mark."""
        await self._can_write.wait()

    def pause_reading(self) -> None:
        """Stop reading for good (before an orderly close)."""
        self._read_paused = True
        transport = self.transport
        if transport is not None and not transport.is_closing() and not self._burst_paused:
            transport.pause_reading()

    def close(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abort()

    # -- heartbeats ------------------------------------------------------------------------

    def start_heartbeat(self, own_interval: float, peer_interval: float) -> None:
        """Send heartbeats after ``own_interval`` s idle; declare the peer lost after three
        of its intervals of silence (docs/protocol.md 5.3)."""
        if own_interval <= 0 and peer_interval <= 0:
            return
        self._own = own_interval
        self._silence = 3 * peer_interval if peer_interval > 0 else 0.0
        tick = min(x for x in (own_interval, peer_interval) if x > 0) / 2
        self._tick = tick
        loop = asyncio.get_running_loop()
        self._hb_handle = loop.call_later(tick, self._beat)

    def _beat(self) -> None:
        now = time.monotonic()
        if self._silence and now - self._last_recv > self._silence:
            _log.warning("%s: peer silent for %.1f s (3 heartbeat intervals); closing", self.link.label, now - self._last_recv)
            self.abort()
            return
        if self._own and now - self._last_send >= self._own:
            self.link.heartbeat()
        self._hb_handle = asyncio.get_running_loop().call_later(self._tick, self._beat)
