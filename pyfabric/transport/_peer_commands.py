"""What a peer link sends: the runtime's operations on proxies (messages, links, exit
signals) and the API's (whereis) as protocol commands, deferred in the session while
disconnected. A mixin of :class:`~._peer.PeerLink` (its attributes are the link's).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..etf import Atom, Pid
from ..protocol import (
    ConfirmedSend,
    Connection,
    Deferred,
    ExitSignalCommand,
    FeatureNotSupported,
    LinkCommand,
    SendMessage,
    Session,
    UnlinkCommand,
)
from ..runtime import Node
from ._errors import NotConnected, SendQueueFull
from ._options import PeerOptions
from ._waiters import Waiters

__all__ = ["PeerCommandsMixin"]

_log = logging.getLogger("pyfabric.transport")

ESTABLISHED = "established"
_LOCAL_ONLY = object()  # a link command a legacy peer cannot learn of


class PeerCommandsMixin:
    """The commands of a peer link (see the module docstring)."""

    conn: Connection | None
    session: Session | None
    options: PeerOptions
    node: Node
    label: str
    messages_out: int
    _idle: asyncio.Event
    _flush_scheduled: bool
    _whereis: Waiters[Pid | None]
    _confirms: dict[int, asyncio.Future[str | None]]
    _written: list[tuple[Deferred, Callable[[str | None], None]]]
    _flush: Callable[[], None]
    _schedule_flush: Callable[[], None]

    # -- commands from the runtime and the API -------------------------------------------------

    @property
    def connected(self) -> bool:
        conn = self.conn
        return conn is not None and conn.state == ESTABLISHED

    def send_m(self, dest: Pid, msg: Any) -> bool:
        """The fused path of :meth:`send` for a proxy pid of this link (nothing waits, it
        fits): True once queued for the socket; False, nothing done, for :meth:`send_general`."""
        conn = self.conn
        if conn is not None and conn.send_m(dest, msg):
            self.messages_out += 1
            if not self._flush_scheduled:
                self._schedule_flush()
            return True
        return False

    def send(self, dest: Any, msg: Any) -> None:
        """Send ``msg`` to ``dest`` (proxy pid, remote name, or ``(name, node)``)."""
        if dest.__class__ is not Pid or not self.send_m(dest, msg):
            self.send_general(dest, msg)

    def send_general(self, dest: Any, msg: Any) -> None:
        """:meth:`send` without trying :meth:`send_m` first (the caller did)."""
        conn = self.conn
        if conn is not None and conn.state == ESTABLISHED:
            session = conn.session
            if session.outbox is None:
                conn.send_message(dest, msg)
            else:
                pending = session.queue
                if pending.count:
                    if pending.count >= self.options.max_pending:
                        raise SendQueueFull(f"{self.options.max_pending} messages already wait for {self.label} (max_pending)")
                    self._idle.clear()
                conn.send_message(dest, msg)
                if pending.count:
                    self._idle.clear()
            self.messages_out += 1
            if not self._flush_scheduled:
                self._schedule_flush()
        else:
            self._defer(SendMessage(dest, msg))
            self.messages_out += 1

    def send_routed(self, dest: Any, msg: Any, done: Callable[[str | None], None]) -> None:
        """A routing server hands on a confirmed send to this peer (docs/protocol.md 16.8).
        With ``acks`` on this hop: as a confirmed send of our own (queued while
        disconnected), ``done`` gets the peer's result, or why the session ended. Without: a
        plain message, ``done(None)`` once it is written (at once when connected, else after
        the resume), ``done(reason)`` if the session ends first. Raises like :meth:`send`
        (nothing sent, ``done`` not called)."""
        session = self.session
        if session is not None and session.outbox is not None:
            conn = self.conn
            if conn is not None and conn.state == ESTABLISHED:
                if session.deferred_count() >= self.options.max_pending:
                    raise SendQueueFull(f"{self.options.max_pending} messages already wait for {self.label} (max_pending)")
                ref = conn.send_confirmed(dest, msg)
            else:
                ref = session.new_ref()
                self._defer(ConfirmedSend(ref, dest, msg))
            self.messages_out += 1
            fut: asyncio.Future[str | None] = self.node.loop.create_future()
            self._confirms[ref] = fut
            fut.add_done_callback(lambda f: done(None if f.cancelled() else f.result()))
            self._schedule_flush()
        elif self.connected:
            self.send(dest, msg)
            done(None)
        else:
            command = SendMessage(dest, msg)
            self._defer(command)
            self.messages_out += 1
            self._written.append((command, done))

    def link(self, local_pid: Pid, proxy_pid: Pid) -> None:
        """``local_pid`` linked the proxy ``proxy_pid``: tell the peer (``{link, A, B}``)."""
        conn = self._link_feature("link")
        if conn is None:
            self._defer(LinkCommand(local_pid, proxy_pid))
        elif conn is not _LOCAL_ONLY:
            conn.link(local_pid, proxy_pid)
            self._schedule_flush()

    def unlink(self, local_pid: Pid, proxy_pid: Pid) -> None:
        """``local_pid`` unlinked the proxy ``proxy_pid``: tell the peer."""
        conn = self._link_feature("unlink")
        if conn is None:
            self._defer(UnlinkCommand(local_pid, proxy_pid))
        elif conn is not _LOCAL_ONLY:
            conn.unlink(local_pid, proxy_pid)
            self._schedule_flush()

    def exit_signal(self, local_pid: Pid, proxy_pid: Pid, reason: Any) -> None:
        """``exit(proxy_pid, reason)`` called by ``local_pid``: send ``{exit2, A, B, R}``."""
        conn = self._link_feature("exit_signal")
        if conn is None:
            self._defer(ExitSignalCommand(local_pid, proxy_pid, reason))
        else:
            conn.exit_signal(local_pid, proxy_pid, reason)
            self._schedule_flush()

    def link_exit(self, local_pid: Pid, proxy_pid: Pid, reason: Any) -> None:
        """Pass on the link signal of ``local_pid`` (a proxy of another peer, which ended
        with ``reason``) to ``proxy_pid``: ``{link_exit, A, B, R}`` to a peer that agreed on
        ``link_exit``, else ``{exit2, A, B, R}`` (docs/protocol.md 5.2)."""
        conn = self._link_feature("exit_signal")
        if conn is None:
            self._defer(ExitSignalCommand(local_pid, proxy_pid, reason, link_exit=True))
        else:
            conn.link_exit(local_pid, proxy_pid, reason)
            self._schedule_flush()

    def _link_feature(self, command: str) -> Any:
        """The established connection to run a link command on, None while disconnected,
        or ``_LOCAL_ONLY`` when the peer cannot learn of links (a legacy peer)."""
        conn = self.conn
        if conn is None or conn.state != ESTABLISHED:
            return None
        if "link" in conn.features:
            return conn
        if command == "exit_signal":
            raise FeatureNotSupported(
                f"exit/2 on a remote process needs the 'link' feature, which {self.label} does not support"
            )
        if command == "link":
            # A legacy peer cannot learn of the link: it still works one way (the proxy
            # ends when the remote process ends).
            _log.debug("%s: link to a legacy peer's process is local only", self.label)
        return _LOCAL_ONLY

    def _defer(self, command: Deferred) -> None:
        opts = self.options
        conn = self.conn
        if opts.when_disconnected == "error" or conn is None:
            raise NotConnected(
                f"not connected to {self.label}; the client reconnects in the background "
                "(pass when_disconnected='wait' to queue sends while it does)"
            )
        session = self.session or conn.session
        if session.deferred_count() >= opts.max_pending:
            raise NotConnected(
                f"not connected to {self.label} and {opts.max_pending} sends are already queued (max_pending)"
            )
        session.defer(command)
        self._idle.clear()

    def _send_deferred(self) -> None:
        conn = self.conn
        if conn is None or conn.state != ESTABLISHED:
            return
        failed = conn.send_deferred()
        for command, exc in failed:  # a queued send the peer cannot carry
            _log.warning("%s: queued %s dropped: %s", self.label, type(command).__name__, exc)
        if self._written:  # routed confirmed sends without acks: answered once written (16.8)
            refused = {id(command): exc.code for command, exc in failed}
            waiting, self._written = self._written, []
            for command, done in waiting:
                done(refused.get(id(command)))
        self._schedule_flush()

    def fail_written(self, reason: str) -> None:
        """The session ends: the routed sends waiting to be written are answered ``reason``."""
        waiting, self._written = self._written, []
        for _command, done in waiting:
            done(reason)

    def pending_count(self) -> int:
        """Sends and link commands kept for the next connection."""
        session = self.session if self.session is not None else (self.conn.session if self.conn else None)
        return session.queue.count if session is not None else 0

    async def whereis(self, name: Atom | str, timeout: float | None, node: Atom | str | None = None) -> Pid | None:
        conn = self.conn
        if conn is None or conn.state != ESTABLISHED:
            raise NotConnected(f"not connected to {self.label}")
        req_id = conn.whereis(name) if node is None else conn.whereis_node(name, node)
        return await self._whereis.wait(req_id, self._flush, timeout, f"whereis({name!r}) got no answer from {self.label}")
