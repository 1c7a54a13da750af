"""The sans-IO fabric connection: bytes in -> events out; commands in -> bytes out.

See the package docstring (``pyfabric.protocol``) for the model and the API.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import struct
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ..etf import Atom, DecodeError, DecodeLimits, EncodeError, Pid, decode, decode_from, encode
from . import _handshake as hs
from ._errors import (
    AuthenticationError,
    FeatureNotSupported,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from ._events import (
    NEED_DATA,
    AuthFailed,
    ConnectionClosed,
    Event,
    ExitSignalReceived,
    FrameDropped,
    HandshakeComplete,
    HeartbeatAcked,
    HeartbeatReceived,
    LinkRequested,
    MessageReceived,
    PeerError,
    ProxyDied,
    UnlinkRequested,
    WhereisReplied,
    WhereisRequested,
)
from ._policy import NamePolicy
from ._rewrite import A_PR, Rewriter
from ._session import Session
from ._state import (
    AWAIT_AUTH,
    AWAIT_CHALLENGE,
    AWAIT_HELLO,
    AWAIT_RESPONSE,
    CLIENT,
    CLOSED,
    ESTABLISHED,
    HANDSHAKE_STATES,
    SERVER,
    ConnectionState,
)

__all__ = [
    "Connection",
    "FEATURES",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_HANDSHAKE_FRAME",
    "DEFAULT_MAX_ERRORS",
    "DEFAULT_ERROR_WINDOW",
    "DEFAULT_MAX_PROXIES",
    "DEFAULT_MAX_EXPORTS",
]

log = logging.getLogger("pyfabric.protocol")

FEATURES = frozenset(
    {"whereis", "link", "maps", "bitstrings", "ports", "funs", "heartbeat", "error", "session"}
)
"""The features of extension version 1 (docs/protocol.md section 3.5)."""

DEFAULT_MAX_FRAME = 64 * 1024 * 1024
"""Largest frame accepted after authentication (64 MiB: big messages, bounded memory)."""
DEFAULT_MAX_HANDSHAKE_FRAME = 16 * 1024
"""Largest frame accepted before authentication: every handshake frame is < 1 KiB, and
an unauthenticated peer must not make us buffer more."""
DEFAULT_MAX_ERRORS = 20
DEFAULT_ERROR_WINDOW = 200
DEFAULT_MAX_PROXIES = 100_000
"""Proxies (remote process ids the peer shipped) one connection's session may hold. A
received frame that would create one more is dropped with code ``limit``; a proxy is
released when the peer reports its process ``DEAD``."""
DEFAULT_MAX_EXPORTS = 100_000
"""Local pids one connection's session may have exported as ``{pr, Id}``. A command that
would export one more raises :class:`LocalProtocolError` (code ``limit``) and sends
nothing; an export is released when its process ends."""
MAX_PACKET = 0xFFFFFFFF  # {packet,4}: the length must fit in 32 bits
# The payload rewriter and the encoder recurse per nesting level; 512 keeps well clear
# of Python's recursion limit while allowing any sane message.
DEFAULT_MAX_DEPTH = 512
_MAX_ERROR_TEXT = 300
INTERNAL_ERROR = "internal error while handling the frame"
_COMPACT_AT = 64 * 1024

_u32 = struct.Struct(">I")
_unpack_u32 = _u32.unpack_from

A_HELLO = Atom("hello")
A_CHALLENGE = Atom("challenge")
A_RESPONSE = Atom("response")
A_AUTH = Atom("auth")
A_SUCCESS = Atom("success")
A_FAILED = Atom("failed")
A_M = Atom("m")
A_DEAD = Atom("DEAD")
A_R = Atom("r")
A_WHEREIS = Atom("whereis")
A_WHEREIS_REPLY = Atom("whereis_reply")
A_LINK = Atom("link")
A_UNLINK = Atom("unlink")
A_EXIT2 = Atom("exit2")
A_HEARTBEAT = Atom("heartbeat")
A_HEARTBEAT_ACK = Atom("heartbeat_ack")
A_ERROR = Atom("error")
A_UNDEFINED = Atom("undefined")
A_NOPROC = Atom("noproc")
A_NORMAL = Atom("normal")
A_NOCONNECTION = Atom("noconnection")
A_TRUE = Atom("true")
A_FALSE = Atom("false")

# Frame kinds after authentication -> the feature they need (None: legacy frame).
_FRAME_FEATURE = {
    A_WHEREIS: "whereis",
    A_WHEREIS_REPLY: "whereis",
    A_LINK: "link",
    A_UNLINK: "link",
    A_EXIT2: "link",
    A_HEARTBEAT: "heartbeat",
    A_HEARTBEAT_ACK: "heartbeat",
    A_ERROR: "error",
}


def _plain(term: Any) -> bytes:
    """``term_to_binary/1`` as OTP 25 writes it (minor_version 1, never compressed)."""
    return encode(term, minor_version=1)


def _default_dead_pid(node: Atom) -> Callable[[int], Pid]:
    def dead_pid(local_id: int) -> Pid:
        # No process ever has id 0 in our runtime: sending to it does nothing.
        return Pid(node, 0, 0, 0)

    return dead_pid


class Connection:
    """One side of one fabric connection (see the package docstring)."""

    def __init__(
        self,
        role: str,
        secret: bytes | str,
        *,
        node_name: Atom | str,
        new_proxy_pid: Callable[[int], Pid],
        allowed: Iterable[Atom | str] | Callable[[str], bool] | NamePolicy = (),
        force_allowed: Iterable[Atom | str] = (),
        allow_legacy_auth: bool = False,
        features: Iterable[str] = FEATURES,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_handshake_frame: int = DEFAULT_MAX_HANDSHAKE_FRAME,
        heartbeat_interval: int = 0,
        max_errors: int = DEFAULT_MAX_ERRORS,
        error_window: int = DEFAULT_ERROR_WINDOW,
        max_proxies: int = DEFAULT_MAX_PROXIES,
        max_exports: int = DEFAULT_MAX_EXPORTS,
        decode_limits: DecodeLimits | None = None,
        is_alive: Callable[[Pid], bool] | None = None,
        new_dead_pid: Callable[[int], Pid] | None = None,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        session: Session | None = None,
        find_session: Callable[[bytes], Session | None] | None = None,
        compress_messages: bool = False,
        peer: str = "?",
    ) -> None:
        self._state = ConnectionState(role)
        self.role = role
        self._secret = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        self.node_name = node_name if node_name.__class__ is Atom else Atom(str(node_name))
        self._policy = allowed if isinstance(allowed, NamePolicy) else NamePolicy(allowed, force=force_allowed)
        self.allow_legacy_auth = bool(allow_legacy_auth)
        features = frozenset(features)
        unknown = features - FEATURES
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}; version 1 knows {sorted(FEATURES)}")
        self._offered = features
        if not 0 < max_frame <= MAX_PACKET or not 0 < max_handshake_frame <= MAX_PACKET:
            raise ValueError("max_frame and max_handshake_frame must be in 1..2**32-1")
        self.max_frame = max_frame
        self.max_handshake_frame = max_handshake_frame
        self.heartbeat_interval = heartbeat_interval
        self.max_errors = max_errors
        self.error_window = error_window
        if max_proxies < 1 or max_exports < 1:
            raise ValueError("max_proxies and max_exports must be at least 1")
        self.max_proxies = max_proxies
        self.max_exports = max_exports
        self._limits = decode_limits or DecodeLimits(
            max_input_size=max_frame,
            max_binary_size=max_frame,
            max_decompressed_size=max_frame,
            max_depth=DEFAULT_MAX_DEPTH,
        )
        self._hs_limits = DecodeLimits(
            max_input_size=max_handshake_frame,
            max_binary_size=max_handshake_frame,
            max_decompressed_size=max_handshake_frame,
            max_depth=16,
            max_container_len=256,
            max_total_terms=4096,
            max_bignum_bytes=16,
        )
        self._new_proxy_pid = new_proxy_pid
        self._new_dead_pid = new_dead_pid or _default_dead_pid(self.node_name)
        self._is_alive = is_alive or (lambda pid: True)
        self._random_bytes = random_bytes
        self._find_session = find_session
        self._compress = bool(compress_messages)
        self.peer = peer

        self._resume_from = session if role == CLIENT else None
        self._session = Session()
        self._session.attached = True
        self._rw = self._make_rewriter(frozenset())

        self.mode: str | None = None
        self.version = 0
        self.features: frozenset[str] = frozenset()
        self.peer_node: Atom | None = None
        self.peer_max_frame = DEFAULT_MAX_FRAME
        self.peer_heartbeat = 0

        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._rbuf: bytes | bytearray = b""
        self._rpos = 0
        self._transcript: list[bytes] = []  # F1, F2, F3 as they travelled
        self._offer_features: frozenset[str] = frozenset()
        self._legacy_challenge = ""
        self._accept_resume: bytes | None = None
        self._nframes = 0
        self._error_frames: deque[int] = deque()
        self._next_req_id = 1
        self._our_whereis: set[int] = set()
        self._their_whereis: set[int] = set()
        self._heartbeat_n = 0

    # -- introspection ----------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state.state

    @property
    def session(self) -> Session:
        """The id tables (exports, proxies) of this connection's session."""
        return self._session

    def policy(self, name: Atom | str) -> bool:
        """Does the name policy let the peer reach ``name``?"""
        return self._policy(name)

    def _make_rewriter(self, features: frozenset[str], *, extended: bool = False) -> Rewriter:
        return Rewriter(
            self._session,
            features=features,
            extended=extended,
            is_alive=self._is_alive,
            new_proxy_pid=self._new_proxy_pid,
            new_dead_pid=self._new_dead_pid,
            limits=self._limits,
            max_proxies=self.max_proxies,
            max_exports=self.max_exports,
        )

    # -- I/O boundary ---------------------------------------------------------------

    def pending_output(self) -> int:
        """How many bytes are queued for ``data_to_send()`` (for the transport's backpressure)."""
        return len(self._out)

    def data_to_send(self) -> bytes:
        """Everything queued for the socket since the last call (possibly ``b""``)."""
        if not self._out:
            return b""
        data = bytes(self._out)
        self._out.clear()
        return data

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Hand received bytes to the core; call ``next_event()`` until ``NEED_DATA``.

        Bytes received after the connection closed are ignored. End of stream is not
        signalled here: call :meth:`connection_lost`.
        """
        if self._state.state == CLOSED or not data:
            return
        buf = self._rbuf
        if self._rpos >= len(buf):
            # Nothing buffered: keep an immutable chunk as is, frames decode in place.
            self._rbuf = data if type(data) is bytes else bytes(data)
            self._rpos = 0
            return
        if type(buf) is bytes:
            self._rbuf = buf = bytearray(memoryview(buf)[self._rpos :])
            self._rpos = 0
        elif self._rpos >= _COMPACT_AT and self._rpos * 2 >= len(buf):
            del buf[: self._rpos]
            self._rpos = 0
        buf += data

    def next_event(self) -> Event | Any:
        """The next event, or ``NEED_DATA``. Never raises for anything the peer sent."""
        events = self._events
        while not events:
            if self._state.state == CLOSED:
                return NEED_DATA
            span = self._next_frame()
            if span is None:
                if events:
                    break
                return NEED_DATA
            self._handle_frame(*span)
        return events.popleft()

    def events(self) -> list[Event]:
        """All events available now (``next_event()`` until ``NEED_DATA``)."""
        out = []
        while True:
            event = self.next_event()
            if event is NEED_DATA:
                return out
            out.append(event)

    def _next_frame(self) -> tuple[int, int] | None:
        buf = self._rbuf
        pos = self._rpos
        if len(buf) - pos < 4:
            return None
        (length,) = _unpack_u32(buf, pos)
        limit = self.max_frame if self._state.state == ESTABLISHED else self.max_handshake_frame
        if length > limit:
            self._rbuf, self._rpos = b"", 0
            self._fatal(
                RemoteProtocolError(
                    "frame_too_large", f"peer announced a frame of {length} bytes, the limit is {limit}"
                )
            )
            return None
        start = pos + 4
        end = start + length
        if end > len(buf):
            return None
        self._rpos = end
        return start, end

    def _frame_bytes(self, start: int, end: int) -> bytes:
        buf = self._rbuf
        if type(buf) is bytes and start == 0 and end == len(buf):
            return buf
        return bytes(memoryview(buf)[start:end])

    def _decode_frame(self, start: int, end: int) -> Any:
        buf = self._rbuf
        if type(buf) is bytes:
            term, stop = decode_from(buf, start, limits=self._limits)
            if stop != end:
                raise DecodeError("the term does not end where the frame ends", stop - start)
            return term
        view = memoryview(buf)
        try:
            frame = view[start:end]
            try:
                return decode(frame, limits=self._limits)
            finally:
                frame.release()
        finally:
            view.release()

    # -- dispatch of received frames --------------------------------------------------

    def _handle_frame(self, start: int, end: int) -> None:
        state = self._state.state
        if state in HANDSHAKE_STATES:
            raw = self._frame_bytes(start, end)
            try:
                term = decode(raw, limits=self._hs_limits)
            except DecodeError as exc:
                self._auth_failed(f"handshake frame is not a valid term: {exc}", remote=True)
                return
            try:
                self._handle_handshake(state, raw, term)
            except _HandshakeFailure as failure:
                self._auth_failed(failure.message, remote=failure.remote)
            except Exception as exc:  # a bug of ours: fail the handshake, never crash
                log.exception("peer %s: internal error during the handshake", self.peer)
                self._auth_failed(f"{INTERNAL_ERROR}: {type(exc).__name__}: {exc}", remote=False)
            return
        # Established.
        self._nframes += 1
        try:
            term = self._decode_frame(start, end)
        except DecodeError as exc:
            self._drop(RemoteProtocolError("bad_term", f"frame is not a valid term: {exc}"))
            return
        try:
            self._dispatch(term)
        except RemoteProtocolError as exc:
            self._drop(exc, reply=not _is_error_frame(term))
        except Exception as exc:  # a bug of ours: never let the peer crash the connection
            log.exception("peer %s: internal error while handling a frame", self.peer)
            self._drop(RemoteProtocolError("unknown_frame", f"{INTERNAL_ERROR}: {type(exc).__name__}: {exc}"))

    def _dispatch(self, term: Any) -> None:
        if type(term) is not tuple or not term:
            raise RemoteProtocolError("unknown_frame", f"frame is not a tagged tuple: {_describe(term)}")
        tag = term[0]
        n = len(term)
        if tag == A_M and n == 3:
            self._on_message(term[1], term[2])
            return
        if tag == A_DEAD and n == 3:
            self._on_dead(term[1], term[2])
            return
        if tag == A_R and n == 4:
            ident = term[3]
            if type(ident) is not int or ident < 1:
                raise RemoteProtocolError("unknown_frame", "{r, Token, Name, Id} with a bad Id")
            self._rw.proxy_for(ident)
            self._flush_rw_events()
            return
        feature = _FRAME_FEATURE.get(tag) if tag.__class__ is Atom else None
        if feature is None:
            raise RemoteProtocolError("unknown_frame", f"unknown frame {_describe(term)}")
        if feature not in self.features:
            raise RemoteProtocolError("unknown_frame", f"{tag.name} frame but {feature!r} was not agreed")
        handler = getattr(self, "_on_" + tag.name)
        handler(*term[1:]) if _ARITY[tag] == n else _bad_shape(term)

    def _flush_rw_events(self) -> None:
        rw_events = self._rw.events
        if rw_events:
            self._events.extend(rw_events)
            rw_events.clear()

    def _inbound(self, value: Any) -> Any:
        try:
            return self._rw.inbound(value)
        finally:
            self._flush_rw_events()

    def _on_message(self, dest: Any, payload: Any) -> None:
        node = None
        t = type(dest)
        if t is int:
            target = self._session.exports.get(dest)
            if target is None:
                if 0 < dest < self._session.next_export_id:
                    # Issued, but the process has ended: its DEAD is on its way to the peer
                    # (an ordinary race). Sending to a dead process is a no-op in Erlang.
                    log.debug("peer %s: message to ended process id %s dropped", self.peer, dest)
                    return
                raise RemoteProtocolError("unknown_id", f"message to unknown process id {dest}")
        elif t is Atom:
            target = dest
        elif t is tuple and len(dest) == 2 and type(dest[0]) is Atom and type(dest[1]) is Atom:
            # A Python node has no cluster: every Node is this node (docs/protocol.md 4.1).
            target, node = dest
        else:
            raise RemoteProtocolError("unknown_frame", f"m frame with a bad Dest {_describe(dest)}")
        if node is not None or t is Atom:
            if not self._policy(target):
                log.warning("peer %s: message to refused name %s dropped", self.peer, target.name)
                raise RemoteProtocolError("not_allowed", f"name {target.name!r} is not reachable")
        self._events.append(MessageReceived(target, self._inbound(payload), node))

    def _on_dead(self, who: Any, reason: Any) -> None:
        if type(who) is not tuple or len(who) != 2 or who[0] != A_PR or type(who[1]) is not int:
            raise RemoteProtocolError("unknown_frame", f"DEAD frame with a bad id {_describe(who)}")
        ident = who[1]
        pid = self._session.drop_proxy(ident)
        if pid is None:
            log.debug("peer %s: DEAD for unknown id %s ignored", self.peer, ident)
            return
        if self.mode == "legacy" and reason == A_NOPROC:
            reason = A_NORMAL  # the original's rule (docs/protocol.md 4.4)
        self._events.append(ProxyDied(pid, ident, reason))

    def _local_target(self, ident: Any, what: str) -> Pid | None:
        if type(ident) is not int or ident < 1:
            raise RemoteProtocolError("unknown_frame", f"{what} frame with a bad id {_describe(ident)}")
        return self._session.exports.get(ident)

    def _remote_source(self, ident: Any, what: str) -> Pid:
        if type(ident) is not int or ident < 1:
            raise RemoteProtocolError("unknown_frame", f"{what} frame with a bad id {_describe(ident)}")
        try:
            return self._rw.proxy_for(ident)
        finally:
            self._flush_rw_events()

    def _on_link(self, a: Any, b: Any) -> None:
        local = self._local_target(b, "link")
        proxy = self._remote_source(a, "link")
        if local is None:
            # B already ended: its DEAD is on its way (docs/protocol.md 5.2).
            log.debug("peer %s: link to ended process id %s ignored", self.peer, b)
            return
        self._events.append(LinkRequested(proxy, local))

    def _on_unlink(self, a: Any, b: Any) -> None:
        local = self._local_target(b, "unlink")
        proxy = self._remote_source(a, "unlink")
        if local is not None:
            self._events.append(UnlinkRequested(proxy, local))

    def _on_exit2(self, a: Any, b: Any, reason: Any) -> None:
        local = self._local_target(b, "exit2")
        proxy = self._remote_source(a, "exit2")
        reason = self._inbound(reason)
        if local is None:
            log.debug("peer %s: exit2 to ended process id %s ignored", self.peer, b)
            return
        self._events.append(ExitSignalReceived(proxy, local, reason))

    def _on_whereis(self, req_id: Any, name_bin: Any) -> None:
        if type(req_id) is not int or req_id < 1 or type(name_bin) is not bytes:
            raise RemoteProtocolError("unknown_frame", "whereis frame with a bad ReqId or NameBin")
        try:
            name = name_bin.decode("utf-8")
            atom = Atom(name)
        except (UnicodeDecodeError, ValueError, TypeError):
            atom = None
        if atom is None or not self._policy(atom):
            log.warning("peer %s: whereis for refused name %r answered undefined", self.peer, name_bin[:80])
            self._queue(_plain((A_WHEREIS_REPLY, req_id, A_UNDEFINED)), check=False)
            return
        if req_id in self._their_whereis:
            raise RemoteProtocolError("unknown_frame", f"whereis ReqId {req_id} is already pending")
        self._their_whereis.add(req_id)
        self._events.append(WhereisRequested(req_id, atom))

    def _on_whereis_reply(self, req_id: Any, result: Any) -> None:
        if type(req_id) is not int or req_id not in self._our_whereis:
            raise RemoteProtocolError("unknown_frame", f"whereis_reply for unknown ReqId {_describe(req_id)}")
        if result == A_UNDEFINED:
            pid = None
        elif type(result) is tuple and len(result) == 2 and result[0] == A_PR:
            pid = self._remote_source(result[1], "whereis_reply")
        else:
            raise RemoteProtocolError("unknown_frame", f"whereis_reply with a bad Result {_describe(result)}")
        self._our_whereis.discard(req_id)
        self._events.append(WhereisReplied(req_id, pid))

    def _on_heartbeat(self, n: Any) -> None:
        if type(n) is not int or n < 0:
            raise RemoteProtocolError("unknown_frame", "heartbeat with a bad N")
        self._queue(_plain((A_HEARTBEAT_ACK, n)), check=False)
        self._events.append(HeartbeatReceived(n))

    def _on_heartbeat_ack(self, n: Any) -> None:
        if type(n) is not int or n < 0:
            raise RemoteProtocolError("unknown_frame", "heartbeat_ack with a bad N")
        self._events.append(HeartbeatAcked(n))

    def _on_error(self, code: Any, message: Any) -> None:
        if type(code) is not bytes or type(message) is not bytes:
            raise RemoteProtocolError("unknown_frame", "error frame with a non-binary Code or Message")
        code_text = code.decode("utf-8", "replace")[:64]
        text = message.decode("utf-8", "replace")[:_MAX_ERROR_TEXT]
        log.warning("peer %s reported error %s: %s", self.peer, code_text, text)
        self._events.append(PeerError(code_text, text))

    # -- errors and closing -----------------------------------------------------------

    def _error_frames_allowed(self) -> bool:
        return "error" in self.features

    def _drop(self, error: RemoteProtocolError, reply: bool = True) -> None:
        """Drop one received frame (docs/protocol.md section 9)."""
        if error.code != "not_allowed":
            log.info("peer %s: frame dropped: %s", self.peer, error)
        self._events.append(FrameDropped(error))
        if reply and self._error_frames_allowed():
            self._queue(_error_frame(error), check=False)
        window = self._error_frames
        window.append(self._nframes)
        while window and window[0] <= self._nframes - self.error_window:
            window.popleft()
        if len(window) > self.max_errors:
            self._fatal(
                RemoteProtocolError(
                    "too_many_errors",
                    f"{len(window)} dropped frames among the last {self.error_window}",
                )
            )

    def _fatal(self, error: ProtocolError) -> None:
        """Close because of the peer's input (error frame first when the peer is ours)."""
        log.warning("peer %s: closing: %s", self.peer, error)
        if self._state.state == ESTABLISHED:
            if self._error_frames_allowed():
                self._queue(_error_frame(error), check=False)
            self._end(error.code, error.message, error)
        else:
            self._auth_failed(error.message, remote=True, code=error.code)

    def _auth_failed(self, message: str, *, remote: bool, code: str = "auth_failed") -> None:
        if self.role == SERVER and self._state.state == AWAIT_RESPONSE:
            self._queue(_plain((A_AUTH, A_FAILED)), check=False)  # the client waits for it
        log.warning("peer %s: authentication failed: %s", self.peer, message)
        error = AuthenticationError(message)
        self._events.append(AuthFailed(error))
        self._end(code, message, error)

    def _end(self, code: str | None, message: str, error: ProtocolError | None, *, how: str = "fail") -> None:
        was_established = self._state.state == ESTABLISHED
        self._state.process(how)
        self._rbuf, self._rpos = b"", 0
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

    # -- handshake ------------------------------------------------------------------

    def start(self) -> None:
        """Client: queue the hello (always the extended one; an original server ignores
        its Name, docs/protocol.md 3.1)."""
        self._state.process("start")
        nonce = self._random_bytes(32)
        frame = _plain((A_HELLO, hs.ext_hello_name(hs.EXT_VERSION, nonce)))
        self._transcript = [frame]
        self._queue(frame, check=False)

    def _handle_handshake(self, state: str, raw: bytes, term: Any) -> None:
        if type(term) is not tuple or len(term) < 2 or term[0].__class__ is not Atom:
            raise _HandshakeFailure(f"unexpected handshake frame {_describe(term)} in state {state}")
        if state == AWAIT_HELLO and term[0] == A_HELLO and len(term) == 2:
            self._state.process("recv:hello")
            self._server_on_hello(raw, term[1])
        elif state == AWAIT_RESPONSE and term[0] == A_RESPONSE:
            self._server_on_response(raw, term)
        elif state == AWAIT_CHALLENGE and term[0] == A_CHALLENGE:
            self._client_on_challenge(raw, term)
        elif state == AWAIT_AUTH and term[0] == A_AUTH:
            self._client_on_auth(term)
        else:
            raise _HandshakeFailure(f"unexpected handshake frame {_describe(term)} in state {state}")

    # server side

    def _server_on_hello(self, raw: bytes, name: Any) -> None:
        client_version = hs.parse_ext_hello(name)
        if client_version is not None:
            self.mode = "extended"
            self.version = min(client_version, hs.EXT_VERSION)
            features = sorted(self._offered)
            offer = {
                b"version": self.version,
                b"features": [f.encode() for f in features],
                b"node": self.node_name.name.encode("utf-8"),
                b"max_frame": self.max_frame,
                b"heartbeat": self.heartbeat_interval,
            }
            self._offer_features = frozenset(features)
            frame = _plain((A_CHALLENGE, self._random_bytes(32), offer))
        else:
            self.mode = "legacy"
            self._legacy_challenge = self._random_bytes(16).hex()
            frame = _plain((A_CHALLENGE, self._legacy_challenge))
        self._transcript = [raw, frame]
        self._queue(frame, check=False)

    def _server_on_response(self, raw: bytes, term: tuple[Any, ...]) -> None:
        if self.mode == "legacy":
            if len(term) != 2:
                raise _HandshakeFailure("legacy response must be {response, R}")
            if not self.allow_legacy_auth:
                log.warning("peer %s: legacy client refused: MD5 authentication is disabled", self.peer)
                raise _HandshakeFailure("legacy client refused: MD5 authentication is disabled", remote=False)
            response = term[1]
            expected = hs.legacy_response(self._legacy_challenge, self._secret)
            if not (hs.is_lower_hex(response, 32) and hmac.compare_digest(response.encode(), expected.encode())):
                raise _HandshakeFailure("wrong secret (legacy response does not match)")
            self._state.process("recv:response")
            self._queue(_plain((A_AUTH, A_SUCCESS)), check=False)
            self._established(resumed=False)
            return
        if len(term) != 3 or type(term[1]) is not bytes or type(term[2]) is not bytes:
            raise _HandshakeFailure("extended response must be {response, Mac, AcceptBin}")
        mac, accept_bin = term[1], term[2]
        hello, challenge = self._transcript
        expected = hs.client_mac(self._secret, hello, challenge, accept_bin)
        if not hmac.compare_digest(mac, expected):
            raise _HandshakeFailure("wrong secret (client MAC does not verify)")
        try:
            accept = decode(accept_bin, limits=self._hs_limits)
        except DecodeError as exc:
            raise _HandshakeFailure(f"AcceptBin is not a valid term: {exc}") from None
        accept = hs.binary_key_map(accept)
        if accept is None:
            raise _HandshakeFailure("Accept is not a map with binary keys")
        features = hs.feature_list(accept.get(b"features"))
        node = hs.node_atom(accept.get(b"node"))
        max_frame = hs.non_negative_int(accept.get(b"max_frame"))
        heartbeat = hs.non_negative_int(accept.get(b"heartbeat"))
        resume = accept.get(b"resume")
        if features is None or node is None or not max_frame or heartbeat is None:
            raise _HandshakeFailure("Accept lacks features, node, max_frame or heartbeat")
        if not set(features) <= self._offer_features:
            raise _HandshakeFailure(f"accepted features {sorted(set(features) - self._offer_features)} were not offered")
        if resume is not None and type(resume) is not bytes:
            raise _HandshakeFailure("Accept resume is not a binary")
        self._state.process("recv:response")
        self.features = frozenset(features)
        self.peer_node = node
        self.peer_max_frame = max_frame
        self.peer_heartbeat = heartbeat
        resumed = False
        if "session" in self.features:
            found = None
            if resume is not None and self._find_session is not None:
                found = self._find_session(resume)
            if found is not None and not found.attached and found.id == resume:
                self._session = found
                resumed = True
            else:
                self._session = Session(self._random_bytes(16))
            self._session.attached = True
        info: dict[bytes, Any] = {}
        if self._session.id is not None:
            info[b"session"] = self._session.id
        info[b"resumed"] = resumed
        info_bin = _plain(info)
        server_mac = hs.server_mac(self._secret, hello, challenge, raw, info_bin)
        self._queue(_plain((A_AUTH, A_SUCCESS, server_mac, info_bin)), check=False)
        self._established(resumed=resumed)

    # client side

    def _client_on_challenge(self, raw: bytes, term: tuple[Any, ...]) -> None:
        if len(term) == 2:
            challenge = term[1]
            if not self.allow_legacy_auth:
                raise _HandshakeFailure(
                    "the server is an original (MD5-only) fabric peer and legacy authentication is "
                    "disabled; pass allow_legacy_auth=True to allow it (only on a trusted network "
                    "or over TLS: MD5 authentication can be downgraded by an active attacker)",
                    remote=False,
                )
            if type(challenge) is not str or not 0 < len(challenge) <= 1024 or not challenge.isascii():
                raise _HandshakeFailure("legacy challenge is not a short ASCII string")
            self._state.process("recv:challenge")
            self.mode = "legacy"
            frame = _plain((A_RESPONSE, hs.legacy_response(challenge, self._secret)))
            self._queue(frame, check=False)
            return
        if len(term) != 3:
            raise _HandshakeFailure("challenge must be {challenge, C} or {challenge, Nonce, Offer}")
        nonce, offer = term[1], hs.binary_key_map(term[2])
        if type(nonce) is not bytes or len(nonce) != 32 or offer is None:
            raise _HandshakeFailure("extended challenge needs a 32-byte nonce and a binary-keyed offer")
        version = offer.get(b"version")
        features = hs.feature_list(offer.get(b"features"))
        node = hs.node_atom(offer.get(b"node"))
        max_frame = hs.non_negative_int(offer.get(b"max_frame"))
        heartbeat = hs.non_negative_int(offer.get(b"heartbeat"))
        if type(version) is not int or not 1 <= version <= hs.EXT_VERSION:
            raise _HandshakeFailure(f"server offered extension version {_describe(version)}")
        if features is None or node is None or not max_frame or heartbeat is None:
            raise _HandshakeFailure("offer lacks features, node, max_frame or heartbeat")
        self._state.process("recv:challenge")
        self.mode = "extended"
        self.version = version
        # Reserved or unknown names in the offer are ignored (docs/protocol.md 3.5).
        agreed = sorted(self._offered.intersection(features))
        self.features = frozenset(agreed)
        self.peer_node = node
        self.peer_max_frame = max_frame
        self.peer_heartbeat = heartbeat
        accept: dict[bytes, Any] = {
            b"features": [f.encode() for f in agreed],
            b"node": self.node_name.name.encode("utf-8"),
            b"max_frame": self.max_frame,
            b"heartbeat": self.heartbeat_interval,
        }
        old = self._resume_from
        if "session" in self.features and old is not None and old.id is not None:
            accept[b"resume"] = old.id
            self._accept_resume = old.id
        accept_bin = _plain(accept)
        hello = self._transcript[0]
        mac = hs.client_mac(self._secret, hello, raw, accept_bin)
        frame = _plain((A_RESPONSE, mac, accept_bin))
        self._transcript = [hello, raw, frame]
        self._queue(frame, check=False)

    def _client_on_auth(self, term: tuple[Any, ...]) -> None:
        if len(term) == 2 and term[1] == A_FAILED:
            raise _HandshakeFailure("the server refused authentication (wrong secret?)")
        if self.mode == "legacy":
            if len(term) != 2 or term[1] != A_SUCCESS:
                raise _HandshakeFailure(f"unexpected auth frame {_describe(term)}")
            self._state.process("recv:auth")
            self._established(resumed=False)
            return
        if len(term) != 4 or term[1] != A_SUCCESS or type(term[2]) is not bytes or type(term[3]) is not bytes:
            raise _HandshakeFailure(f"unexpected auth frame {_describe(term)}")
        mac, info_bin = term[2], term[3]
        hello, challenge, response = self._transcript
        if not hmac.compare_digest(mac, hs.server_mac(self._secret, hello, challenge, response, info_bin)):
            raise _HandshakeFailure("the server could not prove it knows the secret (server MAC does not verify)")
        try:
            info = hs.binary_key_map(decode(info_bin, limits=self._hs_limits))
        except DecodeError as exc:
            raise _HandshakeFailure(f"InfoBin is not a valid term: {exc}") from None
        if info is None:
            raise _HandshakeFailure("Info is not a map with binary keys")
        session_id = info.get(b"session")
        resumed = info.get(b"resumed", A_FALSE)
        if resumed not in (A_TRUE, A_FALSE):
            raise _HandshakeFailure("Info resumed is not a boolean")
        resumed = resumed == A_TRUE
        if "session" in self.features:
            if type(session_id) is not bytes or len(session_id) != 16:
                raise _HandshakeFailure("Info lacks a 16-byte session id")
            if resumed and session_id != self._accept_resume:
                raise _HandshakeFailure("server resumed a session we did not ask for")
        elif session_id is not None or resumed:
            raise _HandshakeFailure("server sent a session although 'session' was not agreed")
        self._state.process("recv:auth")
        old = self._resume_from
        self._resume_from = None
        if resumed and old is not None:
            self._session = old
        else:
            if old is not None:
                # The old session is gone on the server: its proxies are unreachable.
                for ident, pid in list(old.proxies.items()):
                    self._events.append(ProxyDied(pid, ident, A_NOCONNECTION))
                old.expire()
            self._session = Session(session_id if "session" in self.features else None)
        self._session.attached = True
        self._established(resumed=resumed)

    def _established(self, *, resumed: bool) -> None:
        if self.mode == "legacy":
            self.features = frozenset()
            self.version = 0
        self._rw = self._make_rewriter(self.features, extended=self.mode == "extended")
        self._transcript = []
        self._events.append(
            HandshakeComplete(
                mode=self.mode or "legacy",
                version=self.version,
                features=self.features,
                peer_node=self.peer_node,
                session_id=self._session.id,
                resumed=resumed,
                peer_max_frame=self.peer_max_frame,
                peer_heartbeat=self.peer_heartbeat,
            )
        )
        # What could not be sent while disconnected (docs/protocol.md section 7).
        pending = self._session.pending
        self._session.pending = []
        for term in pending:
            self._queue(_plain(term), check=False)

    # -- commands ---------------------------------------------------------------------

    def _queue(self, frame: bytes, *, check: bool = True) -> None:
        size = len(frame)
        if check and size > self.peer_max_frame:
            raise LocalProtocolError(
                "frame_too_large",
                f"frame of {size} bytes exceeds the peer's limit of {self.peer_max_frame} bytes",
            )
        if size > MAX_PACKET:
            raise LocalProtocolError("frame_too_large", f"frame of {size} bytes does not fit {{packet,4}}")
        out = self._out
        out += _u32.pack(size)
        out += frame

    def _need(self, feature: str) -> None:
        if feature not in self.features:
            raise FeatureNotSupported(feature)

    def _send_rewritten(self, build: Callable[[], bytes]) -> None:
        """Encode a frame that carries rewritten values; all or nothing."""
        rw = self._rw
        try:
            frame = build()
            self._queue(frame)
        except LocalProtocolError:
            rw.rollback()
            raise
        except EncodeError as exc:
            rw.rollback()
            raise LocalProtocolError("bad_payload", f"cannot encode: {exc}") from None
        except RecursionError:
            rw.rollback()
            raise LocalProtocolError("bad_payload", "value is nested too deeply to send") from None
        for ident in rw.commit():
            # Shipped a pid whose process had already ended (docs/protocol.md 4.3): a new
            # export, or an ended one shipped again under its old id; its DEAD follows.
            pid = self._session.exports.get(ident)
            if pid is not None:
                self._session.unexport(pid)
            self._queue(_plain((A_DEAD, (A_PR, ident), A_NOPROC)), check=False)

    def _wire_dest(self, dest: Any) -> Any:
        t = type(dest)
        if t is Pid:
            ident = self._session.proxy_ids.get(dest)
            if ident is None:
                raise LocalProtocolError("unknown_id", f"{dest!r} is not a proxy for a process of this peer")
            return ident
        if t is Atom:
            return dest
        if t is str:
            return Atom(dest)
        if t is int and dest >= 1:
            return dest
        if t is tuple and len(dest) == 2:
            name, node = dest
            name = Atom(name) if type(name) is str else name
            node = Atom(node) if type(node) is str else node
            if type(name) is Atom and type(node) is Atom:
                return (name, node)
        raise LocalProtocolError("unknown_id", f"bad destination {dest!r}: a proxy pid, a name or (name, node)")

    def send_message(self, dest: Pid | Atom | str | tuple[Any, Any] | int, payload: Any) -> None:
        """Queue ``{m, Dest, Payload}``. ``dest``: a proxy pid of this connection, a
        registered name (``Atom``/``str``) or ``(name, node)``. Raises
        LocalProtocolError (nothing queued) if the payload holds a value this peer
        cannot carry, or the frame exceeds the peer's ``max_frame``."""
        self._state.check("send_message")
        wire_dest = self._wire_dest(dest)
        rw = self._rw
        # With an original peer, frames are exactly the original's (compressed when smaller);
        # with ours, compression is the user's choice (docs/protocol.md 4.1).
        compress = True if self.mode == "legacy" else self._compress

        def build() -> bytes:
            return encode((A_M, wire_dest, rw.outbound(payload)), minor_version=1, compressed=compress)

        self._send_rewritten(build)

    def process_exited(self, pid: Pid, reason: Any) -> None:
        """The runtime reports that local process ``pid`` ended (call it for every local
        death, or for every exported one). If the peer knows it, ``{'DEAD', {pr, Id},
        Reason}`` is queued (``reason`` raw). While disconnected with a session, the
        notice is kept and sent after a resume."""
        self._state.process("process_exited")
        session = self._session
        if self._resume_from is not None and self._state.state != ESTABLISHED:
            session = self._resume_from
        ident = session.unexport(pid)
        if ident is None:
            return
        term = (A_DEAD, (A_PR, ident), reason)
        try:
            frame = _plain(term)
        except EncodeError:
            # The peer must learn of the death even if the reason has no Erlang form.
            term = (A_DEAD, (A_PR, ident), (Atom("unencodable_exit_reason"), repr(reason)[:200].encode()))
            frame = _plain(term)
        if self._state.state == ESTABLISHED:
            self._queue(frame, check=False)
        elif session.id is not None:
            session.pending.append(term)

    def _export(self, pid: Any, what: str) -> int:
        if type(pid) is not Pid:
            raise LocalProtocolError("bad_payload", f"{what} must be a Pid, got {type(pid).__name__}")
        if pid in self._session.proxy_ids:
            raise LocalProtocolError("bad_payload", f"{what} {pid!r} is a proxy of this connection, not a local process")
        ident = self._rw._out_pid(pid)[1]
        return ident

    def _proxy_id(self, pid: Any) -> int:
        ident = self._session.proxy_ids.get(pid) if type(pid) is Pid else None
        if ident is None:
            raise LocalProtocolError("unknown_id", f"{pid!r} is not a proxy for a process of this peer")
        return ident

    def link(self, local_pid: Pid, proxy_pid: Pid) -> None:
        """Queue ``{link, A, B}``: ``local_pid`` is now linked to the peer's process."""
        self._link_frame("link", A_LINK, local_pid, proxy_pid)

    def unlink(self, local_pid: Pid, proxy_pid: Pid) -> None:
        """Queue ``{unlink, A, B}``."""
        self._link_frame("unlink", A_UNLINK, local_pid, proxy_pid)

    def _link_frame(self, command: str, tag: Atom, local_pid: Pid, proxy_pid: Pid) -> None:
        self._state.check(command)
        self._need("link")
        b = self._proxy_id(proxy_pid)
        self._send_rewritten(lambda: _plain((tag, self._export(local_pid, "local_pid"), b)))

    def exit_signal(self, local_pid: Pid, proxy_pid: Pid, reason: Any) -> None:
        """Queue ``{exit2, A, B, Reason}``: ``exit(proxy_pid, reason)`` called by ``local_pid``."""
        self._state.check("exit_signal")
        self._need("link")
        b = self._proxy_id(proxy_pid)
        rw = self._rw
        self._send_rewritten(lambda: _plain((A_EXIT2, self._export(local_pid, "local_pid"), b, rw.outbound(reason))))

    def whereis(self, name: Atom | str) -> int:
        """Queue ``{whereis, ReqId, NameBin}``; returns ReqId (matched by ``WhereisReplied``)."""
        self._state.check("whereis")
        self._need("whereis")
        text = name.name if name.__class__ is Atom else str(name)
        req_id = self._next_req_id
        self._queue(_plain((A_WHEREIS, req_id, text.encode("utf-8"))))
        self._next_req_id = req_id + 1
        self._our_whereis.add(req_id)
        return req_id

    def reply_whereis(self, req_id: int, pid: Pid | None) -> None:
        """Answer a ``WhereisRequested``: ``pid`` of the registered process (exported),
        or None if the name is not registered."""
        self._state.check("reply_whereis")
        if req_id not in self._their_whereis:
            raise LocalProtocolError("unknown_id", f"no pending whereis request {req_id!r}")
        if pid is None:
            self._queue(_plain((A_WHEREIS_REPLY, req_id, A_UNDEFINED)))
        else:
            self._send_rewritten(lambda: _plain((A_WHEREIS_REPLY, req_id, (A_PR, self._export(pid, "pid")))))
        self._their_whereis.discard(req_id)

    def heartbeat(self) -> int:
        """Queue ``{heartbeat, N}``; returns N (echoed by ``HeartbeatAcked``)."""
        self._state.check("heartbeat")
        self._need("heartbeat")
        n = self._heartbeat_n
        self._queue(_plain((A_HEARTBEAT, n)))
        self._heartbeat_n = n + 1
        return n


_ARITY = {
    A_WHEREIS: 3,
    A_WHEREIS_REPLY: 3,
    A_LINK: 3,
    A_UNLINK: 3,
    A_EXIT2: 4,
    A_HEARTBEAT: 2,
    A_HEARTBEAT_ACK: 2,
    A_ERROR: 3,
}


def _bad_shape(term: tuple[Any, ...]) -> None:
    raise RemoteProtocolError("unknown_frame", f"{term[0].name} frame with {len(term) - 1} elements")


def _is_error_frame(term: Any) -> bool:
    return type(term) is tuple and len(term) > 0 and term[0] == A_ERROR


def _error_frame(error: ProtocolError) -> bytes:
    return _plain((A_ERROR, error.code.encode(), error.message[:_MAX_ERROR_TEXT].encode("utf-8", "replace")))


def _describe(value: Any) -> str:
    from ._rewrite import _short

    return _short(value)


class _HandshakeFailure(Exception):
    """Internal: abort the handshake (turned into AuthFailed + ConnectionClosed)."""

    def __init__(self, message: str, remote: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.remote = remote
