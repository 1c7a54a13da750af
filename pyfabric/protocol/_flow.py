"""What a connection does for `credit` and confirmed sends (docs/protocol.md 11.8, 12).

The counts are the session's (:class:`~._credit.Credit`); the runtime owns the mailboxes,
so it tells the connection when a delivered message's credit may come back
(:meth:`FlowMixin.credit_delivered`, :meth:`FlowMixin.recheck_owed`) and answers confirmed
sends (:meth:`FlowMixin.send_result`). The transport runs the ``grant_delay`` timer
(:meth:`FlowMixin.grant_owed`, :meth:`FlowMixin.send_grant`). Sans-IO.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..etf import Atom, Pid
from ._acks import must_wait
from ._config import ConnectionConfig
from ._constants import A_ERROR, A_MC_RESULT, A_OK, plain
from ._credit import Credit
from ._errors import FeatureNotSupported
from ._framing import FrameWriter
from ._session import ConfirmedSend, SendMessage, Session, key_of
from ._state import ESTABLISHED

__all__ = ["FlowMixin", "new_credit"]


def new_credit(config: ConnectionConfig, theirs: tuple[int, int, int]) -> Credit:
    """The credit state of a new session: our windows from ``config``, the peer's as announced."""
    credit = Credit((config.credit_window, config.credit_bytes, config.credit_dest), theirs)
    credit.set_grant_every(config.grant_every)
    return credit


class FlowMixin:
    """The `credit` and confirmed-send part of :class:`~pyfabric.protocol.Connection` (its
    attributes are the connection's)."""

    _session: Session
    _state: Any
    _est: Any
    _cmd: Any
    config: ConnectionConfig
    features: frozenset[str]
    _writer: FrameWriter
    _commands: Callable[[str], Any]
    _send: Callable[..., None]

    def send_confirmed(self, dest: Pid | Atom | str | tuple[Any, Any] | int, payload: Any) -> int:
        """Queue ``{mc, Ref, Dest, Payload}`` (docs/protocol.md 11.8); returns ``Ref``, which
        the ``SendResult`` event answers (or ``MessagesUndelivered.confirms`` when the
        session ends first). Needs ``acks`` (:class:`FeatureNotSupported` otherwise); like
        :meth:`send_message` it waits in the pending queue when it cannot be issued."""
        if "acks" not in self.features:
            raise FeatureNotSupported("acks", "confirmed sends need the 'acks' feature, which this peer did not agree on")
        cmd = self._commands("send_message")
        ref = self._session.next_ref
        self._wait_or_send(cmd, dest, payload, ref)
        self._session.next_ref = ref + 1
        return ref

    def _wait_or_send(self, cmd: Any, dest: Any, payload: Any, ref: int) -> None:
        # With `acks`: issue now if nothing to this destination waits and it fits, else
        # check the message can be carried (errors go to the caller) and let it wait.
        session = self._session
        outbox = session.outbox
        config = self.config
        queue = session.queue
        checked = False
        if (
            (not queue.count or not queue.has(key_of(dest)))
            and len(outbox.frames) < config.outbox_frames  # type: ignore[union-attr]
            and outbox.nbytes < config.outbox_bytes  # type: ignore[union-attr]
            and not (ref and len(session.confirms) >= config.max_confirms)
        ):
            credit = session.credit
            if credit is None or credit.out_count < credit.out_window:
                if credit is not None:  # the destination's window (12.2), inlined: the hot path
                    t = type(dest)
                    wire = session.proxy_ids.get(dest) if t is Pid else dest if t is Atom else key_of(dest)
                    blocked = wire is not None and credit.out_dest.get(wire, 0) >= credit.out_dest_max
                else:
                    blocked = False
                if not blocked:
                    if cmd.send_message(dest, payload, ref):
                        return
                    checked = True  # encoded, did not fit the bytes window
        if not checked:
            cmd.send_message(dest, payload, ref, dry=True)
        command = ConfirmedSend(ref, dest, payload) if ref else SendMessage(dest, payload)
        cmd.hold(command)  # its frame, when it can be issued as encoded now
        session.defer(command)

    def must_wait_for(self, dest: Any) -> bool:
        """Would a user command to ``dest`` (None: any) wait now (docs/protocol.md 12.6)?"""
        return must_wait(self._session, self.config, None if dest is None else key_of(dest))

    def send_result(self, ref: int, code: str | None) -> None:
        """The runtime delivered the confirmed send ``ref`` of a ``MessageReceived``
        (``code`` None) or could not (``"noproc"``: unregistered name, ...): answer it with
        ``{mc_result, Ref, Result}`` (11.8). Kept for the replay if the connection is gone."""
        if not ref:
            return
        frame = plain((A_MC_RESULT, ref, A_OK if code is None else (A_ERROR, code.encode())))
        self._issue_generated(frame)

    def credit_delivered(self, token: tuple[Any, int] | None, mailbox: Any, has_room: bool) -> None:
        """The message of a ``MessageReceived`` with ``credit`` token ``token`` went to
        ``mailbox`` (a local pid, or anything the runtime can check later); ``has_room``:
        that mailbox holds fewer than ``mailbox_high`` messages now. Its credit is
        returned now, or once :meth:`recheck_owed` finds room (12.3)."""
        credit = self._session.credit
        if token is None or credit is None:
            return
        if has_room:
            if credit.give_back(*token):
                self.send_grant()
        else:
            credit.owe(mailbox, *token)

    def credit_returned(self, token: tuple[Any, int] | None) -> None:
        """The message of that token was not delivered (unregistered name, ...): its credit
        comes back at once (12.3)."""
        credit = self._session.credit
        if token is not None and credit is not None and credit.give_back(*token):
            self.send_grant()

    def owed_mailboxes(self) -> list[Any]:
        """The mailboxes with deliveries whose credit waits for room (check every ``grant_delay``)."""
        credit = self._session.credit
        return list(credit.owed) if credit is not None else []

    def owes_mailboxes(self) -> bool:
        """Are deliveries waiting for room in a mailbox (:meth:`owed_mailboxes` is not empty)?"""
        credit = self._session.credit
        return credit is not None and bool(credit.owed)

    def recheck_owed(self, has_room: Callable[[Any], bool]) -> None:
        """Return the credit owed to the mailboxes that have room now (12.3)."""
        credit = self._session.credit
        if credit is not None and credit.owed and credit.recheck(has_room):
            self.send_grant()

    def grant_owed(self) -> bool:
        """Returns not granted yet: call :meth:`send_grant` within ``grant_delay``."""
        credit = self._session.credit
        return credit is not None and credit.returns_waiting() and self._state.state == ESTABLISHED

    def send_grant(self) -> None:
        """Queue ``{credit, Grants, Bytes}`` for the returns not granted (only while
        connected: returns made meanwhile go right after the next replay, 12.4)."""
        credit = self._session.credit
        if credit is None or self._state.state != ESTABLISHED:
            return
        term = credit.take_grant()
        if term is not None:
            self._issue_generated(plain(term))

    def _issue_generated(self, frame: bytes) -> None:
        outbox = self._session.outbox
        if outbox is None:
            return
        outbox.issue(frame)  # always admitted; replayed if not written now (11.4)
        if self._state.state == ESTABLISHED:
            self._writer.write(frame)

    def pending_for(self, key: Any) -> int:
        """Commands waiting for destination ``key`` (a proxy pid, a name)."""
        return self._session.queue.waiting_for(key)

