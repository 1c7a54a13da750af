"""Events returned by :meth:`Connection.next_event` (frozen, slotted, compared by value).

Every event is something the peer did (or the handshake concluded); commands our own
caller issues never produce events, only bytes in :meth:`Connection.data_to_send`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar, dataclass_transform

from ..etf import Atom, Pid
from ._errors import AuthenticationError, ProtocolError, RemoteProtocolError

__all__ = [
    "Event",
    "NEED_DATA",
    "HandshakeComplete",
    "AuthFailed",
    "ProxyCreated",
    "MessageReceived",
    "ProxyDied",
    "DeadPidSubstituted",
    "LinkRequested",
    "UnlinkRequested",
    "ExitSignalReceived",
    "LinkExitReceived",
    "WhereisRequested",
    "WhereisReplied",
    "MessageRouted",
    "WhereisNodeRequested",
    "NodesRequested",
    "NodesReplied",
    "NodeUp",
    "NodeDown",
    "HeartbeatReceived",
    "HeartbeatAcked",
    "PeerError",
    "FrameDropped",
    "ConnectionClosed",
    "UndeliveredMessage",
    "MessagesUndelivered",
    "SendResult",
]


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
"""Returned by ``next_event()`` when no event is pending: feed more bytes (or, once the
connection is closed, stop asking)."""


class Event:
    """Base class of every event."""

    __slots__ = ()


_T = TypeVar("_T")


@dataclass_transform(frozen_default=True)
def _ev(cls: type[_T]) -> type[_T]:
    """Make an event class a frozen, slotted dataclass (spelled once, seen by type checkers)."""
    return dataclass(frozen=True, slots=True)(cls)


@_ev
class HandshakeComplete(Event):
    """Authentication succeeded; the connection is established.

    ``mode`` is ``"legacy"`` (an original peer, or ours with legacy auth) or
    ``"extended"``. ``features`` are the agreed feature names (empty for legacy).
    ``peer_max_frame`` / ``peer_heartbeat`` (ms, 0 = none) are what the peer announced
    (legacy: our defaults, 0). ``session_id`` is set when ``session`` was agreed;
    ``resumed`` says whether an earlier session (its id tables) was resumed; when a
    resume was asked and refused, ``resume_refused`` is ``"unknown_session"`` or
    ``"not_resumable"`` and ``refused_session_id`` the session asked for. ``heartbeat``:
    the interval we announced, ms (with ``route``, a client's is at most the server's
    ``route_heartbeat``, docs/protocol.md 16.1).
    """

    mode: str
    version: int
    features: frozenset[str]
    peer_node: Atom | None
    session_id: bytes | None
    resumed: bool
    peer_max_frame: int
    peer_heartbeat: int
    resume_refused: str | None = None
    refused_session_id: bytes | None = None
    heartbeat: int = 0


@_ev
class AuthFailed(Event):
    """The handshake failed; a ``ConnectionClosed`` follows. ``error`` is what a transport
    raises to its user (on the client: e.g. "the server is an original (MD5-only) peer")."""

    error: AuthenticationError

    @property
    def message(self) -> str:
        return self.error.message


@_ev
class ProxyCreated(Event):
    """The peer named its process ``remote_id`` for the first time; ``pid`` (made by the
    ``new_proxy_pid`` callback) stands for it from now on. Emitted before the event that
    carries the pid."""

    pid: Pid
    remote_id: int


@_ev
class MessageReceived(Event):
    """``{m, Dest, Payload}`` with ``Dest`` resolved: a local ``Pid`` (integer Dest) or a
    registered-name ``Atom`` that passed the name policy (``node`` is the ``Node`` of a
    ``{Name, Node}`` Dest, else None). The runtime drops messages to unregistered names.

    With ``credit``, ``credit`` is the token of the message's credit: once delivered, the
    runtime gives it back with ``Connection.credit_delivered`` (docs/protocol.md 12.3).
    ``ref`` is the ``Ref`` of a confirmed send (``{mc, ...}``, 11.8; 0 for ``m``): answer
    with ``Connection.send_result(ref, code)`` once delivered, or why not."""

    dest: Pid | Atom
    payload: Any
    node: Atom | None = None
    credit: tuple[Any, int] | None = field(default=None, compare=False)  # bookkeeping, not content
    ref: int = 0


@_ev
class ProxyDied(Event):
    """The peer's process behind ``pid`` ended with ``reason`` (a DEAD frame, or the
    connection/session was lost for good: ``reason`` is ``noconnection``)."""

    pid: Pid
    remote_id: int
    reason: Any


@_ev
class DeadPidSubstituted(Event):
    """The peer sent ``{pl, local_id}`` for an id we never issued (or that ended); ``pid``
    (from the ``new_dead_pid`` callback) was put in its place. Informational."""

    local_id: int
    pid: Pid


@_ev
class LinkRequested(Event):
    """``{link, A, B}``: link local process ``local_pid`` with ``proxy_pid``."""

    proxy_pid: Pid
    local_pid: Pid


@_ev
class UnlinkRequested(Event):
    """``{unlink, A, B}``: remove the link between ``local_pid`` and ``proxy_pid``."""

    proxy_pid: Pid
    local_pid: Pid


@_ev
class ExitSignalReceived(Event):
    """``{exit2, A, B, Reason}``: ``exit(to_local, reason)`` called by the peer's process."""

    from_proxy: Pid
    to_local: Pid
    reason: Any


@_ev
class LinkExitReceived(Event):
    """``{link_exit, A, B, Reason}`` (feature ``link_exit``, docs/protocol.md 5.2): the
    peer's process A, lazily linked to ``to_local``, ended with ``reason``. Deliver it as
    the exit signal of a link from ``from_proxy`` (trappable, ``kill`` included), and end
    ``from_proxy`` with ``reason``."""

    from_proxy: Pid
    to_local: Pid
    reason: Any


@_ev
class WhereisRequested(Event):
    """The peer asks for ``name`` (already allowed by the name policy). Answer with
    ``Connection.reply_whereis(req_id, pid_or_None)``."""

    req_id: int
    name: Atom


@_ev
class WhereisReplied(Event):
    """Answer to our ``whereis(name)``; ``pid`` is a proxy, or None (not allowed or not
    registered: the wire does not tell which)."""

    req_id: int
    pid: Pid | None


@_ev
class MessageRouted(Event):
    """Routing server: ``{m, {Name, Node}, Payload}`` for the client node ``node``, which the
    routing policy lets the peer reach (docs/protocol.md 16.3); the transport forwards
    ``payload`` (rewriting undone: the peer's pids are our proxies) to ``name`` there."""

    name: Atom
    node: Atom
    payload: Any
    credit: tuple[Any, int] | None = field(default=None, compare=False)  # as MessageReceived's
    ref: int = 0  # a confirmed send's Ref: answered once forwarded


@_ev
class WhereisNodeRequested(Event):
    """Routing server: ``{whereis_node, ...}`` for ``name`` on ``node`` (the server's own
    node, allowed by its policy, or a client node the policy lets the peer reach). Answer
    with ``Connection.reply_whereis(req_id, pid_or_None)`` (16.5)."""

    req_id: int
    name: Atom
    node: Atom


@_ev
class NodesRequested(Event):
    """Routing server: ``{nodes, ReqId}``; answer with ``Connection.reply_nodes`` (16.6)."""

    req_id: int


@_ev
class NodesReplied(Event):
    """Client: the answer to our ``request_nodes()``: the client nodes we may see."""

    req_id: int
    nodes: tuple[Atom, ...]


@_ev
class NodeUp(Event):
    """Client: ``{nodeup, NodeBin}``: a client node we may see is connected (16.6)."""

    node: Atom


@_ev
class NodeDown(Event):
    """Client: ``{nodedown, NodeBin}``: a client node we could see lost its connection."""

    node: Atom


@_ev
class HeartbeatReceived(Event):
    """``{heartbeat, N}`` arrived; the ack is already queued in ``data_to_send()``."""

    n: int


@_ev
class HeartbeatAcked(Event):
    """``{heartbeat_ack, N}`` arrived."""

    n: int


@_ev
class PeerError(Event):
    """The peer sent ``{error, Code, Message}`` (it dropped one of our frames, or is
    about to close). Log it; never answered."""

    code: str
    message: str


@_ev
class FrameDropped(Event):
    """A received frame was dropped per the policy of docs/protocol.md section 9 (an error
    frame was queued when the peer is ours and agreed on ``error``)."""

    error: RemoteProtocolError

    @property
    def code(self) -> str:
        return self.error.code

    @property
    def detail(self) -> str:
        return self.error.message


@_ev
class ConnectionClosed(Event):
    """The connection is over: flush ``data_to_send()`` and close the socket. Always the
    last event of a connection. ``code`` is None for an orderly close (ours or the
    peer's), else the error code; ``error`` is the error when there is one."""

    code: str | None
    message: str
    error: ProtocolError | None = None


@_ev
class UndeliveredMessage:
    """One message a session cannot vouch for (docs/protocol.md 11.7).

    ``dest`` as the user gave it (proxy pid, name or ``(name, node)``), ``message`` the
    message itself, ``confirmed`` whether it was a confirmed send, ``state``
    ``"unconfirmed"`` (written, never acknowledged: it may or may not have been
    delivered) or ``"unsent"`` (never written: certainly not delivered).
    """

    dest: Any
    message: Any
    confirmed: bool
    state: str


@_ev
class MessagesUndelivered(Event):
    """A session with ``acks`` ended (or a single message could not be issued) and these
    messages were not confirmed, in the order sent (docs/protocol.md 11.7).

    ``reason``: ``"session_expired"``, ``"not_resumable"``, ``"closed"``, or, for single
    messages, ``"overflow"`` or the local error code that stopped them.
    """

    reason: str
    session_id: bytes | None
    peer_node: Atom | None
    messages: tuple[UndeliveredMessage, ...]
    confirms: tuple[int, ...] = ()
    """The ``Ref`` of every confirmed send of the session still waiting for its result:
    each fails with ``reason``."""


@_ev
class SendResult(Event):
    """``{mc_result, Ref, Result}``: the confirmed send ``ref`` (from
    ``Connection.send_confirmed``) was delivered (``error`` None) or refused with the code
    ``error`` (``"noproc"``, ``"not_allowed"``, ... docs/protocol.md 11.8)."""

    ref: int
    error: str | None
