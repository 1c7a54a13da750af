"""Errors raised by the transports (on top of the protocol's and the runtime's)."""

from __future__ import annotations

__all__ = ["TransportError", "NotConnected", "ConnectFailed", "SendQueueFull", "ClientClosed", "ServerClosed", "SendTimeout", "SendRefused",
           "GlobalNameError", "GlobalNameInUse", "GroupError"]


class TransportError(Exception):
    """Base class of the transport errors."""


class NotConnected(TransportError, ConnectionError):
    """The peer is not connected (now, or any more) and the send could not be queued."""


class ConnectFailed(TransportError, ConnectionError):
    """Connecting failed (TCP/TLS error, timeout, or the handshake did not complete).

    Authentication failures raise :class:`pyfabric.protocol.AuthenticationError` instead.
    """


class ClientClosed(TransportError, RuntimeError):
    """A blocking client (or one of its mailboxes) was used after ``close()``: connect again.

    A ``RuntimeError`` too, for code written against earlier versions.
    """


class ServerClosed(TransportError, RuntimeError):
    """A blocking server (or one of its mailboxes) was used after ``close()``: start a new one.

    A ``RuntimeError`` too, for code written against earlier versions.
    """


class SendQueueFull(TransportError):
    """``max_pending`` messages already wait for this peer (for a connection, or for
    room in the unacknowledged outbox): nothing was queued. Await ``drain()`` and retry,
    or slow down (docs/protocol.md 12.6)."""


class SendTimeout(TransportError, TimeoutError):
    """A blocking send could not be issued within ``send_timeout`` (with ``acks``: the
    outbox stayed full, or the client stayed disconnected); nothing was sent
    (docs/protocol.md 12.6)."""


class SendRefused(TransportError):
    """A confirmed send (``send_confirmed``, docs/protocol.md 11.8) did not deliver its
    message: ``code`` is the receiver's answer (``"noproc"``, ``"not_allowed"``,
    ``"unknown_id"``, ``"bad_payload"``, ``"limit"``, ``"credit_exceeded"``), the reason
    its session ended first (``"session_expired"``, ``"not_resumable"``, ``"closed"``; the
    message may or may not have been delivered), or the local code that stopped it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class GlobalNameError(TransportError):
    """The server did not register (or unregister) a global name (docs/protocol.md 17):
    ``code`` is its answer (``"not_allowed"``: its ``register_global`` option refuses the
    name; ``"limit"``; ``"noproc"``: the process has ended; ``"not_registered"``:
    ``unregister_global`` of a name this session does not hold; ``"in_use"``:
    :class:`GlobalNameInUse`), ``name`` the name asked for."""

    def __init__(self, code: str, name: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.name = name


class GlobalNameInUse(GlobalNameError):
    """``register_global``: the name is already registered in ``global`` to another
    process (by anyone in the cluster); ``code`` is ``"in_use"``."""


class GroupError(TransportError):
    """The server refused a ``pg`` group request (docs/protocol.md 18): ``code`` is its
    answer (``"not_allowed"``: its ``client_groups`` option refuses the group; ``"limit"``:
    this session's processes are in 64 groups, or a server limit; ``"noproc"``: the process
    has ended; ``"not_member"``: ``leave`` of a process that is not in the group through this
    session), ``group`` the group asked for (as bytes)."""

    def __init__(self, code: str, group: bytes, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.group = group
