"""A client's connection attempts: TCP (or TLS) connect, then the fabric handshake.

:func:`dial` is one attempt, what :class:`~._client.Client` runs for its first connection;
:func:`redial` repeats attempts with capped, jittered exponential backoff after the
connection is lost. The client keeps its state (listeners, counters, closing) itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl as _ssl
from collections.abc import Awaitable, Callable

from ..protocol import AuthenticationError, HandshakeComplete, NodeNameInUse
from ..tls import describe_tls_failure
from ._errors import ConnectFailed
from ._peer import PeerLink
from ._stream import FrameStream

__all__ = ["dial", "redial"]

_log = logging.getLogger("pyfabric.client")


async def dial(
    link: PeerLink,
    host: str,
    port: int,
    *,
    ssl: _ssl.SSLContext | None,
    server_hostname: str | None,
    connect_timeout: float,
    handshake_timeout: float,
    heartbeat: float,
    on_stream: Callable[[FrameStream], None],
) -> HandshakeComplete:
    """Connect ``link`` to ``host:port`` and run the handshake; return its result.

    ``on_stream`` gets the new :class:`FrameStream` as soon as the socket is connected
    (before the handshake, so a close or ``drop_connection`` meanwhile reaches it);
    ``heartbeat`` is ours in seconds. Raises :class:`ConnectFailed` (unreachable, timed
    out, closed during the handshake) or the link's
    :class:`~pyfabric.protocol.AuthenticationError`.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_timeout):
            _transport, stream = await loop.create_connection(
                lambda: FrameStream(link, heartbeat=heartbeat),
                host,
                port,
                ssl=ssl,
                server_hostname=server_hostname if ssl else None,
                ssl_handshake_timeout=connect_timeout if ssl else None,
            )
    except (OSError, TimeoutError) as exc:
        # link.conn stays the previous (closed) connection: DEAD notices and queued
        # sends keep accumulating for a resume.
        why = describe_tls_failure(exc) if ssl and isinstance(exc, (_ssl.SSLError, ConnectionError)) else str(exc)
        if not why:  # TimeoutError() says nothing
            why = (
                f"timed out after {connect_timeout} s (connect_timeout); check that a fabric "
                "server is running there and reachable"
                if isinstance(exc, TimeoutError)
                else type(exc).__name__
            )
        raise ConnectFailed(f"cannot connect to {host}:{port}: {why}") from exc
    # The session continues (a resume when the server may still keep it, and what
    # was deferred meanwhile); the server speaks only after our hello, so build now.
    conn = link.new_connection()
    done: asyncio.Future[HandshakeComplete] = loop.create_future()

    def established(_link: PeerLink, ev: HandshakeComplete) -> None:
        if not done.done():
            done.set_result(ev)

    link.on_established = established
    on_stream(stream)
    conn.start()
    link.flush()
    try:
        async with asyncio.timeout(handshake_timeout):
            await asyncio.wait({done, stream.closed}, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        stream.abort()
        raise ConnectFailed(
            f"handshake with {host}:{port} did not complete within {handshake_timeout} s"
        ) from None
    if done.done() and link.connected:
        ev = done.result()
        # With `route` our interval is at most the server's route_heartbeat (16.1).
        stream.start_heartbeat(ev.heartbeat / 1000 if "route" in ev.features else heartbeat, ev.peer_heartbeat / 1000)
        return ev
    if done.done():
        # Closed right after the handshake (in the same read): not a usable connection,
        # and its close was ignored as that of a failed attempt.
        raise ConnectFailed(f"{host}:{port} closed the connection right after the handshake")
    if link.auth_error is not None:
        error, link.auth_error = link.auth_error, None
        raise error
    reason = link.close_event.message if link.close_event is not None else "connection closed"
    raise ConnectFailed(f"{host}:{port} closed the connection during the handshake: {reason}")



async def redial(
    attempt: Callable[[], Awaitable[HandshakeComplete]],
    label: str,
    backoff_initial: float,
    backoff_max: float,
    closing: Callable[[], bool],
) -> HandshakeComplete | None:
    """Run ``attempt`` (one :func:`dial` of the server ``label``) until it succeeds; return
    its handshake, or None once ``closing()`` is true or the server refuses our credentials
    (logged; retrying cannot help). Each wait before an attempt is drawn from
    [delay/2, delay], the delay doubling from ``backoff_initial`` up to ``backoff_max``."""
    delay = backoff_initial
    while not closing():
        # Full jitter: many clients of one restarted server do not reconnect in step.
        await asyncio.sleep(random.uniform(delay / 2, delay))
        if closing():
            return None
        try:
            return await attempt()
        except NodeNameInUse as exc:
            # Our old connection may still look up to the server (half-open) until its
            # heartbeat finds it gone (docs/protocol.md 16.1): try again.
            _log.warning("reconnect to %s refused: %s (next try within %.1f s)", label, exc, delay)
            delay = min(delay * 2, backoff_max)
        except AuthenticationError as exc:
            _log.error("reconnect to %s refused: %s; giving up", label, exc)
            return None
        except (ConnectFailed, OSError) as exc:
            _log.info("reconnect to %s failed: %s (next try within %.1f s)", label, exc, delay)
            delay = min(delay * 2, backoff_max)
    return None
