"""The sans-IO fabric connection: bytes in -> events out; commands in -> bytes out.

See the package docstring (``pyfabric.protocol``) for the model and the API. This module
is the glue: the state table (:mod:`._state`) decides what is legal, the framing buffers
(:mod:`._framing`) cut and queue frames, the handshake objects (:mod:`._handshake_client`,
:mod:`._handshake_server`) authenticate, the established state (:mod:`._established`,
:mod:`._commands`) handles frames and commands (the command methods are
:class:`~._conn_commands.ConnectionCommands`, a base of :class:`Connection`), and
:mod:`._error_policy` decides what a bad frame costs. The :class:`Session` owns the tables and the outbox.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

from ..etf import Atom, DecodeError, Pid, decode
from . import _acks as acks
from ._commands import Commands, default_dead_pid, establish
from ._config import ConnectionConfig
from ._conn_commands import ConnectionCommands
from ._constants import (
    A_ACK,
    A_AUTH,
    A_CHALLENGE,
    A_FAILED,
    A_HELLO,
    A_M,
    A_NOCONNECTION,
    A_RESPONSE,
    INTERNAL_ERROR,
    plain,
)
from ._error_policy import ErrorWindow, HandshakeFailure, error_frame, is_error_frame
from ._errors import (
    AuthenticationError,
    ConfirmRefused,
    NodeNameInUse,
    ProtocolError,
    RemoteProtocolError,
)
from ._established import UNSEQUENCED, Established
from ._events import NEED_DATA, AuthFailed, ConnectionClosed, Event, FrameDropped, HandshakeComplete, ProxyDied
from ._fastpath import received_m, send_m
from ._flow import FlowMixin, new_credit
from ._framing import FrameReader, FrameTooLarge, FrameWriter
from ._global import GlobalMixin
from ._handshake import Agreement
from ._handshake_client import ClientHandshake
from ._handshake_server import ServerHandshake
from ._outbox import Outbox
from ._pg import PgMixin
from ._rewrite import describe
from ._route import RouteHooks, RouteMixin
from ._session import Session
from ._state import (
    AWAIT_AUTH,
    AWAIT_CHALLENGE,
    AWAIT_HELLO,
    AWAIT_RESPONSE,
    CLIENT,
    CLOSED,
    ESTABLISHED,
    SERVER,
    ConnectionState,
)

__all__ = ["Connection"]

log = logging.getLogger("pyfabric.protocol")

# Handshake frames legal in each waiting state: (tag, the state table's input).
_HANDSHAKE_FRAMES = {
    AWAIT_HELLO: (A_HELLO, "recv:hello"),
    AWAIT_RESPONSE: (A_RESPONSE, "recv:response"),
    AWAIT_CHALLENGE: (A_CHALLENGE, "recv:challenge"),
    AWAIT_AUTH: (A_AUTH, "recv:auth"),
}


class Connection(ConnectionCommands, acks.AcksMixin, FlowMixin, RouteMixin, GlobalMixin, PgMixin):
    """One side of one fabric connection (see the package docstring).

    ``config`` (a :class:`ConnectionConfig`) or the options as keywords (``secret``
    positional, then any field of :class:`ConnectionConfig` and ``force_allowed``); the
    other keywords bind the connection to its runtime and transport.
    """

    def __init__(
        self,
        role: str,
        secret: bytes | str | None = None,
        *,
        node_name: Atom | str,
        new_proxy_pid: Callable[[int], Pid],
        config: ConnectionConfig | None = None,
        is_alive: Callable[[Pid], bool] | None = None,
        new_dead_pid: Callable[[int], Pid] | None = None,
        on_export: Callable[[Pid, int], None] | None = None,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        session: Session | None = None,
        find_session: Callable[[bytes], Session | None] | None = None,
        route: RouteHooks | None = None,
        peer: str = "?",
        **options: Any,
    ) -> None:
        self._state = ConnectionState(role)
        self.role = role
        if config is None:
            if secret is None:
                raise TypeError("Connection needs a secret or a config")
            config = ConnectionConfig.build(secret, **options)
        elif secret is not None or options:
            raise TypeError("pass either config or secret and options, not both")
        self.config = config
        self.node_name = node_name if node_name.__class__ is Atom else Atom(str(node_name))
        self.peer = peer
        self._new_proxy_pid = new_proxy_pid
        self._new_dead_pid = new_dead_pid or default_dead_pid(self.node_name)
        self._is_alive = is_alive or (lambda pid: True)
        self._on_export = on_export
        self._limits = config.limits()
        self._hs_limits = config.handshake_limits()
        self._reader = FrameReader()
        self._writer = FrameWriter()
        self.output = self._writer
        """What is queued for the socket; ``output.size`` is :meth:`pending_output`
        without a call (the transport's hot paths read it)."""
        self._events: deque[Event] = deque()
        self._errors = ErrorWindow(config.max_errors, config.error_window)
        self._handshake: ClientHandshake | ServerHandshake | None
        if role == CLIENT:
            self._handshake = ClientHandshake(config, self.node_name, random_bytes=random_bytes, resume_from=session)
        else:
            self._handshake = ServerHandshake(
                config, self.node_name, random_bytes=random_bytes, find_session=find_session, route=route, peer=peer
            )
        self._route = route if role == SERVER else None
        self._agreed: Agreement = self._handshake.agreed
        # Until established: the session a resume would continue (client), else a blank one.
        self._session = session if role == CLIENT and session is not None else Session()
        if self._session is not session:
            self._session.attached = True
        self._est: Established | None = None
        self._cmd: Commands | None = None
        self.deliver: Callable[[Any, Any, Any], None] | None = None
        """The runtime's hook for the fused ``m`` path (:mod:`._fastpath`): when set, a
        received ``{m, Dest, Payload}`` to an exported id or a registered name is handed
        to it as ``deliver(target, payload, credit)`` (what a ``MessageReceived`` would
        carry) instead of becoming an event; the others stay events, in order."""

    # -- introspection ----------------------------------------------------------------

    @property
    def state(self) -> str:
        """The state of the connection (``_state.py``: ``"established"``, ``"closed"`` ...)."""
        return self._state.state

    @property
    def session(self) -> Session:
        """The id tables and outbox of this connection's session."""
        return self._session

    # What the handshake settled (``Agreement``), and our own limits.
    mode = property(lambda self: self._agreed.mode, doc='``"extended"``, ``"legacy"``, or None before the hello/challenge.')
    version = property(lambda self: self._agreed.version, doc="The agreed extension version (0: legacy).")
    features = property(lambda self: self._agreed.features, doc="The agreed features (empty for a legacy peer).")
    peer_node = property(lambda self: self._agreed.peer_node, doc="The peer's node name (extended peers only).")
    peer_max_frame = property(lambda self: self._agreed.peer_max_frame, doc="The largest frame the peer accepts.")
    peer_heartbeat = property(lambda self: self._agreed.peer_heartbeat, doc="The peer's heartbeat interval, ms (0: none).")
    max_frame = property(lambda self: self.config.max_frame, doc="The largest frame we accept once established.")
    max_proxies = property(lambda self: self.config.max_proxies, doc="``config.max_proxies``")
    max_exports = property(lambda self: self.config.max_exports, doc="``config.max_exports``")
    allow_legacy_auth = property(lambda self: self.config.allow_legacy_auth, doc="``config.allow_legacy_auth``")

    def policy(self, name: Atom | str) -> bool:
        """Does the name policy let the peer reach ``name``?"""
        return self.config.allowed(name)

    # -- I/O boundary ---------------------------------------------------------------

    def pending_output(self) -> int:
        """How many bytes are queued for ``data_to_send()`` (for the transport's backpressure)."""
        return self._writer.size

    def data_to_send(self) -> bytes:
        """Everything queued for the socket since the last call (possibly ``b""``)."""
        return self._writer.take()

    def data_to_send_pieces(self) -> list[bytes]:
        """What :meth:`data_to_send` returns, as pieces to write in order (not copied)."""
        return self._writer.take_pieces()

    send_m = send_m
    """``send_m(dest, payload) -> bool``: the fused :meth:`send_message` to a proxy pid
    (:func:`._fastpath.send_m`, bound as the method itself: no call in between): True if
    the frame was queued; False (nothing done) when the message needs
    :meth:`send_message` (which queues it, lets it wait, or raises)."""

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Hand received bytes to the core; call ``next_event()`` until ``NEED_DATA``.

        Bytes received after the connection closed are ignored. End of stream is not
        signalled here: call :meth:`connection_lost`.
        """
        if self._state.state == CLOSED or not data:
            return
        self._reader.feed(data)

    def has_events(self) -> bool:
        """Would :meth:`next_event` return an event now rather than ``NEED_DATA``: an event
        waits, or a whole frame is buffered (or anything before the connection is
        established)? False after bytes that complete no frame: the transport may skip its
        event loop for them (a large frame arrives in several reads)."""
        if self._events:
            return True
        state = self._state.state
        if state != ESTABLISHED:
            return state != CLOSED
        return self._reader.frame_ready(self.config.max_frame)

    def buffered_input(self) -> int:
        """Bytes held by the receive buffer (frames not processed yet, and consumed
        bytes not compacted away yet)."""
        return len(self._reader)

    def next_event(self) -> Event | Any:
        """The next event, or ``NEED_DATA``. Never raises for anything the peer sent."""
        events = self._events
        reader = self._reader
        while not events:
            state = self._state.state
            if state == CLOSED:
                return NEED_DATA
            limit = self.config.max_frame if state == ESTABLISHED else self.config.max_handshake_frame
            try:
                span = reader.next_frame(limit)
            except FrameTooLarge as exc:
                self._fatal(RemoteProtocolError("frame_too_large", str(exc)))
                continue
            if span is None:
                return NEED_DATA
            if state == ESTABLISHED:
                self._on_frame(*span)
            else:
                self._on_handshake_frame(reader.frame_bytes(*span))
        return events.popleft()

    def events(self) -> list[Event]:
        """All events available now (``next_event()`` until ``NEED_DATA``)."""
        out: list[Event] = []
        while True:
            event = self.next_event()
            if event is NEED_DATA:
                return out
            out.append(event)

    # -- received frames --------------------------------------------------------------

    def _on_frame(self, start: int, end: int) -> None:
        # Only next_event calls this, in state ESTABLISHED: the state table's "recv:frame"
        # (legal there, the state unchanged) needs no lookup per frame.
        self._errors.frame_received()
        outbox = self._session.outbox
        try:
            term = self._reader.decode(start, end, self._limits)
        except DecodeError as exc:
            if outbox is not None:
                self._handled(outbox)  # undecodable: sequenced (docs/protocol.md 11.2)
            self._drop(RemoteProtocolError("bad_term", f"frame is not a valid term: {exc}"))
            return
        tag = term[0] if type(term) is tuple and term else None
        if outbox is not None:
            # Atoms are interned: `is A_M` settles the common case without hashing.
            if tag is A_M or tag.__class__ is not Atom or tag not in UNSEQUENCED:
                outbox.received += 1  # counted before it is acted on (see _handled)
                if outbox.received - outbox.ack_sent >= self.config.ack_every:
                    acks.write_ack(outbox, self._writer)
            elif tag == A_ACK:
                self._ack_received(term)
                return
        est = self._est
        est.frame_size = end - start  # type: ignore[union-attr]
        hit = None
        try:
            deliver = self.deliver
            if tag is A_M and deliver is not None and len(term) == 3 and not self._events:
                hit = received_m(est, term[1], term[2])  # type: ignore[arg-type]
            if hit is None:
                est.dispatch(term)  # type: ignore[union-attr]
        except RemoteProtocolError as exc:
            self._drop(exc, reply=not is_error_frame(term) and exc.__class__ is not ConfirmRefused)
        except Exception as exc:  # a bug of ours: never let the peer crash the connection
            log.exception("peer %s: internal error while handling a frame", self.peer)
            self._drop(RemoteProtocolError("unknown_frame", f"{INTERNAL_ERROR}: {type(exc).__name__}: {exc}"))
            return
        if hit:  # outside the try: what the runtime raises is not the peer's fault
            deliver(*hit)  # type: ignore[misc]

    def _on_handshake_frame(self, raw: bytes) -> None:
        try:
            term = decode(raw, limits=self._hs_limits)
        except DecodeError as exc:
            self._auth_failed(f"handshake frame is not a valid term: {exc}", remote=True)
            return
        try:
            self._handshake_step(raw, term)
        except HandshakeFailure as failure:
            self._auth_failed(failure.message, remote=failure.remote, code=failure.code, reply=failure.reply)
        except Exception as exc:  # a bug of ours: fail the handshake, never crash
            log.exception("peer %s: internal error during the handshake", self.peer)
            self._auth_failed(f"{INTERNAL_ERROR}: {type(exc).__name__}: {exc}", remote=False)

    def _handshake_step(self, raw: bytes, term: Any) -> None:
        state = self._state.state
        expected = _HANDSHAKE_FRAMES.get(state)
        if (
            expected is None
            or type(term) is not tuple
            or len(term) < 2
            or term[0].__class__ is not Atom
            or term[0] != expected[0]
            or (state == AWAIT_HELLO and len(term) != 2)
        ):
            raise HandshakeFailure(f"unexpected handshake frame {describe(term)} in state {state}")
        hs = self._handshake
        if isinstance(hs, ServerHandshake):
            if state == AWAIT_HELLO:
                self._state.process("recv:hello")
                self._writer.write(hs.on_hello(raw, term[1]))
                return
            reply = hs.on_response(raw, term)
            self._state.process("recv:response")
            self._writer.write(reply)
        else:
            assert hs is not None
            if state == AWAIT_CHALLENGE:
                reply = hs.on_challenge(raw, term)
                self._state.process("recv:challenge")
                self._writer.write(reply)
                return
            hs.on_auth(term)
            self._state.process("recv:auth")
        self._established()

    def _established(self) -> None:
        agreed = self._agreed
        if agreed.mode == "legacy":
            agreed.features = frozenset()
            agreed.version = 0
        for ident, pid in agreed.expired:
            self._events.append(ProxyDied(pid, ident, A_NOCONNECTION))
        if agreed.session is not None:
            self._session = agreed.session
        session = self._session
        session.attached = True
        self._handshake = None
        if "acks" in agreed.features and session.outbox is None:
            session.outbox = Outbox()
        if "credit" in agreed.features and session.credit is None and agreed.peer_windows is not None:
            session.credit = new_credit(self.config, agreed.peer_windows)
        if agreed.not_resumable:
            self._end("not_resumable", *acks.refuse_resume(agreed, self._writer, self._events, self.peer))
            return
        self._cmd = establish(
            session,
            agreed,
            self.config,
            writer=self._writer,
            events=self._events,
            limits=self._limits,
            is_alive=self._is_alive,
            new_proxy_pid=self._new_proxy_pid,
            new_dead_pid=self._new_dead_pid,
            on_export=self._on_export,
            peer=self.peer,
        )
        self._est = self._cmd.est
        self._est.pump = self._pump
        self._est.hub = self._route  # a routing server resolves {Name, Node} (16.3)
        self._est.route_from = agreed.peer_node if "route" in agreed.features else None
        self._events.append(
            HandshakeComplete(
                mode=agreed.mode or "legacy",
                version=agreed.version,
                features=agreed.features,
                peer_node=agreed.peer_node,
                session_id=session.id,
                resumed=agreed.resumed,
                peer_max_frame=agreed.peer_max_frame,
                peer_heartbeat=agreed.peer_heartbeat,
                resume_refused=agreed.resume_refused,
                refused_session_id=agreed.refused_id,
                heartbeat=agreed.heartbeat if agreed.heartbeat >= 0 else self.config.heartbeat_interval,
            )
        )
        acks.after_handshake(session, agreed, self._writer, self._events)

    # -- errors and closing -----------------------------------------------------------

    def _drop(self, error: RemoteProtocolError, reply: bool = True) -> None:
        """Drop one received frame (docs/protocol.md section 9)."""
        if error.code != "not_allowed":
            log.info("peer %s: frame dropped: %s", self.peer, error)
        self._events.append(FrameDropped(error))
        if reply and "error" in self.features:
            self._writer.write(error_frame(error))
        fatal = self._errors.dropped()
        if fatal is not None:
            self._fatal(fatal)

    def _fatal(self, error: ProtocolError) -> None:
        """Close because of the peer's input (error frame first when the peer is ours)."""
        log.debug("peer %s: closing: %s", self.peer, error)  # the transport logs the close
        if self._state.state == ESTABLISHED:
            if "error" in self.features:
                self._writer.write(error_frame(error))
            self._end(error.code, error.message, error)
        else:
            self._auth_failed(error.message, remote=True, code=error.code)

    def _auth_failed(self, message: str, *, remote: bool, code: str = "auth_failed", reply: bytes | None = None) -> None:
        if self.role == SERVER and self._state.state == AWAIT_RESPONSE:
            # The client waits for it: {auth, failed}, or a refusal it can verify (16.1).
            self._writer.write(reply if reply is not None else plain((A_AUTH, A_FAILED)))
        log.debug("peer %s: authentication failed: %s", self.peer, message)  # AuthFailed: the transport logs it
        error = NodeNameInUse(message) if code == "node_in_use" else AuthenticationError(message)
        self._events.append(AuthFailed(error))
        self._end(code, message, error)

    def _end(self, code: str | None, message: str, error: ProtocolError | None, *, how: str = "fail") -> None:
        was_established = self._state.state == ESTABLISHED
        self._state.process(how)
        self._reader.clear()
        session = self._session
        session.attached = False
        if was_established and session.id is None:
            # No session to resume: the peer's processes are gone for us.
            for ident, pid in list(session.proxies.items()):
                self._events.append(ProxyDied(pid, ident, A_NOCONNECTION))
            session.expire()
        self._events.append(ConnectionClosed(code, message, error))

    def connection_lost(self) -> None:
        """The transport lost the connection (EOF or error). With an agreed session the
        id tables stay in ``session`` for a resume; otherwise every proxy dies with
        ``noconnection`` (``ProxyDied`` events)."""
        if self._state.state == CLOSED:
            return
        self._end(None, "connection lost", None, how="connection_lost")

    def close(self) -> None:
        """Close on our own initiative (nothing is sent: the protocol has no close frame)."""
        if self._state.state == CLOSED:
            return
        self._end(None, "closed locally", None, how="close")

    def handshake_timed_out(self) -> None:
        """The transport's handshake timer fired (``handshake_timeout``, default 10 s).
        The server answers ``{auth, failed}`` if the client waits for it, then closes."""
        self._state.check("handshake_timed_out")
        self._auth_failed("handshake timed out", remote=True)
