"""Our caller's commands on an established connection: values in, frames out.

Every command is all or nothing: a frame that cannot be carried (a value this peer does
not know, a frame over the peer's ``max_frame``, ``max_exports`` reached) raises
:class:`LocalProtocolError`, and the exports its payload made are rolled back. New
exports are reported to the ``on_export`` callback once their frame is queued.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..etf import Atom, DecodeLimits, EncodeError, Pid, encode
from ._config import ConnectionConfig
from ._constants import (
    A_DEAD,
    A_EXIT2,
    A_HEARTBEAT,
    A_LINK,
    A_LINK_EXIT,
    A_M,
    A_MC,
    A_NOPROC,
    A_UNDEFINED,
    A_UNLINK,
    A_WHEREIS,
    A_WHEREIS_REPLY,
    plain,
)
from ._errors import FeatureNotSupported, LocalProtocolError
from ._established import Established
from ._framing import FrameWriter
from ._handshake import Agreement
from ._outbox import Note
from ._rewrite import A_PR, Rewriter
from ._session import ConfirmedSend, Deferred, ExitSignalCommand, LinkCommand, SendMessage, Session, UnlinkCommand

__all__ = ["Commands", "dead_frame", "default_dead_pid", "establish"]

log = logging.getLogger("pyfabric.protocol")


def default_dead_pid(node: Atom) -> Callable[[int], Pid]:
    """``new_dead_pid`` when the runtime gives none: a pid no process of ours has."""

    def dead_pid(local_id: int) -> Pid:
        return Pid(node, 0, 0, 0)  # no process ever has id 0 in our runtime

    return dead_pid


def dead_frame(ident: int, reason: Any) -> bytes:
    """``{'DEAD', {pr, Id}, Reason}``; a reason with no Erlang form is described instead
    (the peer must learn of the death anyway)."""
    try:
        return plain((A_DEAD, (A_PR, ident), reason))
    except EncodeError:
        return plain((A_DEAD, (A_PR, ident), (Atom("unencodable_exit_reason"), repr(reason)[:200].encode())))


def establish(
    session: Session,
    agreed: Agreement,
    config: ConnectionConfig,
    *,
    writer: FrameWriter,
    events: Any,
    limits: DecodeLimits,
    is_alive: Callable[[Pid], bool],
    new_proxy_pid: Callable[[int], Pid],
    new_dead_pid: Callable[[int], Pid],
    on_export: Callable[[Pid, int], None] | None,
    peer: str,
) -> Commands:
    """The established state of a connection whose handshake settled ``agreed``: its
    receive side is the returned object's ``est``."""
    rw = Rewriter(
        session,
        features=agreed.features,
        extended=agreed.mode == "extended",
        is_alive=is_alive,
        new_proxy_pid=new_proxy_pid,
        new_dead_pid=new_dead_pid,
        limits=limits,
        max_proxies=config.max_proxies,
        max_exports=config.max_exports,
        strings=config.strings,
    )
    est = Established(
        session=session,
        mode=agreed.mode or "legacy",
        features=agreed.features,
        peer_max_frame=agreed.peer_max_frame,
        rewriter=rw,
        writer=writer,
        events=events,
        policy=config.allowed,
        peer=peer,
    )
    return Commands(est, compress=config.compress_messages, on_export=on_export)


class Commands:
    """The send side of an established connection (see the module docstring)."""

    def __init__(
        self,
        est: Established,
        *,
        compress: bool,
        on_export: Callable[[Pid, int], None] | None,
    ) -> None:
        self.est = est
        # With an original peer, frames are exactly the original's (compressed when smaller);
        # with ours, compression is the user's choice (docs/protocol.md 4.1).
        self.compress = True if est.mode == "legacy" else compress
        self.on_export = on_export
        self.next_req_id = 1
        self.heartbeat_n = 0
        # A message frame that was encoded but not queued (it waits for credit or room):
        # kept when nothing in it depends on the session's tables (no pid), so that issuing
        # it later does not encode it again (``unsent``: the last one; ``held``: the frames
        # of waiting commands, by identity, valid on this connection only).
        self.unsent: bytes | None = None
        self.held: dict[int, tuple[Any, bytes]] = {}

    def need(self, feature: str) -> None:
        if feature not in self.est.features:
            raise FeatureNotSupported(feature)

    def queue(self, frame: bytes) -> None:
        self.est.writer.write(frame, self.est.peer_max_frame)

    def issue(self, frame: bytes, note: Note | None = None) -> None:
        """Queue a sequenced frame; with ``acks`` it also enters the outbox (11.4)."""
        est = self.est
        est.writer.write(frame, est.peer_max_frame)
        outbox = est.session.outbox
        if outbox is not None:  # Outbox.issue, inlined (the hot path of every send)
            outbox.sent += 1
            outbox.frames.append((frame, note))
            outbox.nbytes += len(frame)

    def send_rewritten(
        self, build: Callable[[], bytes], *, note: Note | None = None, seq: bool = True, credit_dest: Any = None, dry: bool = False
    ) -> bool:
        """Encode and queue a frame that carries rewritten values; all or nothing.
        ``seq``: the frame is sequenced (docs/protocol.md 11.2); ``note`` what a message
        frame keeps in the outbox; ``credit_dest``: with ``credit``, the frame is credited
        to that destination, and False (nothing queued) when its bytes do not fit the
        window (12.2). ``dry``: only check that it can be encoded (nothing queued)."""
        est = self.est
        rw = est.rw
        try:
            frame = build()
            if dry:
                if len(frame) > est.peer_max_frame:
                    raise LocalProtocolError("frame_too_large", f"frame of {len(frame)} bytes exceeds the peer's limit")
                rw.rollback()
                self.unsent = None if rw.pids_seen else frame
                return True
            credit = est.session.credit if credit_dest is not None else None
            if credit is not None:
                size = len(frame)
                if credit.out_bytes and credit.out_bytes + size > credit.out_bytes_max:  # Credit.bytes_fit
                    rw.rollback()
                    self.unsent = None if rw.pids_seen or size > est.peer_max_frame else frame
                    return False
            if seq:
                self.issue(frame, note)
            else:
                self.queue(frame)
            if credit is not None:  # Credit.take, inlined (the hot path of every send)
                credit.out_count += 1
                credit.out_bytes += size
                out_dest = credit.out_dest
                out_dest[credit_dest] = out_dest.get(credit_dest, 0) + 1
        except LocalProtocolError:
            rw.rollback()
            raise
        except EncodeError as exc:
            rw.rollback()
            raise LocalProtocolError("bad_payload", f"cannot encode: {exc}") from None
        except RecursionError:
            rw.rollback()
            raise LocalProtocolError("bad_payload", "value is nested too deeply to send") from None
        self.committed()
        return True

    def committed(self) -> None:
        """The frame just queued is final: keep its exports, send the DEAD of the ended
        processes it shipped, report the new exports."""
        session = self.est.session
        dead, new = self.est.rw.commit()
        ident: int | None
        for ident in dead:
            # Shipped a pid whose process had already ended (docs/protocol.md 4.3): a new
            # export, or an ended one shipped again under its old id; its DEAD follows.
            pid = session.exports.get(ident)
            if pid is not None:
                session.unexport(pid)
            self.issue(plain((A_DEAD, (A_PR, ident), A_NOPROC)))
        if new and self.on_export is not None:
            for pid in new:
                ident = session.export_ids.get(pid)
                if ident is not None:
                    self.on_export(pid, ident)

    def wire_dest(self, dest: Any) -> Any:
        t = type(dest)
        if t is Pid:
            ident = self.est.session.proxy_ids.get(dest)
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

    def export(self, pid: Any, what: str) -> int:
        if type(pid) is not Pid:
            raise LocalProtocolError("bad_payload", f"{what} must be a Pid, got {type(pid).__name__}")
        if pid in self.est.session.proxy_ids:
            raise LocalProtocolError("bad_payload", f"{what} {pid!r} is a proxy of this connection, not a local process")
        return self.est.rw.export_pid(pid)

    def proxy_id(self, pid: Any) -> int:
        ident = self.est.session.proxy_ids.get(pid) if type(pid) is Pid else None
        if ident is None:
            raise LocalProtocolError("unknown_id", f"{pid!r} is not a proxy for a process of this peer")
        return ident

    # -- the commands -------------------------------------------------------------------

    def send_message(self, dest: Any, payload: Any, ref: int = 0, *, dry: bool = False, waiting: Any = None) -> bool:
        """``{m, Dest, Payload}``, or ``{mc, Ref, Dest, Payload}`` when ``ref``. With
        ``credit``: False (nothing queued) when its bytes do not fit the window now; the
        caller checked the message and destination windows. ``dry``: check only (the frame
        is kept in ``unsent`` when it can be reused). ``waiting``: the deferred command
        this message is, whose frame :meth:`hold` may have kept."""
        wire_dest = self.wire_dest(dest)
        rw = self.est.rw
        rw.pids_seen = 0
        self.unsent = None
        held = self.held.pop(id(waiting), None) if waiting is not None and self.held else None
        if held is not None and held[0] is waiting:
            frame = held[1]

            def build() -> bytes:
                return frame

            sent = self.send_rewritten(build, note=(dest, payload, ref), credit_dest=wire_dest)
            if not sent:
                self.hold(waiting)
            elif ref:
                self.est.session.confirms[ref] = (dest, payload)
            return sent
        compress = self.compress
        if ref:

            def build() -> bytes:
                return encode((A_MC, ref, wire_dest, rw.outbound(payload)), minor_version=1, compressed=compress)

        else:

            def build() -> bytes:
                return encode((A_M, wire_dest, rw.outbound(payload)), minor_version=1, compressed=compress)

        session = self.est.session
        if not self.send_rewritten(build, note=(dest, payload, ref), credit_dest=wire_dest, dry=dry):
            if waiting is not None:
                self.hold(waiting)
            return False
        if ref and not dry:
            session.confirms[ref] = (dest, payload)
        return True

    def hold(self, command: Any) -> None:
        """Keep the ``unsent`` frame of the last :meth:`send_message` for the waiting
        ``command`` (nothing when there is none)."""
        frame = self.unsent
        if frame is not None:
            self.held[id(command)] = (command, frame)
            self.unsent = None

    def forget(self, command: Any) -> None:
        """A waiting command left the queue without :meth:`send_message`: drop its frame."""
        if self.held:
            self.held.pop(id(command), None)

    def link_frame(self, tag: Atom, local_pid: Pid, proxy_pid: Pid) -> None:
        self.need("link")
        b = self.proxy_id(proxy_pid)
        self.send_rewritten(lambda: plain((tag, self.export(local_pid, "local_pid"), b)))

    def link(self, local_pid: Pid, proxy_pid: Pid) -> None:
        self.link_frame(A_LINK, local_pid, proxy_pid)

    def unlink(self, local_pid: Pid, proxy_pid: Pid) -> None:
        self.link_frame(A_UNLINK, local_pid, proxy_pid)

    def exit_signal(self, local_pid: Pid, proxy_pid: Pid, reason: Any, link_exit: bool = False) -> None:
        """``{exit2, A, B, Reason}``; with ``link_exit`` the link signal ``{link_exit, A, B,
        Reason}`` instead, if the peer agreed on that feature (else exit2, 5.2)."""
        self.need("link")
        tag = A_LINK_EXIT if link_exit and "link_exit" in self.est.features else A_EXIT2
        b = self.proxy_id(proxy_pid)
        rw = self.est.rw
        self.send_rewritten(lambda: plain((tag, self.export(local_pid, "local_pid"), b, rw.outbound(reason))))

    def whereis(self, name: Atom | str) -> int:
        self.need("whereis")
        text = name.name if name.__class__ is Atom else str(name)
        req_id = self.next_req_id
        self.queue(plain((A_WHEREIS, req_id, text.encode("utf-8"))))
        self.next_req_id = req_id + 1
        self.est.our_whereis.add(req_id)
        return req_id

    def reply_whereis(self, req_id: int, pid: Pid | None) -> None:
        their = self.est.their_whereis
        if req_id not in their:
            raise LocalProtocolError("unknown_id", f"no pending whereis request {req_id!r}")
        if pid is None:
            self.queue(plain((A_WHEREIS_REPLY, req_id, A_UNDEFINED)))
        else:
            self.send_rewritten(lambda: plain((A_WHEREIS_REPLY, req_id, (A_PR, self.export(pid, "pid")))), seq=False)
        their.discard(req_id)

    def heartbeat(self) -> int:
        self.need("heartbeat")
        n = self.heartbeat_n
        self.queue(plain((A_HEARTBEAT, n)))
        self.heartbeat_n = n + 1
        return n

    def replay(self, command: Deferred) -> bool:
        """Send one deferred command; False (nothing sent) if it names a proxy that is
        gone (its session was not resumed, or its process ended meanwhile)."""
        proxy_ids = self.est.session.proxy_ids
        match command:
            case SendMessage(dest, payload):
                if type(dest) is Pid and dest not in proxy_ids:
                    return False
                self.send_message(dest, payload)
            case ConfirmedSend(ref, dest, payload):
                if type(dest) is Pid and dest not in proxy_ids:
                    return False
                self.send_message(dest, payload, ref)
            case LinkCommand(local_pid, proxy_pid) | UnlinkCommand(local_pid, proxy_pid):
                if proxy_pid not in proxy_ids:
                    return False
                if "link" not in self.est.features:
                    return True  # a legacy peer cannot learn of links (they work one way)
                (self.link if type(command) is LinkCommand else self.unlink)(local_pid, proxy_pid)
            case ExitSignalCommand(local_pid, proxy_pid, reason, link_exit):
                if proxy_pid not in proxy_ids:
                    return False
                self.exit_signal(local_pid, proxy_pid, reason, link_exit)
        return True
