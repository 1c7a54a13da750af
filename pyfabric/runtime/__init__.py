"""The local process runtime: Erlang-style processes on one asyncio event loop.

Layering: above the codec (``pyfabric.etf``: only its value types are used), below the
transports; no sockets and no protocol code here. A :class:`Node` is the process table
of one Python node; :class:`Process` (a coroutine in a task) and :class:`Mailbox` (a
process held by plain code) share the :class:`LocalProcess` API: send, selective
receive, links, monitors, ``exit/2``, ``trap_exit``, registered names. Remote processes
appear as proxies whose behaviour a transport supplies through :class:`RemoteHandle`;
:meth:`Node.watch` lets the transport learn when local processes exit.

Not thread-safe: call everything on the node's loop (see :mod:`pyfabric.runtime._node`).

Private modules: ``_node`` (table, allocators, spawning, proxies, the transport's entry
points), ``_relations`` (links, monitors, watchers and what an exit fires), ``_process``
(LocalProcess, Mailbox: mailbox and receive), ``_limits`` (mailbox options, ProcessStatistics), ``_task`` (Process), ``_proxy``
(RemoteHandle), ``_handle`` (ProcessHandle: how the table drives its entries), ``_ids``
(pid and reference allocation), ``_signals`` (the exit-signal table), ``_match`` (receive
patterns), ``_registry``, ``_errors``.

Example (``tests/runtime/test_runtime_example.py`` runs it)::

    import asyncio
    from pyfabric.etf import Atom
    from pyfabric.runtime import ANY, Node

    async def echo(proc):
        while True:
            sender, text = await proc.receive((ANY, str))
            proc.send(sender, (Atom("echo"), text))

    async def main():
        async with Node() as node:
            server = node.spawn(echo, name="echo")
            async with node.mailbox() as me:
                node.send("echo", (me.pid, "hello"))
                print(await me.receive((Atom("echo"), ANY), timeout=1))
                ref = me.monitor(server)
                me.exit(server, Atom("kill"))
                down = await me.receive((Atom("DOWN"), ref, ANY, ANY, ANY), timeout=1)
                print(down[4], node.whereis("echo"))

    asyncio.run(main())

prints::

    (Atom('echo'), 'hello')
    killed None
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
from ._limits import DEFAULT_MAX_MAILBOX, DEFAULT_OVERFLOW, Overflow, ProcessStatistics
from ._match import ANY
from ._node import DEFAULT_CLOSE_TIMEOUT, Node
from ._process import LocalProcess, Mailbox
from ._proxy import RemoteHandle
from ._relations import WatchToken
from ._task import Process

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
    "ProcessError",
    "ReceiveTimeout",
    "ProcessExited",
    "NoProcess",
    "NameTaken",
    "NotRegistered",
    "ProcessExit",
]
