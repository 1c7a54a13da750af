"""Transports: asyncio clients and servers that run the protocol core over TCP/TLS.

Layering: codec -> protocol (sans-IO) -> runtime -> **transports** -> public API. A
:class:`~._peer.PeerLink` binds one peer's protocol session to the runtime node; a
:class:`~._stream.FrameStream` moves its bytes; :class:`Client` (:func:`aconnect`)
adds reconnection and session resumption; :class:`Server` (:func:`serve`) accepts many
clients, each with its own id space, and keeps their sessions for a resume.
"""

from ._client import Client, ConnectionState, aconnect
from ._errors import ConnectFailed, NotConnected, TransportError
from ._server import Server, serve

__all__ = [
    "Client",
    "ConnectionState",
    "aconnect",
    "Server",
    "serve",
    "TransportError",
    "NotConnected",
    "ConnectFailed",
]
