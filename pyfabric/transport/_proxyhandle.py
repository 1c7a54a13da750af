"""The runtime's handle on one remote process (a proxy pid): it forwards what local
processes do to the proxy (messages, links, exit signals) to the peer link that owns it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..etf import Pid
from ._errors import NotConnected, SendQueueFull

if TYPE_CHECKING:
    from ._peer import PeerLink

__all__ = ["ProxyHandle"]


class ProxyHandle:
    """The runtime's view of one remote process: forwards to the peer link (RemoteHandle)."""

    __slots__ = ("link", "pid")

    def __init__(self, link: PeerLink) -> None:
        self.link = link
        self.pid: Pid = None  # type: ignore[assignment]  # named by _new_proxy_pid before any use

    def deliver(self, msg: Any) -> None:
        link = self.link
        if link.send_m(self.pid, msg):  # the fused path
            return
        try:
            link.send_general(self.pid, msg)
        except SendQueueFull:
            # `Process.send` / `Node.send` never block nor raise (docs/protocol.md 12.6):
            # the message is dropped, counted, logged and reported.
            link.overflowed(self.pid, msg)
        except NotConnected:
            if not (link.acks and link.pending_count() >= link.options.max_pending):
                raise
            link.overflowed(self.pid, msg)

    def link_added(self, local_pid: Pid) -> None:
        self.link.link(local_pid, self.pid)

    def link_removed(self, local_pid: Pid) -> None:
        self.link.unlink(local_pid, self.pid)

    def exit_signal(self, from_pid: Pid, reason: Any) -> None:
        self.link.exit_signal(from_pid, self.pid, reason)

    def link_exit_signal(self, from_pid: Pid, reason: Any) -> None:
        self.link.link_exit(from_pid, self.pid, reason)
