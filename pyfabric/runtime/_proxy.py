"""Proxies: local stand-ins for remote processes, driven by a transport's :class:`RemoteHandle`.

A proxy is an entry in the node's process table with a pid of this node. Sending to it,
linking to it and ``exit/2`` on it are forwarded to its handle; monitors on it are purely
local. It ends only when the transport calls :meth:`Node.terminate_proxy` (the remote
process's ``DEAD`` arrived, or the connection is lost for good: ``noconnection``), which
fires local links and monitors exactly like a local exit (docs/protocol.md 4.3, 4.4, 5.2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from pyfabric.etf import Pid

__all__ = ["RemoteHandle", "Proxy", "relay"]

_log = logging.getLogger("pyfabric.runtime")


@runtime_checkable
class RemoteHandle(Protocol):
    """What the runtime asks of a transport for one remote process (one proxy).

    The runtime calls these methods synchronously, on the event loop, from inside a
    ``send`` / ``link`` / ``unlink`` / ``exit`` call of a local process. They must not block
    and should only queue frames; they must not call back into the :class:`Node`
    synchronously (schedule such work with ``loop.call_soon``). An exception raised by a
    method propagates to the local caller, and the local state is left unchanged (for
    ``deliver``: the message is not sent; for ``link_added``: no link is made).
    """

    def deliver(self, msg: Any) -> None:
        """Something was sent to the proxy: send ``{m, Id, Payload}`` to the remote process.

        May raise the transport's own typed error when ``msg`` cannot be carried by this
        peer (e.g. a map to a legacy peer); ``send`` then raises it.
        """

    def link_added(self, local_pid: Pid) -> None:
        """A local process linked the proxy: send ``{link, A, B}`` (A = ``local_pid``)."""

    def link_removed(self, local_pid: Pid) -> None:
        """A local process unlinked the proxy: send ``{unlink, A, B}``.

        Not called when the link ends because either side exited: the remote side learns of
        a local exit from the ``DEAD`` notice of the exported local process (sending an
        unlink then would wrongly cancel that signal).
        """

    def exit_signal(self, from_pid: Pid, reason: Any) -> None:
        """Local ``exit(proxy, reason)`` by ``from_pid``: send ``{exit2, A, B, Reason}``.

        The proxy itself is unaffected (even by ``kill``): it ends when the remote process's
        ``DEAD`` arrives.

        A handle may also have the optional method ``link_exit_signal(from_pid, reason)``:
        a node relaying between two peers calls it to pass on the link signal of a remote
        process that ended (``{link_exit, A, B, Reason}``, docs/protocol.md 5.2); without it
        that signal goes on through ``exit_signal``.
        """


class Proxy:
    """The process-table entry of a remote process (internal; users only see its pid).

    Its links and monitors are kept by :class:`~._relations.Relations` like those of a
    local process; it is driven through the same :class:`~._handle.ProcessHandle` methods, ``deliver`` and
    ``on_stopped``.
    """

    __slots__ = ("pid", "handle", "_alive", "_exit_reason")

    trap_exit = False

    def __init__(self, pid: Pid, handle: RemoteHandle) -> None:
        self.pid = pid
        self.handle = handle
        self._alive = True
        self._exit_reason: Any = None

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def exit_reason(self) -> Any:
        return self._exit_reason

    def deliver(self, msg: Any) -> None:
        """Forward ``msg`` to the remote process through :attr:`handle`."""
        self.handle.deliver(msg)

    def on_stopped(self, reason: Any) -> None:
        """The remote process is gone (or its connection): record ``reason``."""
        self._alive = False
        self._exit_reason = reason

    def __repr__(self) -> str:
        state = "alive" if self._alive else f"exited {self._exit_reason!r}"
        return f"<Proxy {self.pid.node.name}.{self.pid.id}.{self.pid.serial} {state} via {self.handle!r}>"


def relay(command: Callable[..., None], *args: Any) -> bool:
    """Pass a remote link or exit signal on to another connection's peer through a proxy's
    handle (a node relaying between two peers, docs/protocol.md 16.4); a failure there (not
    connected, queue full) is logged, never raised into the connection that received it."""
    try:
        command(*args)
    except Exception as exc:
        _log.warning("link or exit signal not passed on (%s): %s", getattr(command, "__qualname__", command), exc)
        return False
    return True
