"""Transports: asyncio clients and servers that run the protocol core over TCP/TLS.

Layering: codec -> protocol (sans-IO) -> runtime -> **transports** -> public API. A
:class:`~._peer.PeerLink` binds one peer's protocol session to the runtime node; a
:class:`~._stream.FrameStream` moves its bytes; :class:`Client` (:func:`aconnect`)
adds reconnection and session resumption; :class:`Server` (:func:`serve`) accepts many
clients, each with its own id space, and keeps their sessions for a resume;
:class:`AuthThrottle` refuses addresses after repeated failed authentications.
"""

from ._client import Client, ConnectionState
from ._connect import aconnect
from ._errors import (
    ClientClosed,
    ConnectFailed,
    GlobalNameError,
    GlobalNameInUse,
    GroupError,
    NotConnected,
    SendQueueFull,
    SendRefused,
    SendTimeout,
    ServerClosed,
    TransportError,
)
from ._serve import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_KEPT_SESSIONS, DEFAULT_MAX_PENDING_HANDSHAKES, serve
from ._server import Server
from ._server_conn import ServerConnection
from ._throttle import DEFAULT_AUTH_BLOCK_TIME, DEFAULT_AUTH_FAILURE_WINDOW, DEFAULT_MAX_AUTH_FAILURES, AuthThrottle

__all__ = [
    "Client",
    "ConnectionState",
    "aconnect",
    "Server",
    "ServerConnection",
    "serve",
    "TransportError",
    "NotConnected",
    "SendQueueFull",
    "SendRefused",
    "SendTimeout",
    "ConnectFailed",
    "ClientClosed",
    "ServerClosed",
    "GlobalNameError",
    "GlobalNameInUse",
    "GroupError",
    "AuthThrottle",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_PENDING_HANDSHAKES",
    "DEFAULT_MAX_KEPT_SESSIONS",
    "DEFAULT_MAX_AUTH_FAILURES",
    "DEFAULT_AUTH_FAILURE_WINDOW",
    "DEFAULT_AUTH_BLOCK_TIME",
]
