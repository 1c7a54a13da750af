"""The fused ``m`` path of an established connection (issue 15): the common message, both ways,
in one step each, without the general path's event objects, tables and closures.

- Received: :func:`received_m` takes a decoded ``{m, Dest, Payload}`` whose ``Dest`` is an
  exported id or a registered name, counts its credit, rewrites its payload and returns
  what the connection hands to its ``deliver`` hook, instead of a ``MessageReceived`` event
  dispatched through :data:`~._established.FRAMES`.
- Sent: :func:`send_m` turns a message to a proxy pid into the frame's bytes at once when
  nothing holds it back (nothing waits, the outbox has room, credit allows it), instead of
  the state table, ``_wait_or_send`` and a build closure.

Each returns None ("not mine") whenever anything unusual is involved *before* changing any
state, and the general path then handles the frame or the command as it always did (its
checks, errors, logs and events): the two paths produce the same frames, counts and
deliveries. Sans-IO, like the rest of the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..etf import Atom, Pid, encode
from ._constants import A_M, MAX_PACKET
from ._errors import RemoteProtocolError
from ._events import MessageReceived
from ._state import ESTABLISHED

if TYPE_CHECKING:
    from ._connection import Connection
    from ._established import Established

__all__ = ["HANDLED", "received_m", "send_m"]

HANDLED = ()
""":func:`received_m` handled the frame itself (nothing to hand to the ``deliver`` hook)."""


def received_m(est: Established, dest: Any, payload: Any) -> tuple[Any, Any, Any] | tuple[()] | None:
    """A received ``{m, Dest, Payload}`` (its size in ``est.frame_size``): ``(target, payload,
    credit token)`` to deliver; :data:`HANDLED` when it became events (its payload created
    proxies: those events go first); None, with nothing changed, for the general path
    (:meth:`Established.on_message`: unknown or ended ids, names the policy refuses,
    ``{Name, Node}``, a frame over our credit windows). Raises RemoteProtocolError like the
    general path (a bad payload), its credit given back."""
    session = est.session
    t = type(dest)
    if t is int:
        target = session.exports.get(dest)
        if target is None:
            return None
    elif t is Atom:
        if not est.policy(dest):
            return None
        target = dest
    else:
        return None
    credit = session.credit
    token = None
    if credit is not None:  # checked before anything is counted (12.3)
        size = est.frame_size
        if not credit.admit_fitting(dest, size):
            return None  # credit_exceeded: the general path counts, refuses and gives back
        token = (dest, size)
    rw = est.rw
    if type(payload) not in rw.plain_in:
        try:
            payload = rw.inbound(payload)
        except RemoteProtocolError:
            est.flush_rw_events()
            if token is not None:
                est.give_back(token)
            raise
        if rw.events:
            est.flush_rw_events()
            est.events.append(MessageReceived(target, payload, None, token, 0))
            return HANDLED
    return target, payload, token


def send_m(conn: Connection, dest: Pid, payload: Any) -> bool:
    """Queue ``{m, Id, Payload}`` for the proxy pid ``dest`` if it can be issued now as it
    is; False, with nothing changed, for the general path (not established, not a proxy of
    this connection, something waits, no outbox room or credit, or the payload cannot be
    encoded: the general path raises the error)."""
    if conn._state.state != ESTABLISHED:
        return False
    session = conn._session
    ident = session.proxy_ids.get(dest)
    if ident is None:
        return False
    outbox = session.outbox
    credit = session.credit
    if outbox is not None:
        # Outbox.has_room, Credit.conn_blocked and Credit.dest_blocked, inlined: every message
        config = conn.config
        if session.queue.count or len(outbox.frames) >= config.outbox_frames or outbox.nbytes >= config.outbox_bytes:
            return False
    if credit is not None and (credit.out_count >= credit.out_window or credit.out_dest.get(ident, 0) >= credit.out_dest_max):
        return False
    cmd = conn._cmd
    est = cmd.est  # type: ignore[union-attr]
    rw = est.rw
    rw.pids_seen = 0
    cmd.unsent = None  # type: ignore[union-attr]
    try:
        # (rw._out, not rw.outbound: a RecursionError is caught below like any error, and
        # the general path then raises the LocalProtocolError that says why)
        wire = payload if type(payload) in _PLAIN else rw._out(payload)
        frame = encode((A_M, ident, wire), minor_version=1, compressed=cmd.compress)  # type: ignore[union-attr]
    except Exception:  # LocalProtocolError, EncodeError, RecursionError: the general path says which
        rw.rollback()
        return False
    size = len(frame)
    if size > est.peer_max_frame or size > MAX_PACKET or (credit is not None and credit.out_bytes and credit.out_bytes + size > credit.out_bytes_max):
        rw.rollback()
        return False
    conn._writer.write(frame)
    if outbox is not None:  # Outbox.issue, inlined
        outbox.sent += 1
        outbox.frames.append((frame, (dest, payload, 0)))
        outbox.nbytes += size
    if credit is not None:  # Credit.take, inlined
        credit.out_count += 1
        credit.out_bytes += size
        out_dest = credit.out_dest
        out_dest[ident] = out_dest.get(ident, 0) + 1
    if rw.new_exports or rw.dead_exports:
        cmd.committed()  # type: ignore[union-attr]
    return True


_PLAIN = frozenset({int, float, Atom, bytes, bool, type(None)})
"""Payload types that are their own wire form (``Rewriter.outbound`` returns them as they are)."""
