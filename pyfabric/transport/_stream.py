"""The asyncio side of one TCP/TLS connection: bytes between a socket and a PeerLink.

:class:`FrameStream` is an :class:`asyncio.Protocol`: it feeds received bytes to its
:class:`~._peer.PeerLink`, writes what the link produces, applies write backpressure
(``drain``), runs the heartbeat timer and notices a silent peer. It knows nothing about
frames or terms: the protocol core does.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import ssl
import struct
import termios
import time
from typing import Any, cast

from ..tls import TLS_PROTOCOL_VERSION_ALERT, describe_tls_failure, sniff_first_bytes
from ._errors import ConnectFailed
from ._options import DEFAULT_WRITE_BUFFER_HIGH
from ._peer import PeerLink

__all__ = ["FrameStream", "DEFAULT_MAX_WRITE_BUFFER", "MAILBOX_HIGH_WATER"]

_log = logging.getLogger("pyfabric.transport")

READ_BURST = 64 * 1024
"""Bytes handled per event-loop iteration before reading pauses until the next one: local
processes get to run between bursts (uvloop reads up to 32 buffers in a row, enough to
queue hundreds of thousands of small messages before the receiving process runs once)."""

DEFAULT_MAX_WRITE_BUFFER = 80 * 1024 * 1024
"""Bytes a server buffers for a client that does not read them, at most; beyond, the
connection is closed (logged). Above ``DEFAULT_WRITE_BUFFER_HIGH`` (4 MiB) the server
already stops reading the client's requests (push-back), so only traffic from elsewhere
can reach this: one largest frame (64 MiB) plus the high-water mark, with room to spare."""

MAILBOX_HIGH_WATER = 2048
"""A server stops reading a connection when a local process it just delivered to has this
many messages queued (or 1/8 of its ``max_mailbox``, or ``MAILBOX_WAIT_TARGET`` of its work,
if smaller), so one flooding client
slows down instead of making a shared service exit with ``mailbox_overflow``, and a request
of another client waits behind at most this many (plus one ``FEED_SLICE``) messages. A live
receiver drains that in a few milliseconds; other connections are read as usual."""
MAILBOX_LOW_WATER_DIVISOR = 2
"""...and reads it again once every such mailbox is back below half that mark."""
MAILBOX_FLOODER = 8
"""Only connections that delivered at least this many messages to the mailbox in one slice
(``FEED_SLICE``) are paused at the high-water mark: a client sending one request at a time
is still read, and its request queued, while the flood waits."""
MAILBOX_HARD_WATER = 1 / 2
"""Past this fill of ``max_mailbox`` every connection delivering to the mailbox is paused
(many connections each sending a little)."""
FEED_SLICE = 4 * 1024
"""Bytes a server hands the protocol core at a time, checking the mailboxes it fed in
between (a read is up to 256 KiB, ~7000 small messages: fed whole, it would fill a mailbox
far past its mark before the check). While a mailbox is at a quarter of a mark below
``MAILBOX_HIGH_WATER``, slices shrink in proportion (at least ``FEED_SLICE_MIN``)."""
MAILBOX_WAIT_TARGET = 0.1
"""Seconds of the receiving process's own work that one flooding connection may queue in
its mailbox: the high-water mark of a slow process is lowered to what it handles in this
time (its ``service_time``, measured), so another client's request waits about this long
behind a flood, not ``MAILBOX_HIGH_WATER`` slow requests."""
MAILBOX_MIN_MARK = 32
"""...but never below this many messages (a process that is slow once is not starved)."""
MAILBOX_UNKNOWN_MARK = 64
"""The mark of a process that has not been behind yet (its ``service_time`` is unknown)."""
FEED_SLICE_MIN = 512
"""Bytes of the smallest slice, for a mailbox whose mark is low (slices shrink with the
mark, so that one slice cannot overshoot it by much)."""
MAILBOX_POLL = 0.001
"""Seconds between checks of a congested mailbox while a connection is paused for it (a
timer runs only while some mailbox is congested)."""

# Why reading is paused (a bit each); reading resumes when none is left.
_P_BURST = 1  # READ_BURST bytes handled this loop iteration
_P_CLOSE = 2  # pause_reading(): for good, before an orderly close
_P_WRITE = 4  # our write buffer is above its high-water mark (push-back)
_P_MAILBOX = 8  # a mailbox this connection feeds is above MAILBOX_HIGH_WATER


def _mark(most: int, service: float) -> int:
    """The high-water mark of a mailbox of ``most`` messages whose process takes ``service``
    seconds per message."""
    mark = min(MAILBOX_HIGH_WATER, most >> 3)
    if service > 0.0:
        return min(mark, max(MAILBOX_MIN_MARK, int(MAILBOX_WAIT_TARGET / service)))
    # Never behind yet, so its speed is unknown: a low mark until it is measured (a fast
    # process drains it before the next poll, and its own mark then applies).
    return min(mark, MAILBOX_UNKNOWN_MARK)


class FrameStream(asyncio.Protocol):
    """One connection's bytes; see the module docstring."""

    def __init__(
        self,
        link: PeerLink,
        *,
        heartbeat: float = 0.0,
        push_back: bool = False,
        max_write_buffer: int = DEFAULT_MAX_WRITE_BUFFER,
    ) -> None:
        """``push_back`` (servers): stop reading while the write buffer is above its
        high-water mark or a mailbox fed by this connection is congested, and close the
        connection once ``max_write_buffer`` bytes wait for a peer that does not read."""
        self.link = link
        self._push_back = push_back
        self.max_write_buffer = max_write_buffer
        self._paused = 0
        self._congested: set[Any] = set()
        self._held: list[bytes] | None = None  # received while a mailbox is congested
        self._congestion_logged = False
        # Bytes fed at a time, mailboxes checked in between: FEED_SLICE, smaller while a
        # mailbox we feed is filling towards a low mark (a quarter of it or more).
        self._slice = FEED_SLICE
        self._poll: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.peername: Any = None
        self._heartbeat = heartbeat
        self._hb_handle: asyncio.TimerHandle | None = None
        self._last_recv = 0.0
        self._last_send = 0.0
        self._write_ready = asyncio.Event()
        self._write_ready.set()
        self.can_write = True
        """False while the socket's write buffer is above its high-water mark (a plain
        attribute: read after every send)."""
        # Kept: asyncio.get_running_loop() costs a getpid() system call (a fork check) per call.
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        self.bytes_in = 0
        self.bytes_out = 0
        self._fd = -1  # the socket's descriptor, for has_spoken()
        self.writes = 0
        """Socket writes (``transport.write`` calls): the link hands over everything one
        loop iteration produced at once, so this grows by one per busy iteration, not per frame."""
        self._burst = 0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream's transport is a full Transport (the Protocol API names the base class).
        self.transport = transport = cast(asyncio.Transport, transport)
        self.peername = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._fd = sock.fileno()
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # not TCP (tests over other socket kinds)
                pass
        transport.set_write_buffer_limits(high=DEFAULT_WRITE_BUFFER_HIGH)
        self.attach(self.link)
        self._last_recv = self._last_send = time.monotonic()

    def has_spoken(self) -> bool:
        """Whether the peer has sent anything: bytes read, or bytes the kernel holds for us
        that the loop has not read yet (a server accepts a batch of connections in one loop
        iteration, so a real client's hello can be waiting while newer connections arrive)."""
        if self.bytes_in:
            return True
        if self._fd < 0:
            return False
        try:
            waiting: int = struct.unpack("i", fcntl.ioctl(self._fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:  # closed meanwhile
            return False
        return waiting > 0

    def attach(self, link: PeerLink) -> None:
        """Make ``link`` the one this stream feeds (a server's resumed session takes over)."""
        self.link = link
        link.writer = self.write
        link.closer = self.close
        if self._push_back and link.destinations is None:
            link.destinations = {}

    def _pause(self, reason: int) -> None:
        was = self._paused
        self._paused = was | reason
        if not was:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.pause_reading()

    def _resume(self, reason: int) -> None:
        was = self._paused
        self._paused = was & ~reason
        if was and not self._paused:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self._last_recv = time.monotonic()
        if not self.bytes_in and data and data[0] and self._not_fabric(data):
            return
        self.bytes_in += len(data)
        if not self._burst:
            self._loop.call_soon(self._end_burst)
        self._burst += len(data)
        if self._held is not None:
            self._held.append(data)  # a mailbox this connection feeds is congested
        elif len(data) <= self._slice:
            self._feed(data)
        else:
            self._feed_sliced(data)
        if self._burst >= READ_BURST:
            self._pause(_P_BURST)

    def _feed_sliced(self, data: bytes) -> bool:
        """Feed in slices, the mailboxes checked after each: one chunk (up to 256 KiB,
        thousands of small messages) cannot overshoot the high-water mark by more than a
        slice's worth. False (the rest held) once a mailbox is congested."""
        view = memoryview(data)
        start = 0
        while start < len(data):
            end = start + self._slice  # the slice adapts as it goes
            if not self._feed(view[start:end].tobytes()):
                if self._held is not None and end < len(data):
                    self._held.insert(0, view[end:].tobytes())
                return False
            start = end
        return True

    def _feed(self, data: bytes) -> bool:
        """Hand ``data`` to the link; False if the stream must not feed more now."""
        try:
            self.link.data_received(data)
        except Exception:  # a bug must not leave a half-dead connection behind
            _log.exception("%s: internal error while handling received data; closing", self.link.label)
            self.close()
            return False
        dests = self.link.destinations
        if dests:
            self._check_mailboxes(dests)
        return self._held is None

    def _not_fabric(self, data: bytes) -> bool:
        """The peer's first bytes cannot start a fabric frame: say what they are and close."""
        kind = sniff_first_bytes(data)
        if kind is None:
            return False
        self.bytes_in += len(data)
        transport = self.transport
        tls = transport is not None and transport.get_extra_info("sslcontext") is not None
        link = self.link
        if link.role == "client":
            if kind == "tls" and not tls:
                why = "the server speaks TLS: connect with ssl=pyfabric.tls.client_context(...)"
            elif kind == "http":
                why = f"this is not a fabric server: it answered HTTP ({data[:40]!r})"
            else:
                why = f"this is not a fabric server: it answered {data[:24]!r}"
            link.auth_error = ConnectFailed(f"{link.label}: {why}")
            _log.warning("%s: %s", link.label, why)
        else:
            if kind == "tls" and not tls and transport is not None:
                transport.write(TLS_PROTOCOL_VERSION_ALERT)  # the client's TLS stack says why
                _log.warning("%s: the client speaks TLS, this server does not (no ssl=); closing", link.label)
            else:
                _log.warning("%s: the client does not speak fabric (it sent %r); closing", link.label, data[:24])
        if transport is not None:
            transport.close()  # flushes the alert
        return True

    def _end_burst(self) -> None:
        self._burst = 0
        if self._paused & _P_BURST:
            self._resume(_P_BURST)

    def _check_mailboxes(self, dests: dict[Any, int]) -> None:
        load = self.link.node.mailbox_load
        piece = FEED_SLICE
        for dest, count in dests.items():
            queued, most, service = load(dest)
            if not most:
                continue  # not a local process (any more)
            mark = _mark(most, service)
            if queued >= mark >> 2:
                piece = min(piece, max(FEED_SLICE_MIN, FEED_SLICE * mark // MAILBOX_HIGH_WATER))
            if queued < mark or dest in self._congested:
                continue
            # A connection that delivered only a few messages (a client waiting for its
            # reply) keeps being read until the mailbox is really full: the flood waits.
            if count >= MAILBOX_FLOODER or queued >= most * MAILBOX_HARD_WATER:
                if not self._congested:
                    # Logged once per connection (a flood congests it again and again).
                    (_log.debug if self._congestion_logged else _log.info)(
                        "%s: mailbox of %s holds %d messages: not reading this connection until it drains",
                        self.link.label,
                        dest,
                        queued,
                    )
                    self._congestion_logged = True
                self._congested.add(dest)
        self._slice = piece
        dests.clear()
        if self._congested and self._held is None:
            self._held = []
            self._pause(_P_MAILBOX)
            if self._poll is None:
                self._poll = asyncio.get_running_loop().call_later(MAILBOX_POLL, self._poll_mailboxes)

    def _poll_mailboxes(self) -> None:
        self._poll = None
        load = self.link.node.mailbox_load

        def congested(dest: Any) -> bool:
            queued, most, service = load(dest)
            return queued > _mark(most, service) // MAILBOX_LOW_WATER_DIVISOR

        self._congested = {d for d in self._congested if congested(d)}
        if self._congested:
            self._poll = asyncio.get_running_loop().call_later(MAILBOX_POLL, self._poll_mailboxes)
            return
        held, self._held = self._held or [], None
        while held:
            if not self._feed_sliced(held.pop(0)):
                if self._held is not None:
                    self._held[:0] = held  # congested again: keep the rest, in order
                return
        self._resume(_P_MAILBOX)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fd = -1  # the descriptor may be reused by another socket from here on
        if self._hb_handle is not None:
            self._hb_handle.cancel()
            self._hb_handle = None
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        link = self.link
        if link.role == "client" and link.auth_error is None and not link.connected:
            why = self._why_closed(exc)
            if why:
                link.auth_error = ConnectFailed(f"{link.label}: {why}")
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
            self._write_ready.set()
            self.can_write = True
            if not self.closed.done():
                self.closed.set_result(exc)

    def _why_closed(self, exc: Exception | None) -> str | None:
        """Client: a reason for a close during the handshake that says what to do."""
        if isinstance(exc, ssl.SSLError):
            return describe_tls_failure(exc)  # an alert (certificate_required, ...)
        if self.bytes_in:
            return None  # the server spoke fabric: the core has the reason
        transport = self.transport
        if transport is not None and transport.get_extra_info("sslcontext") is not None:
            return (
                "the server closed the TLS connection without answering our hello: it may require a "
                "client certificate (certfile/keyfile of pyfabric.tls.client_context), or refused the connection"
            )
        return (
            "the server closed the connection without answering our hello: it may speak TLS (connect "
            "with ssl=pyfabric.tls.client_context(...)), or refused the connection (full, or this address is blocked)"
        )

    def pause_writing(self) -> None:
        self._write_ready.clear()
        self.can_write = False
        if self._push_back:
            # The peer is not reading what we send: stop reading its requests until it does.
            self._pause(_P_WRITE)

    def resume_writing(self) -> None:
        self._write_ready.set()
        self.can_write = True
        if self._paused & _P_WRITE:
            self._resume(_P_WRITE)

    # -- writing --------------------------------------------------------------------------

    def write(self, data: bytes | list[bytes]) -> None:
        """Write ``data``: bytes, or pieces written in order in one go (no copy)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._last_send = time.monotonic()
        self.writes += 1
        if data.__class__ is list:
            self.bytes_out += sum(map(len, data))
            transport.writelines(data)
        else:
            self.bytes_out += len(data)
            transport.write(data)  # type: ignore[arg-type]
        if self._push_back:
            unsent = transport.get_write_buffer_size()
            if unsent > self.max_write_buffer:
                _log.warning(
                    "%s: peer does not read: %d bytes unsent, more than max_write_buffer (%d); closing",
                    self.link.label,
                    unsent,
                    self.max_write_buffer,
                )
                transport.abort()

    async def drain(self) -> None:
        """Wait until the socket's write buffer is below its high-water mark."""
        await self._write_ready.wait()

    def pause_reading(self) -> None:
        """Stop reading for good (before an orderly close)."""
        self._pause(_P_CLOSE)

    def close(self) -> None:
        """Close after writing what is queued: the link's output not yet handed over
        (its end-of-iteration flush) goes first, then the transport's buffer."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if self.link.writer == self.write:
                self.link.flush()
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
        if self._paused & (_P_BURST | _P_WRITE | _P_MAILBOX):
            # We are not reading (push-back): the peer's silence cannot be observed, and
            # what it sent waits in the socket. Its clock restarts when we read again.
            self._last_recv = now
        if self._silence and now - self._last_recv > self._silence:
            _log.warning(
                "%s: peer silent for %.1f s (3 heartbeat intervals); closing", self.link.label, now - self._last_recv
            )
            self.abort()
            return
        if self._own and now - self._last_send >= self._own:
            self.link.heartbeat()
        self._hb_handle = asyncio.get_running_loop().call_later(self._tick, self._beat)
