"""``serve``: build a :class:`~._server.Server` from the options and start listening; the
server's admission defaults (re-exported: they are options of ``serve``)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl as _ssl
from typing import Unpack

from ..etf import Atom
from ..runtime import Node
from ..tls import check_context
from ._admission import (
    DEFAULT_MAX_PENDING_HANDSHAKES,
    DEFAULT_MAX_PENDING_PER_ADDRESS,
    DEFAULT_SERVER_HANDSHAKE_TIMEOUT,
)
from ._options import DEFAULT_SESSION_TIMEOUT, PeerOptions
from ._router import (
    DEFAULT_ROUTE_GRACE,
    DEFAULT_ROUTE_HEARTBEAT,
    DEFAULT_ROUTE_MAX_PROXIES,
    RoutingPolicy,
    check_routing,
)
from ._server import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_KEPT_SESSIONS, Server
from ._signature import ServeOptions, show_options
from ._stream import DEFAULT_MAX_WRITE_BUFFER
from ._throttle import (
    DEFAULT_AUTH_BLOCK_TIME,
    DEFAULT_AUTH_FAILURE_WINDOW,
    DEFAULT_MAX_AUTH_FAILURES,
    AuthThrottle,
)

__all__ = [
    "serve",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_PENDING_HANDSHAKES",
    "DEFAULT_MAX_PENDING_PER_ADDRESS",
    "DEFAULT_SERVER_HANDSHAKE_TIMEOUT",
    "DEFAULT_MAX_KEPT_SESSIONS",
]

_log = logging.getLogger("pyfabric.server")

@show_options(exclude=["when_disconnected"])
async def serve(
    host: str,
    port: int,
    secret: bytes | str,
    *,
    node: Node | None = None,
    node_name: Atom | str | None = None,
    ssl: _ssl.SSLContext | None = None,
    handshake_timeout: float = DEFAULT_SERVER_HANDSHAKE_TIMEOUT,
    session_timeout: float = DEFAULT_SESSION_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_pending_handshakes: int = DEFAULT_MAX_PENDING_HANDSHAKES,
    max_pending_per_address: int = DEFAULT_MAX_PENDING_PER_ADDRESS,
    max_auth_failures: int = DEFAULT_MAX_AUTH_FAILURES,
    auth_failure_window: float = DEFAULT_AUTH_FAILURE_WINDOW,
    auth_block_time: float = DEFAULT_AUTH_BLOCK_TIME,
    max_kept_sessions: int = DEFAULT_MAX_KEPT_SESSIONS,
    max_write_buffer: int = DEFAULT_MAX_WRITE_BUFFER,
    routing: RoutingPolicy = False,
    route_grace: float = DEFAULT_ROUTE_GRACE,
    route_heartbeat: float = DEFAULT_ROUTE_HEARTBEAT,
    route_max_proxies: int = DEFAULT_ROUTE_MAX_PROXIES,
    **options: Unpack[ServeOptions],
) -> Server:
    """Start a fabric server on ``host:port`` (``port=0``: the OS picks; see
    :attr:`Server.port`) that authenticates clients with ``secret``.

    ``allowed``: names of local processes clients may reach by name (default none; system
    names are refused even if listed unless also in ``force_allowed``).
    ``allow_legacy_auth``: accept original (MD5-only) clients; off by default because MD5
    challenge/response is weak: enable it only on trusted networks or over TLS.
    ``ssl``: a server-side :class:`ssl.SSLContext` for TLS (:func:`pyfabric.tls.server_context`;
    TLS 1.2+ only; the TLS handshake must also end within ``handshake_timeout``).
    Limits (README "Security"): ``handshake_timeout`` (a timeout counts as a failed
    authentication), ``max_connections``, ``max_pending_handshakes``,
    ``max_pending_per_address`` (when either is full a new connection replaces the oldest
    pending one instead of being refused), ``max_write_buffer`` (bytes unsent to a client
    that does not read before its connection is closed; above 4 MiB the server already
    stops reading that client; a client flooding a local process is not read while that
    process has 2048 messages queued, see ``_stream.MAILBOX_HIGH_WATER``), ``max_frame``, ``decode_limits``, ``max_proxies`` /
    ``max_exports`` (per client session: a frame that would create one proxy more is
    dropped with code ``limit``; a send that would export one local pid more raises
    ``LocalProtocolError``); ``max_auth_failures`` failed authentications from one address
    within ``auth_failure_window`` s block its new connections for ``auth_block_time`` s
    (``max_auth_failures=0``: no throttling); ``strings="list"``: received Erlang lists of
    small integers (``[1,2,3]``) as ``list[int]`` instead of ``str`` (default ``"str"``);
    ``refuse_remote_exits``: True (every local process) or names of local processes that
    clients may not link to nor send exit signals to (``exit/2``, ``kill`` included): such
    frames are dropped with a warning, nothing is sent back;
    ``session_timeout``: how long a disconnected client's session (proxies, ids) is kept
    for a resume, at most ``max_kept_sessions`` of them (the oldest expires first); ``max_pending``: sends queued for a disconnected client; ``compress``:
    zlib-compress messages to our own peers (off by default; an original peer always gets
    the original's encoding). ``routing`` (README "Clients talking to each other",
    docs/protocol.md 16): False (default), True, or a predicate ``(from_node, to_node) ->
    bool``: clients with a node name see and reach each other's allowed names through this
    server; ``route_grace`` s after a client's connection is lost, the other clients'
    proxies for its processes end with ``noconnection``; routing clients heartbeat at least
    every ``route_heartbeat`` s; each client's pids create at most ``route_max_proxies``
    proxies here. Every option not named in the signature goes to
    :meth:`PeerOptions.build` and from there to
    :meth:`~pyfabric.protocol.ConnectionConfig.build`; an unknown name raises ``TypeError``.
    """
    if "when_disconnected" in options:
        raise TypeError("serve() takes no when_disconnected: a server always keeps sends for a disconnected client")
    peer_options = PeerOptions.build(secret, **options)
    check_routing(routing, route_grace, route_heartbeat, route_max_proxies)
    if routing is not False and peer_options.config.max_proxies > route_max_proxies:
        peer_options = dataclasses.replace(peer_options, config=peer_options.config.replace(max_proxies=route_max_proxies))
    if ssl is not None:
        check_context(ssl, server_side=True)
    throttle = AuthThrottle(max_auth_failures, auth_failure_window, auth_block_time)
    owns_node = node is None
    if node is None:
        node = Node(node_name)
    server = Server(
        peer_options,
        node=node,
        owns_node=owns_node,
        handshake_timeout=handshake_timeout,
        session_timeout=session_timeout,
        max_connections=max_connections,
        max_pending_handshakes=max_pending_handshakes,
        throttle=throttle,
        max_kept_sessions=max_kept_sessions,
        max_pending_per_address=max_pending_per_address,
        max_write_buffer=max_write_buffer,
        routing=routing,
        route_grace=route_grace,
        route_heartbeat=route_heartbeat,
    )
    loop = asyncio.get_running_loop()
    try:
        server._server = await loop.create_server(
            server._protocol_factory,
            host,
            port,
            ssl=ssl,
            ssl_handshake_timeout=handshake_timeout if ssl is not None else None,
        )
    except BaseException:
        if owns_node:
            await node.close()
        raise
    _log.info("fabric server listening on %s:%s", host, server.port)
    return server
