"""Received frames of an established connection: one table, one handler per frame kind.

:data:`FRAMES` is the only description of the frames a peer may send after the
handshake: for each tag its arity, the feature it needs (None: a legacy frame, always
allowed) and its handler. :func:`classify` checks a decoded frame against it (raising the
:class:`RemoteProtocolError` the error policy turns into a dropped frame), and
:meth:`Established.dispatch` runs the handler, which appends events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..etf import Atom, Pid
from . import _global as glob
from . import _pg as pg
from . import _route as route
from ._constants import (
    A_ACK,
    A_CREDIT,
    A_DEAD,
    A_ERROR,
    A_EXIT2,
    A_HEARTBEAT,
    A_HEARTBEAT_ACK,
    A_LINK,
    A_LINK_EXIT,
    A_M,
    A_MC,
    A_MC_RESULT,
    A_NODEDOWN,
    A_NODES,
    A_NODES_REPLY,
    A_NODEUP,
    A_NOPROC,
    A_NORMAL,
    A_OK,
    A_R,
    A_UNDEFINED,
    A_UNLINK,
    A_WHEREIS,
    A_WHEREIS_NODE,
    A_WHEREIS_REPLY,
    MAX_ERROR_TEXT,
    plain,
)
from ._errors import ConfirmRefused, RemoteProtocolError
from ._events import (
    Event,
    ExitSignalReceived,
    HeartbeatAcked,
    HeartbeatReceived,
    LinkExitReceived,
    LinkRequested,
    MessageReceived,
    MessageRouted,
    PeerError,
    ProxyDied,
    SendResult,
    UnlinkRequested,
    WhereisReplied,
    WhereisRequested,
)
from ._framing import FrameWriter
from ._policy import NamePolicy
from ._rewrite import A_PR, Rewriter, describe
from ._session import Session

__all__ = ["Established", "FrameSpec", "FRAMES", "UNSEQUENCED", "classify"]

log = logging.getLogger("pyfabric.protocol")


class Established:
    """What an established connection knows and does with received frames.

    Shared with the send side (:class:`~._commands.Commands`): the session, the agreed
    features and mode, the payload rewriter, the outbound frames and the event queue,
    and the whereis requests in flight both ways.
    """

    def __init__(
        self,
        *,
        session: Session,
        mode: str,
        features: frozenset[str],
        peer_max_frame: int,
        rewriter: Rewriter,
        writer: FrameWriter,
        events: Any,
        policy: NamePolicy,
        peer: str,
    ) -> None:
        self.session = session
        self.mode = mode
        self.features = features
        self.peer_max_frame = peer_max_frame
        self.rw = rewriter
        self.writer = writer
        self.events = events
        self.policy = policy
        self.peer = peer
        self.our_whereis: set[int] = set()
        self.their_whereis: set[int] = set()
        self.frame_size = 0  # the length of the frame being handled (credit, 12.2)
        self.pump: Callable[[], object] = lambda: None  # issue what waits (set by the connection)
        # `route` (docs/protocol.md 16): a routing server's hooks, and nodes requests in flight
        self.hub: route.RouteHooks | None = None
        self.route_from: Atom | None = None  # the peer's client node name (with `route`)
        self.our_nodes: set[int] = set()
        self.their_nodes: set[int] = set()
        self.our_global: set[int] = set()  # `global` (17): our requests in flight
        self.our_pg: set[int] = set()  # `pg` (18): our requests in flight

    def dispatch(self, term: Any) -> None:
        """Handle one decoded frame; raises RemoteProtocolError to drop it."""
        spec = classify(term, self.features)
        spec.handler(self, *term[1:])

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def flush_rw_events(self) -> None:
        rw_events = self.rw.events
        if rw_events:
            self.events.extend(rw_events)
            rw_events.clear()

    def inbound(self, value: Any) -> Any:
        try:
            return self.rw.inbound(value)
        finally:
            self.flush_rw_events()

    def remote_source(self, ident: Any, what: str) -> Pid:
        if type(ident) is not int or ident < 1:
            raise RemoteProtocolError("unknown_frame", f"{what} frame with a bad id {describe(ident)}")
        try:
            return self.rw.proxy_for(ident)
        finally:
            self.flush_rw_events()

    def local_target(self, ident: Any, what: str) -> Pid | None:
        if type(ident) is not int or ident < 1:
            raise RemoteProtocolError("unknown_frame", f"{what} frame with a bad id {describe(ident)}")
        return self.session.exports.get(ident)

    # -- legacy frames ----------------------------------------------------------------

    def on_message(self, dest: Any, payload: Any) -> None:
        if self.session.credit is None:
            resolved = self.resolve(dest)
            if resolved is not None:
                self.events.append(self.message(resolved, payload, None, 0))
            return
        self.credited(0, dest, payload)

    def credited(self, ref: int, dest: Any, payload: Any) -> None:
        """An ``m`` (``ref`` 0) or ``mc`` with ``credit``: counted against our windows, and
        its credit returned at once unless it is delivered (docs/protocol.md 12.3)."""
        credit = self.session.credit
        assert credit is not None
        size = self.frame_size
        try:
            ok = credit.admit(dest, size)
        except TypeError:  # an unhashable Dest
            raise RemoteProtocolError("unknown_frame", f"m frame with a bad Dest {describe(dest)}") from None
        token = (dest, size)
        try:
            if not ok:
                raise RemoteProtocolError("credit_exceeded", f"credited frame to {describe(dest)} over our window")
            resolved = self.resolve(dest)
            if resolved is not None:
                self.events.append(self.message(resolved, payload, token, ref))
                return
        except RemoteProtocolError:
            self.give_back(token)
            raise
        self.give_back(token)  # to an ended process
        if ref:
            self.result(ref, "noproc")

    def give_back(self, token: tuple[Any, int]) -> None:
        """Return the credit of one received frame; writes a grant when one is due (12.4)."""
        credit = self.session.credit
        if credit is not None and credit.give_back(*token):
            self.grant()

    def grant(self) -> None:
        """Write ``{credit, Grants, Bytes}`` for the returns not granted yet, if any."""
        term = self.session.credit.take_grant()  # type: ignore[union-attr]
        if term is not None:
            self.issue(plain(term))

    def issue(self, frame: bytes) -> None:
        """Write a sequenced frame the protocol generates (always admitted, 11.4)."""
        self.writer.write(frame)
        self.session.outbox.issue(frame)  # type: ignore[union-attr]

    def result(self, ref: int, code: str | None) -> None:
        """Answer the confirmed send ``ref``: ``{mc_result, Ref, ok | {error, Code}}`` (11.8)."""
        self.issue(plain((A_MC_RESULT, ref, A_OK if code is None else (A_ERROR, code.encode()))))

    def message(self, resolved: tuple[Pid | Atom, Atom | None, bool], payload: Any, token: Any, ref: int) -> Event:
        """The event of a resolved message: routed to a client node (16.3), or delivered here."""
        target, node, routed = resolved
        if routed:
            return MessageRouted(target, node, self.inbound(payload), token, ref)  # type: ignore[arg-type]
        return MessageReceived(target, self.inbound(payload), node, token, ref)

    def resolve(self, dest: Any) -> tuple[Pid | Atom, Atom | None, bool] | None:
        """The target of a message's ``Dest``, its node and whether it is routed to a
        client node (16.3); None for an ended process or an unknown node;
        RemoteProtocolError to refuse it."""
        node = None
        t = type(dest)
        if t is int:
            target = self.session.exports.get(dest)
            if target is None:
                if 0 < dest < self.session.next_export_id:
                    # Issued, but the process has ended: its DEAD is on its way to the peer
                    # (an ordinary race). Sending to a dead process is a no-op in Erlang.
                    log.debug("peer %s: message to ended process id %s dropped", self.peer, dest)
                    return None
                raise RemoteProtocolError("unknown_id", f"message to unknown process id {dest}")
        elif t is Atom:
            target = dest
        elif t is tuple and len(dest) == 2 and type(dest[0]) is Atom and type(dest[1]) is Atom:
            # A Python node has no cluster: every Node is this node (docs/protocol.md 4.1),
            # unless it is a routing server and Node one of its clients (16.3).
            target, node = dest
            if self.hub is not None:
                verdict = route.route_verdict(self, target, node)
                if verdict == route.ROUTE:
                    return target, node, True  # the receiving client's policy applies there
                if verdict == route.UNKNOWN:
                    return None
        else:
            raise RemoteProtocolError("unknown_frame", f"m frame with a bad Dest {describe(dest)}")
        if isinstance(target, Atom) and not self.policy(target):  # a name (not a pid)
            log.warning("peer %s: message to refused name %s dropped", self.peer, target.name)
            raise RemoteProtocolError("not_allowed", f"name {target.name!r} is not reachable")
        return target, node, False

    def on_dead(self, who: Any, reason: Any) -> None:
        if type(who) is not tuple or len(who) != 2 or who[0] != A_PR or type(who[1]) is not int:
            raise RemoteProtocolError("unknown_frame", f"DEAD frame with a bad id {describe(who)}")
        ident = who[1]
        pid = self.session.drop_proxy(ident)
        if pid is None:
            # Never seen, already dead, or resent after a resume (docs/protocol.md 4.4, 7).
            log.debug("peer %s: DEAD for unknown id %s ignored", self.peer, ident)
            return
        if self.mode == "legacy" and reason == A_NOPROC:
            reason = A_NORMAL  # the original's rule (docs/protocol.md 4.4)
        self.events.append(ProxyDied(pid, ident, reason))

    def on_registered(self, token: Any, name: Any, ident: Any) -> None:
        if type(ident) is not int or ident < 1:
            raise RemoteProtocolError("unknown_frame", "{r, Token, Name, Id} with a bad Id")
        self.rw.proxy_for(ident)
        self.flush_rw_events()

    # -- extended frames ----------------------------------------------------------------

    def on_link(self, a: Any, b: Any) -> None:
        local = self.local_target(b, "link")
        proxy = self.remote_source(a, "link")
        if local is None:
            # B already ended: its DEAD is on its way (docs/protocol.md 5.2).
            log.debug("peer %s: link to ended process id %s ignored", self.peer, b)
            return
        self.events.append(LinkRequested(proxy, local))

    def on_unlink(self, a: Any, b: Any) -> None:
        local = self.local_target(b, "unlink")
        proxy = self.remote_source(a, "unlink")
        if local is not None:
            self.events.append(UnlinkRequested(proxy, local))

    def on_exit2(self, a: Any, b: Any, reason: Any) -> None:
        local = self.local_target(b, "exit2")
        proxy = self.remote_source(a, "exit2")
        reason = self.inbound(reason)
        if local is None:
            log.debug("peer %s: exit2 to ended process id %s ignored", self.peer, b)
            return
        self.events.append(ExitSignalReceived(proxy, local, reason))

    def on_link_exit(self, a: Any, b: Any, reason: Any) -> None:
        local = self.local_target(b, "link_exit")
        proxy = self.remote_source(a, "link_exit")
        reason = self.inbound(reason)
        if local is None:
            log.debug("peer %s: link_exit to ended process id %s ignored", self.peer, b)
            return
        self.events.append(LinkExitReceived(proxy, local, reason))

    def on_whereis(self, req_id: Any, name_bin: Any) -> None:
        if type(req_id) is not int or req_id < 1 or type(name_bin) is not bytes:
            raise RemoteProtocolError("unknown_frame", "whereis frame with a bad ReqId or NameBin")
        try:
            atom = Atom(name_bin.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, TypeError):
            atom = None
        if atom is None or not self.policy(atom):
            log.warning("peer %s: whereis for refused name %r answered undefined", self.peer, name_bin[:80])
            self.writer.write(plain((A_WHEREIS_REPLY, req_id, A_UNDEFINED)))
            return
        if req_id in self.their_whereis:
            raise RemoteProtocolError("unknown_frame", f"whereis ReqId {req_id} is already pending")
        self.their_whereis.add(req_id)
        self.events.append(WhereisRequested(req_id, atom))

    def on_whereis_reply(self, req_id: Any, result: Any) -> None:
        if type(req_id) is not int or req_id not in self.our_whereis:
            raise RemoteProtocolError("unknown_frame", f"whereis_reply for unknown ReqId {describe(req_id)}")
        if result == A_UNDEFINED:
            pid = None
        elif type(result) is tuple and len(result) == 2 and result[0] == A_PR:
            pid = self.remote_source(result[1], "whereis_reply")
        else:
            raise RemoteProtocolError("unknown_frame", f"whereis_reply with a bad Result {describe(result)}")
        self.our_whereis.discard(req_id)
        self.events.append(WhereisReplied(req_id, pid))

    def on_heartbeat(self, n: Any) -> None:
        if type(n) is not int or n < 0:
            raise RemoteProtocolError("unknown_frame", "heartbeat with a bad N")
        self.writer.write(plain((A_HEARTBEAT_ACK, n)))
        self.events.append(HeartbeatReceived(n))

    def on_heartbeat_ack(self, n: Any) -> None:
        if type(n) is not int or n < 0:
            raise RemoteProtocolError("unknown_frame", "heartbeat_ack with a bad N")
        self.events.append(HeartbeatAcked(n))

    def on_error(self, code: Any, message: Any) -> None:
        if type(code) is not bytes or type(message) is not bytes:
            raise RemoteProtocolError("unknown_frame", "error frame with a non-binary Code or Message")
        code_text = code.decode("utf-8", "replace")[:64]
        text = message.decode("utf-8", "replace")[:MAX_ERROR_TEXT]
        log.warning("peer %s reported error %s: %s", self.peer, code_text, text)
        self.events.append(PeerError(code_text, text))

    # -- acks (docs/protocol.md section 11) ---------------------------------------------

    def on_ack(self, n: Any) -> None:
        outbox = self.session.outbox
        if outbox is None or not outbox.ack(n):
            sent = outbox.sent if outbox is not None else 0
            acked = outbox.acked if outbox is not None else 0
            raise RemoteProtocolError("bad_ack", f"ack {describe(n)} outside {acked + 1}..{sent}")

    def on_mc(self, ref: Any, dest: Any, payload: Any) -> None:
        if type(ref) is not int or ref < 1:
            credit = self.session.credit
            if credit is not None:  # counted, and returned at once (12.3)
                key = dest if _hashable(dest) else None
                credit.admit(key, self.frame_size)
                self.give_back((key, self.frame_size))
            raise RemoteProtocolError("unknown_frame", f"mc frame with a bad Ref {describe(ref)}")
        try:
            if self.session.credit is not None:
                self.credited(ref, dest, payload)
                return
            resolved = self.resolve(dest)
            if resolved is None:
                self.result(ref, "noproc")
                return
            self.events.append(self.message(resolved, payload, None, ref))
        except RemoteProtocolError as exc:
            self.result(ref, exc.code)
            raise ConfirmRefused(exc.code, exc.message) from None

    def on_mc_result(self, ref: Any, result: Any) -> None:
        if type(ref) is not int or ref not in self.session.confirms:
            raise RemoteProtocolError("unknown_frame", f"mc_result for a Ref not pending: {describe(ref)}")
        if result == A_OK:
            error = None
        elif type(result) is tuple and len(result) == 2 and result[0] == A_ERROR and type(result[1]) is bytes:
            error = result[1].decode("utf-8", "replace")[:64]
        else:
            raise RemoteProtocolError("unknown_frame", f"mc_result with a bad Result {describe(result)}")
        del self.session.confirms[ref]
        self.events.append(SendResult(ref, error))
        self.pump()  # a confirmed send may have waited for max_confirms

    def on_credit(self, grants: Any, nbytes: Any) -> None:
        session = self.session
        error, dests = session.credit.granted(grants, nbytes)  # type: ignore[union-attr]
        pending = session.queue
        for dest in dests:
            pending.unblock(dest)
            proxy = session.proxies.get(dest) if type(dest) is int else None
            if proxy is not None:
                pending.unblock(proxy)
        self.pump()
        if error is not None:
            raise RemoteProtocolError("credit_overflow", error)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class FrameSpec:
    """One kind of frame: ``{Tag, ...}`` with ``arity`` elements in all (tag included)."""

    tag: Atom
    arity: int
    feature: str | None  # None: a legacy frame, valid in every mode
    handler: Callable[..., None]  # Established.on_*, called with the elements after the tag
    sequenced: bool = True  # numbered with `acks` (docs/protocol.md 11.2)


FRAMES: dict[Atom, FrameSpec] = {
    spec.tag: spec
    for spec in (
        FrameSpec(A_M, 3, None, Established.on_message),
        FrameSpec(A_DEAD, 3, None, Established.on_dead),
        FrameSpec(A_R, 4, None, Established.on_registered),
        FrameSpec(A_WHEREIS, 3, "whereis", Established.on_whereis, sequenced=False),
        FrameSpec(A_WHEREIS_REPLY, 3, "whereis", Established.on_whereis_reply, sequenced=False),  # or `route`
        FrameSpec(A_LINK, 3, "link", Established.on_link),
        FrameSpec(A_UNLINK, 3, "link", Established.on_unlink),
        FrameSpec(A_EXIT2, 4, "link", Established.on_exit2),
        FrameSpec(A_LINK_EXIT, 4, "link_exit", Established.on_link_exit),
        FrameSpec(A_HEARTBEAT, 2, "heartbeat", Established.on_heartbeat, sequenced=False),
        FrameSpec(A_HEARTBEAT_ACK, 2, "heartbeat", Established.on_heartbeat_ack, sequenced=False),
        FrameSpec(A_ERROR, 3, "error", Established.on_error, sequenced=False),
        FrameSpec(A_ACK, 2, "acks", Established.on_ack, sequenced=False),
        FrameSpec(A_MC, 4, "acks", Established.on_mc),
        FrameSpec(A_MC_RESULT, 3, "acks", Established.on_mc_result),
        FrameSpec(A_CREDIT, 3, "credit", Established.on_credit),
        FrameSpec(A_WHEREIS_NODE, 4, "route", route.on_whereis_node, sequenced=False),
        FrameSpec(A_NODES, 2, "route", route.on_nodes, sequenced=False),
        FrameSpec(A_NODES_REPLY, 3, "route", route.on_nodes_reply, sequenced=False),
        FrameSpec(A_NODEUP, 2, "route", route.on_nodeup, sequenced=False),
        FrameSpec(A_NODEDOWN, 2, "route", route.on_nodedown, sequenced=False),
        FrameSpec(glob.A_REGISTER_GLOBAL, 4, "global", glob.on_register_global, sequenced=False),
        FrameSpec(glob.A_UNREGISTER_GLOBAL, 3, "global", glob.on_unregister_global, sequenced=False),
        FrameSpec(glob.A_GLOBAL_REPLY, 3, "global", glob.on_global_reply, sequenced=False),
        FrameSpec(pg.A_PG_JOIN, 4, "pg", pg.on_pg_request, sequenced=False),
        FrameSpec(pg.A_PG_LEAVE, 4, "pg", pg.on_pg_request, sequenced=False),
        FrameSpec(pg.A_PG_MEMBERS, 3, "pg", pg.on_pg_request, sequenced=False),
        FrameSpec(pg.A_PG_REPLY, 3, "pg", pg.on_pg_reply, sequenced=False),
    )
}
"""Every frame a peer may send after the handshake (docs/protocol.md sections 4, 5, 11, 12, 16, 17, 18)."""

UNSEQUENCED = frozenset(tag for tag, spec in FRAMES.items() if not spec.sequenced)
"""Tags of the frames not numbered with ``acks``; every other frame after the handshake is,
whatever its arity, agreement or validity (docs/protocol.md 11.2)."""


def classify(term: Any, features: frozenset[str]) -> FrameSpec:
    """The spec of a received frame; RemoteProtocolError (``unknown_frame``) if it has
    none, its feature was not agreed, or its arity is wrong."""
    if type(term) is not tuple or not term:
        raise RemoteProtocolError("unknown_frame", f"frame is not a tagged tuple: {describe(term)}")
    tag = term[0]
    spec = FRAMES.get(tag) if tag.__class__ is Atom else None
    if spec is None or (spec.feature is None and len(term) != spec.arity):
        raise RemoteProtocolError("unknown_frame", f"unknown frame {describe(term)}")
    if spec.feature is not None:
        if spec.feature not in features and not (tag == A_WHEREIS_REPLY and "route" in features):
            raise RemoteProtocolError("unknown_frame", f"{tag.name} frame but {spec.feature!r} was not agreed")
        if len(term) != spec.arity:
            raise RemoteProtocolError("unknown_frame", f"{tag.name} frame with {len(term) - 1} elements")
    return spec
