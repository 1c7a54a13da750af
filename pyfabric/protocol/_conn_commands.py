"""The commands of :class:`~._connection.Connection` (a base class of it; its attributes are
the connection's): what the transport asks the core to send, each checked against the
state table first, then run by the established state's :class:`~._commands.Commands`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..etf import Atom, Pid
from ._commands import Commands, dead_frame
from ._errors import LocalProtocolError
from ._framing import FrameWriter
from ._handshake_client import ClientHandshake
from ._handshake_server import ServerHandshake
from ._session import Deferred, ExitSignalCommand, LinkCommand, Session, UnlinkCommand
from ._state import ESTABLISHED, ConnectionState

__all__ = ["ConnectionCommands"]

log = logging.getLogger("pyfabric.protocol")


class ConnectionCommands:
    """The command methods of :class:`~._connection.Connection` (see the module docstring)."""

    _state: ConnectionState
    _cmd: Commands | None
    _session: Session
    _writer: FrameWriter
    _handshake: ClientHandshake | ServerHandshake | None
    peer: str
    _pump: Callable[[], list[tuple[Deferred, LocalProtocolError]]]
    _wait_or_send: Callable[[Commands, Any, Any, int], Any]
    _run_or_wait: Callable[..., None]

    # -- commands ---------------------------------------------------------------------

    def start(self) -> None:
        """Client: queue the hello (always the extended one; an original server ignores
        its Name, docs/protocol.md 3.1)."""
        self._state.process("start")
        assert isinstance(self._handshake, ClientHandshake)
        self._writer.write(self._handshake.hello())

    def _commands(self, command: str) -> Commands:
        self._state.process(command)
        assert self._cmd is not None
        return self._cmd

    def send_message(self, dest: Pid | Atom | str | tuple[Any, Any] | int, payload: Any) -> None:
        """Queue ``{m, Dest, Payload}``. ``dest``: a proxy pid of this connection, a
        registered name (``Atom``/``str``) or ``(name, node)``. Raises
        LocalProtocolError (nothing queued) if the payload holds a value this peer
        cannot carry, or the frame exceeds the peer's ``max_frame``."""
        cmd = self._commands("send_message")
        if self._session.outbox is None:
            cmd.send_message(dest, payload)
        else:  # it may wait for outbox room or credit (docs/protocol.md 11.4, 12.2)
            self._wait_or_send(cmd, dest, payload, 0)

    def link(self, local_pid: Pid, proxy_pid: Pid) -> None:
        """Queue ``{link, A, B}``: ``local_pid`` is now linked to the peer's process."""
        cmd = self._commands("link")
        self._run_or_wait(LinkCommand(local_pid, proxy_pid), cmd.link, local_pid, proxy_pid)

    def unlink(self, local_pid: Pid, proxy_pid: Pid) -> None:
        """Queue ``{unlink, A, B}``."""
        cmd = self._commands("unlink")
        self._run_or_wait(UnlinkCommand(local_pid, proxy_pid), cmd.unlink, local_pid, proxy_pid)

    def exit_signal(self, local_pid: Pid, proxy_pid: Pid, reason: Any) -> None:
        """Queue ``{exit2, A, B, Reason}``: ``exit(proxy_pid, reason)`` called by ``local_pid``."""
        cmd = self._commands("exit_signal")
        self._run_or_wait(ExitSignalCommand(local_pid, proxy_pid, reason), cmd.exit_signal, local_pid, proxy_pid, reason)

    def link_exit(self, local_pid: Pid, proxy_pid: Pid, reason: Any) -> None:
        """Queue the link signal ``{link_exit, A, B, Reason}``: ``local_pid``, lazily linked
        to the peer's process, ended with ``reason`` (docs/protocol.md 5.2; a routing node
        passes one on). To a peer that did not agree on ``link_exit`` it goes as
        ``{exit2, A, B, Reason}``, the behaviour without the feature; needs ``link``."""
        cmd = self._commands("exit_signal")
        command = ExitSignalCommand(local_pid, proxy_pid, reason, link_exit=True)
        self._run_or_wait(command, cmd.exit_signal, local_pid, proxy_pid, reason, True)

    def whereis(self, name: Atom | str) -> int:
        """Queue ``{whereis, ReqId, NameBin}``; returns ReqId (matched by ``WhereisReplied``)."""
        return self._commands("whereis").whereis(name)

    def reply_whereis(self, req_id: int, pid: Pid | None) -> None:
        """Answer a ``WhereisRequested``: ``pid`` of the registered process (exported),
        or None if the name is not registered."""
        self._commands("reply_whereis").reply_whereis(req_id, pid)

    def heartbeat(self) -> int:
        """Queue ``{heartbeat, N}``; returns N (echoed by ``HeartbeatAcked``)."""
        return self._commands("heartbeat").heartbeat()

    def send_deferred(self) -> list[tuple[Deferred, LocalProtocolError]]:
        """Send the commands the transport deferred in ``session`` while disconnected
        (call it after ``HandshakeComplete``), oldest first. Commands naming a proxy
        that is gone are dropped; the ones the peer cannot carry are returned with
        their error (nothing of them was sent)."""
        cmd = self._commands("send_deferred")
        if self._session.outbox is not None:
            return self._pump()
        failed = []
        for command in self._session.take_deferred():
            try:
                if not cmd.replay(command):
                    log.debug("peer %s: deferred %s to an ended proxy dropped", self.peer, type(command).__name__)
            except LocalProtocolError as exc:
                failed.append((command, exc))
        return failed

    def process_exited(self, pid: Pid, reason: Any) -> None:
        """The runtime reports that local process ``pid`` ended (call it for every local
        death, or for every exported one). If the peer knows it, ``{'DEAD', {pr, Id},
        Reason}`` is queued (``reason`` raw). While disconnected with a session, the
        notice is kept and sent after a resume (with ``acks`` in the replay, 11.4; without,
        with the last few sent ones, docs/protocol.md section 7)."""
        self._state.process("process_exited")
        session = self._session
        ident = session.unexport(pid)
        if ident is None:
            return
        frame = dead_frame(ident, reason)
        if session.outbox is not None:  # sequenced, always admitted; replayed (11.4)
            session.outbox.issue(frame)
        if self._state.state == ESTABLISHED:
            self._writer.write(frame)
            if session.id is not None and session.outbox is None:
                session.dead_sent(frame, queued=False)
        elif session.id is not None and session.outbox is None:
            session.dead_sent(frame, queued=True)
