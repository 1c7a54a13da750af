"""The sans-IO fabric protocol core: bytes in -> events out, commands in -> bytes out.

Layering: ``pyfabric.etf`` (codec) -> **this package** -> runtime -> transports. Nothing
here touches sockets, asyncio, threads or a clock (the h11 model). It implements
``docs/protocol.md`` (legacy protocol of the original 2010 implementation plus our
negotiated extensions, version 1).

Model
-----
One :class:`Connection` per TCP connection, in the role ``"client"`` (connected) or
``"server"`` (accepted)::

    conn = Connection("client", b"secret", node_name="py@host",
                      new_proxy_pid=runtime.new_proxy_pid, is_alive=runtime.is_alive,
                      allowed={"echo"})
    conn.start()                          # client only: queues the hello
    sock.sendall(conn.data_to_send())
    while True:
        conn.receive_data(sock.recv(65536))   # or conn.connection_lost() on EOF
        for event in conn.events():           # next_event() until NEED_DATA
            ...                                # HandshakeComplete, MessageReceived, ...
        sock.sendall(conn.data_to_send())     # replies the core queued (challenge, acks...)

Output style: **every** byte to write (handshake answers, heartbeat acks, error frames,
the frames of our commands) is queued in one outbound buffer, drained with
``data_to_send()``, so ordering is always the core's. Commands return None (``whereis``
and ``heartbeat`` return the request id / N). A command that cannot be carried raises a
:class:`LocalProtocolError` and queues nothing (the connection stays usable).

Pids. The core deals in :class:`~pyfabric.etf.Pid` values and keeps the id tables
(:class:`Session`): local pids it exported as ``{pr, Id}`` (ids from 1, never reused)
and one *proxy* pid per process id the peer shipped, made by the runtime's
``new_proxy_pid(remote_id)`` callback (a ``ProxyCreated`` event follows, before the
event carrying it). Any pid that is not a proxy of this connection is local (including
proxies of other connections). ``is_alive(pid)`` is asked when a pid is first exported;
if it says False, ``{'DEAD', {pr, Id}, noproc}`` is queued right after the frame. The
runtime calls ``process_exited(pid, reason)`` for local process deaths (every death, or
only exported pids: ``pid in conn.session.export_ids``); exported ones produce DEAD.
``{pl, Id}`` for an id we never issued is replaced by ``new_dead_pid(id)`` (default: a
``Pid(node, 0, 0, 0)`` that no process has) and a ``DeadPidSubstituted`` event.

Constructor: ``Connection(role, config=ConnectionConfig.build(secret, ...), ...)``, or
the same options as keywords after ``role, secret`` (any field of
:class:`ConnectionConfig`). ``on_export(pid, local_id)`` (optional) is called when a
command first exports a local pid, so the runtime can report its death. Options:
``new_proxy_pid``, ``allowed`` (names, a predicate on the name, or a
:class:`NamePolicy`), ``force_allowed`` (system names the user explicitly opens),
``allow_legacy_auth=False``, ``features`` (default all of :data:`FEATURES`),
``max_frame`` (64 MiB), ``max_handshake_frame`` (16 KiB), ``heartbeat_interval`` (ms
announced, 0), ``max_errors`` (20) / ``error_window`` (200), ``max_proxies`` / ``max_exports``
(100,000 each: a received frame that would create one proxy more is dropped with code
``limit``; a command that would export one local pid more raises ``LocalProtocolError``
code ``limit``, nothing queued), ``decode_limits``,
``is_alive``, ``new_dead_pid``, ``random_bytes`` (default ``secrets.token_bytes``; inject
for deterministic tests), ``session`` (client: resume this session), ``find_session``
(server: session id -> :class:`Session` or None), ``compress_messages`` (False: whether ``m``
frames to one of our peers are zlib-compressed when smaller; frames to an original peer
are always encoded exactly as the original does), ``peer`` (a label for logs).

Commands: ``start()``, ``send_message(dest, payload)`` (dest: proxy pid, name, or
``(name, node)``), ``process_exited(pid, reason)``, ``link(local, proxy)``,
``unlink(local, proxy)``, ``exit_signal(local, proxy, reason)``, ``whereis(name) ->
req_id``, ``reply_whereis(req_id, pid | None)``, ``heartbeat() -> n``, ``close()``,
``connection_lost()``, ``handshake_timed_out()``, ``send_deferred()``; with ``acks`` / ``credit``
``send_confirmed(dest, payload) -> ref``, ``send_result(ref, code)``, ``credit_delivered``,
``credit_returned``, ``recheck_owed``, ``send_ack()``, ``send_grant()`` (docs/protocol.md
11, 12; ``_flow.py``). Each is checked against the state
table (``_state.py``); an illegal one raises ``LocalProtocolError`` (code
``illegal_state``) naming role, state and command.

Events (frozen slotted dataclasses, :mod:`._events`): ``HandshakeComplete``,
``AuthFailed``, ``ProxyCreated``, ``MessageReceived``, ``ProxyDied``,
``DeadPidSubstituted``, ``LinkRequested``, ``UnlinkRequested``, ``ExitSignalReceived``, ``LinkExitReceived``,
``WhereisRequested``, ``WhereisReplied``, ``HeartbeatReceived``, ``HeartbeatAcked``,
``PeerError``, ``FrameDropped``, ``MessagesUndelivered``, ``SendResult``,
``ConnectionClosed`` (always last: flush
``data_to_send()`` then close the socket).

Errors and policy (docs/protocol.md section 9). ``next_event()`` never raises for
anything the peer sends: a dropped frame is a ``FrameDropped`` event (plus an
``{error, Code, Msg}`` frame to a peer that agreed on ``error``), a fatal condition is
``[AuthFailed,] ConnectionClosed(code, ...)`` with the ``RemoteProtocolError`` /
``AuthenticationError`` attached for the transport to raise or log. The exception
classes are :class:`ProtocolError` (``.code``) > :class:`LocalProtocolError` >
:class:`FeatureNotSupported`; :class:`RemoteProtocolError`; :class:`AuthenticationError`.

Time. The core has no clock; the transport owns the timers and tells the core:
``handshake_timed_out()`` when ``handshake_timeout`` expires (the server then answers
``{auth, failed}``), ``heartbeat()`` after our own ``heartbeat_interval`` ms without
sending (when ``heartbeat`` is agreed), and ``connection_lost()`` after 3 of the
peer's intervals (``HandshakeComplete.peer_heartbeat``) without receiving anything.

Note the h11 laziness: ``receive_data()`` only buffers; frames are processed, and any
replies queued, by ``next_event()``/``events()``. Call it until ``NEED_DATA`` before
``data_to_send()``.

Sessions and resume. A :class:`Session` holds the id tables. Without the ``session``
feature, losing the connection ends them: ``ProxyDied(pid, id, noconnection)`` events
precede ``ConnectionClosed``. With it, the tables survive the ``Connection``: the client
transport builds the next connection with ``Connection(..., session=old.session)`` (the
Accept then asks for a resume); the server transport keeps ``conn.session`` (by
``session.id``) for ``session_timeout`` and passes ``find_session`` to new connections.
``HandshakeComplete.resumed`` says whether ids stayed valid; if not, the client core
emits ``ProxyDied(..., noconnection)`` for the old proxies. DEAD notices for exported
processes that end while disconnected (``process_exited`` on the closed connection) are
kept in the session and sent right after the resume, preceded by the last
:data:`RESEND_DEAD` notices sent before the cut (docs/protocol.md section 7; the peer
ignores the ones it already had). Commands the transport could not send meanwhile are
kept with ``session.defer(SendMessage(...))`` (or ``LinkCommand``, ``UnlinkCommand``,
``ExitSignalCommand``) and sent by ``conn.send_deferred()`` once the next connection is
established, resumed or not (those naming a proxy that is gone are dropped). When the server transport
gives up on a session it calls ``session.expire()`` and terminates the returned proxies
with ``noconnection``.

Encoding is the original's: ``m`` frames ``term_to_binary(T, [{minor_version,1},
compressed])``; every other frame plain ``term_to_binary/1`` of OTP 25, which is
``minor_version`` 1 (ATOM_EXT, NEW_FLOAT_EXT: checked against the recorded vectors).
"""

from ._config import ConnectionConfig
from ._connection import Connection
from ._constants import (
    DEFAULT_ERROR_WINDOW,
    DEFAULT_MAX_ERRORS,
    DEFAULT_MAX_EXPORTS,
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_HANDSHAKE_FRAME,
    DEFAULT_MAX_PROXIES,
    FEATURES,
)
from ._errors import (
    AuthenticationError,
    FeatureNotSupported,
    LocalProtocolError,
    NodeNameInUse,
    ProtocolError,
    RemoteProtocolError,
)
from ._events import (
    NEED_DATA,
    AuthFailed,
    ConnectionClosed,
    DeadPidSubstituted,
    Event,
    ExitSignalReceived,
    FrameDropped,
    HandshakeComplete,
    HeartbeatAcked,
    HeartbeatReceived,
    LinkExitReceived,
    LinkRequested,
    MessageReceived,
    MessageRouted,
    MessagesUndelivered,
    NodeDown,
    NodesReplied,
    NodesRequested,
    NodeUp,
    PeerError,
    ProxyCreated,
    ProxyDied,
    SendResult,
    UndeliveredMessage,
    UnlinkRequested,
    WhereisNodeRequested,
    WhereisReplied,
    WhereisRequested,
)
from ._global import GlobalReplied
from ._pg import GroupReplied
from ._policy import NamePolicy
from ._route import ROUTE_EVENTS, RouteHooks
from ._session import (
    RESEND_DEAD,
    ConfirmedSend,
    Deferred,
    ExitSignalCommand,
    LinkCommand,
    SendMessage,
    Session,
    UnlinkCommand,
)

__all__ = [
    "Connection",
    "ConnectionConfig",
    "Session",
    "RESEND_DEAD",
    "Deferred",
    "SendMessage",
    "ConfirmedSend",
    "LinkCommand",
    "UnlinkCommand",
    "ExitSignalCommand",
    "NamePolicy",
    "FEATURES",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_HANDSHAKE_FRAME",
    "DEFAULT_MAX_ERRORS",
    "DEFAULT_ERROR_WINDOW",
    "DEFAULT_MAX_PROXIES",
    "DEFAULT_MAX_EXPORTS",
    "NEED_DATA",
    "ProtocolError",
    "LocalProtocolError",
    "FeatureNotSupported",
    "RemoteProtocolError",
    "AuthenticationError",
    "NodeNameInUse",
    "RouteHooks",
    "ROUTE_EVENTS",
    "MessageRouted",
    "WhereisNodeRequested",
    "NodesRequested",
    "NodesReplied",
    "NodeUp",
    "NodeDown",
    "GlobalReplied",
    "GroupReplied",
    "Event",
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
    "HeartbeatReceived",
    "HeartbeatAcked",
    "PeerError",
    "FrameDropped",
    "ConnectionClosed",
    "MessagesUndelivered",
    "UndeliveredMessage",
    "SendResult",
]
