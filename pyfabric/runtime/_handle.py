"""The internal interface between the process table and its entries (issue 10).

Every entry of a :class:`~._node.Node`'s process table, a local process
(:class:`~._process.LocalProcess`: :class:`~._process.Mailbox`, :class:`~._task.Process`)
or the proxy of a remote one (:class:`~._proxy.Proxy`), is driven by the node and by
:class:`~._relations.Relations` through :class:`ProcessHandle` alone; neither reaches
into an entry's private state. The methods are public so that no class calls another's
``_private`` names, but they are internal: users send with ``send`` and end processes
with ``exit``, and starting a process's task is :meth:`~._task.Process.start`, called
once by :meth:`Node.spawn`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pyfabric.etf import Pid

__all__ = ["ProcessHandle"]


@runtime_checkable
class ProcessHandle(Protocol):
    """What the node and the relations use of a process-table entry."""

    pid: Pid

    @property
    def alive(self) -> bool:
        """True until the entry has exited (:meth:`on_stopped` was called)."""
        ...

    def deliver(self, msg: Any) -> None:
        """Hand ``msg`` to the entry: queue it in a local mailbox (dropped once the process
        has exited, subject to the overflow policy otherwise), or forward it to the remote
        process for a proxy (whatever the transport raises propagates)."""
        ...

    def on_stopped(self, reason: Any) -> None:
        """The entry has exited with ``reason``: record it, drop what is queued, wake a
        waiting receive, cancel a running task. Called once, by the relations, as the entry
        leaves the table and before its links, monitors and watchers fire."""
        ...
