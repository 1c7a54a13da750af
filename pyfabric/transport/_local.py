"""Local processes on a client's or server's node: the part of their API they share."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from ..etf import Atom, Pid
from ..runtime import Mailbox, Node

__all__ = ["LocalProcesses"]


class LocalProcesses:
    """Mailboxes, processes and registered names on the node ``self._node``."""

    _node: Node

    @property
    def node(self) -> Node:
        """The runtime node this object's processes and proxies live on."""
        return self._node

    def mailbox(self, name: Atom | str | None = None, **options: Any) -> Mailbox:
        """A new mailbox on this node (see :meth:`pyfabric.runtime.Node.mailbox`)."""
        return self._node.mailbox(name, **options)

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, **options: Any) -> Pid:
        """Start ``async def fn(proc, *args)`` as a process on this node."""
        return self._node.spawn(fn, *args, **options)

    def register(self, name: Atom | str, pid: Pid) -> None:
        """Register ``pid`` as ``name`` locally (the peer reaches it only if ``name`` is allowed)."""
        self._node.register(name, pid)

    def unregister(self, name: Atom | str) -> None:
        """Remove a local registered name (:class:`~pyfabric.runtime.NotRegistered` if unused)."""
        self._node.unregister(name)
