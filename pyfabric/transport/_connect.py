"""``aconnect``: build a :class:`~._client.Client` from the options and connect it; the
client's default timeouts and backoff."""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Iterable
from typing import Unpack

from ..etf import Atom
from ..runtime import Node
from ..tls import check_context
from ._client import Client, ConnectionState
from ._options import DEFAULT_CONNECT_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, PeerOptions
from ._signature import ConnectOptions, show_options

__all__ = [
    "aconnect",
    "check_fallbacks",
    "DEFAULT_BACKOFF_INITIAL",
    "DEFAULT_BACKOFF_MAX",
    "DEFAULT_WHEREIS_TIMEOUT",
    "DEFAULT_SEND_TIMEOUT",
]

DEFAULT_BACKOFF_INITIAL = 0.1
"""First reconnect delay, seconds."""
DEFAULT_BACKOFF_MAX = 10.0
"""Reconnect delays double up to this cap (with jitter), seconds."""
DEFAULT_WHEREIS_TIMEOUT = 10.0
"""Seconds ``whereis`` waits for the server's answer."""
DEFAULT_SEND_TIMEOUT = 10.0
"""Seconds ``drain`` waits for a reconnection before giving up on queued sends."""


def check_fallbacks(fallbacks: Iterable[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    """``fallbacks`` as a tuple of ``(host, port)`` pairs; ``TypeError`` / ``ValueError``
    naming the first bad one."""
    if isinstance(fallbacks, (str, bytes)):
        raise TypeError("fallbacks must be a list of (host, port) pairs, not a string")
    out = []
    for item in fallbacks:
        if not (isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str) and type(item[1]) is int):
            raise TypeError(f"fallbacks: each item is a (host, port) pair, got {item!r}")
        if not 0 < item[1] < 65536:
            raise ValueError(f"fallbacks: port {item[1]} of {item[0]!r} is not in 1..65535")
        out.append((item[0], item[1]))
    return tuple(out)


@show_options()
async def aconnect(
    host: str,
    port: int,
    secret: bytes | str,
    *,
    node: Node | None = None,
    node_name: Atom | str | None = None,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    reconnect: bool = True,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    whereis_timeout: float = DEFAULT_WHEREIS_TIMEOUT,
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL,
    backoff_max: float = DEFAULT_BACKOFF_MAX,
    fallbacks: Iterable[tuple[str, int]] = (),
    **options: Unpack[ConnectOptions],
) -> Client:
    """Connect to the fabric server at ``host:port`` with ``secret``; return a connected
    :class:`Client`.

    Raises :class:`ConnectFailed` if the server cannot be reached or the handshake does not
    complete, and :class:`~pyfabric.protocol.AuthenticationError` on a wrong secret, a
    server that cannot prove the secret, or an original (MD5-only) server when
    ``allow_legacy_auth`` is False (the default; MD5 authentication is weak, enable it only
    on trusted networks or over TLS).

    Options: ``allowed`` names of local processes the server may reach by name (default
    none); ``node``/``node_name`` to share a runtime node or name it; ``ssl`` a client-side
    :class:`ssl.SSLContext` for TLS (:func:`pyfabric.tls.client_context`: the server's
    certificate is verified, TLS 1.2+ only), its host name checked against ``server_hostname``
    (default: ``host``); ``reconnect`` (default on: capped exponential backoff
    ``backoff_initial``..``backoff_max`` s with jitter; with one of our servers the session
    is resumed and proxies keep their identity); ``when_disconnected`` ``"wait"`` (queue up
    to ``max_pending`` sends; :meth:`Client.drain` waits up to ``send_timeout``) or
    ``"error"`` (raise :class:`NotConnected`); ``heartbeat`` seconds (0 = off);
    ``max_frame`` and ``decode_limits`` bound what we accept; ``max_proxies`` / ``max_exports``
    bound the session's id tables (a frame that would create one proxy more is dropped with
    code ``limit``; a send that would export one local pid more raises
    :class:`~pyfabric.protocol.LocalProtocolError` code ``limit``); ``compress``: zlib-compress
    messages to our own peers when smaller (off by default: on fast links it costs more than
    it saves; messages to an original peer are always encoded as the original does);
    ``fallbacks``: more server addresses ``[(host2, port2), ...]``, tried in order after
    ``host:port`` when it cannot be reached, at the first connection and at every reconnection
    (which starts with the server of the current session); a client that moves to another
    server resumes its session if that server accepts it, else starts a new one: proxies of
    the old server's processes end with ``noconnection`` (README "Failover").
    ``strings="list"`` delivers received Erlang lists of small integers (``[1,2,3]``) as
    ``list[int]`` instead of ``str`` (default ``"str"``, see docs/terms.md).
    ``on_undelivered`` called with :class:`~pyfabric.protocol.MessagesUndelivered` when a
    session with ``acks`` ends with messages it cannot vouch for (README, "Delivery").
    Every option not named in the signature goes to :meth:`PeerOptions.build` and from
    there to :meth:`~pyfabric.protocol.ConnectionConfig.build` (``allowed``,
    ``force_allowed``, ``allow_legacy_auth``, ``features``, ``max_frame``, ...); an unknown
    name raises ``TypeError``.
    """
    peer_options = PeerOptions.build(secret, **options)
    extra = check_fallbacks(fallbacks)
    if ssl is not None:
        check_context(ssl, server_side=False)
    owns_node = node is None
    if node is None:
        node = Node(node_name)
    client = Client(
        host,
        port,
        peer_options,
        node=node,
        owns_node=owns_node,
        ssl=ssl,
        server_hostname=server_hostname,
        connect_timeout=connect_timeout,
        handshake_timeout=handshake_timeout,
        reconnect=reconnect,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        whereis_timeout=whereis_timeout,
        send_timeout=send_timeout,
        fallbacks=extra,
    )
    try:
        await client._start()
    except BaseException:
        client._closing = True
        client._set_state(ConnectionState.CLOSED)
        node.remove_node_sender(client._send_to_node)
        if owns_node:
            await node.close()
        raise
    return client
