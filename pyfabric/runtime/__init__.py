"""The local process runtime: Erlang-style processes on one asyncio event loop.

Layering: above the codec (``pyfabric.etf``: only its value types are used), below the
transports; no sockets and no protocol code here. A :class:`Node` is the process table
of one Python node; :class:`Process` (a coroutine in a task) and :class:`Mailbox` (a
process held by plain code) share the :class:`LocalProcess` API: send, selective
receive, links, monitors, ``exit/2``, ``trap_exit``, registered names. Remote processes
appear as proxies whose behaviour a transport supplies through :class:`RemoteHandle`;
:meth:`Node.watch` lets the transport learn when local processes exit.

Not thread-safe: call everything on the node's loop (see :mod:`pyfabric.runtime._node`).

Private modules: ``_node`` (table, allocators, signal delivery, proxies, watchers),
``_process`` (mailbox, receive, Process, Mailbox), ``_proxy`` (RemoteHandle),
``_signals`` (the exit-signal table), ``_match`` (receive patterns), ``_registry``,
``_errors``.
"""

from ._errors import (
    NameTaken,
    NoProcess,
    NotRegistered,
    ProcessError,
    ProcessExit,
    ProcessExited,
    ReceiveTimeout,
)
from ._match import ANY
from ._node import DEFAULT_CLOSE_TIMEOUT, Node, WatchToken
from ._process import (
    DEFAULT_MAX_MAILBOX,
    DEFAULT_OVERFLOW,
    LocalProcess,
    Mailbox,
    Overflow,
    Process,
    ProcessStatistics,
)
from ._proxy import RemoteHandle
from ._signals import exit_signal_action

__all__ = [
    "Node",
    "LocalProcess",
    "Process",
    "Mailbox",
    "ProcessStatistics",
    "RemoteHandle",
    "WatchToken",
    "ANY",
    "Overflow",
    "DEFAULT_MAX_MAILBOX",
    "DEFAULT_OVERFLOW",
    "DEFAULT_CLOSE_TIMEOUT",
    "exit_signal_action",
    "ProcessError",
    "ReceiveTimeout",
    "ProcessExited",
    "NoProcess",
    "NameTaken",
    "NotRegistered",
    "ProcessExit",
]
