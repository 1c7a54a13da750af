"""The node: one Python node's process table, pid/reference allocators and registry.

A send queues the message before returning. The relations between processes (links,
monitors, watchers) and what an exit fires belong to :class:`~._relations.Relations`,
which the node owns and every local process calls; the node creates processes and
proxies and gives the transport its entry points (those for proxies and remote signals are
:class:`~._remote.RemoteEntries`, a base of :class:`Node`).

Threading: a :class:`Node` belongs to the event loop that created it and is not
thread-safe. Code on other threads (e.g. the blocking facade) must marshal every call
onto that loop with ``loop.call_soon_threadsafe`` or ``asyncio.run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import platform
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from pyfabric.etf import Atom, Pid, Reference

from ._errors import NameTaken, NoProcess, NotRegistered, ProcessError
from ._ids import MAX_U32, IdAllocator
from ._limits import DEFAULT_MAX_MAILBOX, DEFAULT_OVERFLOW, Overflow, check_max_mailbox, check_overflow
from ._process import LocalProcess, Mailbox
from ._proxy import Proxy
from ._registry import Registry, to_name
from ._relations import Entry, ExitCallback, Relations, WatchToken
from ._remote import RemoteEntries
from ._signals import NOCONNECTION, SHUTDOWN
from ._task import Process, close_awaitable, function_name

__all__ = ["Node", "WatchToken", "DEFAULT_CLOSE_TIMEOUT"]

_log = logging.getLogger("pyfabric.runtime")

DEFAULT_CLOSE_TIMEOUT = 5.0
"""Seconds :meth:`Node.close` waits for cancelled process tasks to finish (a task that
swallows cancellation and keeps running would otherwise block shutdown forever)."""

def default_node_name() -> Atom:
    """``py_<8 hex digits>@<short host name>``: unique per node, Erlang ``name@host`` shape."""
    host = platform.node().split(".")[0] or "localhost"
    return Atom(f"py_{secrets.token_hex(4)}@{host}")


class Node(RemoteEntries):
    """The process table of one Python node, bound to the running asyncio loop.

    ``name``: the node name (``Atom`` or ``str``, ``name@host``); default
    :func:`default_node_name`. ``creation``: the 32-bit creation stamped in every pid and
    reference; default random non-zero, so pids of an earlier node with the same name differ.
    ``max_mailbox`` / ``overflow``: defaults for every process's mailbox bound and overflow
    policy (see :data:`DEFAULT_MAX_MAILBOX`, :data:`DEFAULT_OVERFLOW`).

    Must be created inside a running event loop; see the module docstring on threads. Use
    ``async with Node() as node:`` or call :meth:`close` to end every process cleanly.

    Erlang rules in one place:

    - ``send`` to a pid never fails: a dead or unknown pid drops the message. ``send`` to a
      name raises :class:`NotRegistered` if no process holds it (Erlang's ``badarg``).
    - ``link(pid)`` is symmetric and idempotent; linking to itself does nothing; linking to
      a dead pid raises :class:`NoProcess` unless the caller traps exits, in which case it
      gets ``(Atom('EXIT'), pid, Atom('noproc'))`` (OTP ``link/1``).
    - When a process exits with reason R, each linked process gets an exit signal R and
      each monitor a ``(Atom('DOWN'), ref, Atom('process'), pid, R)`` message; its name is
      released and its watchers are called. Signal handling: :func:`exit_signal_action`.
    - ``monitor`` on a dead pid delivers ``DOWN`` with ``noproc`` at once.
    """

    def __init__(
        self,
        name: Atom | str | None = None,
        *,
        creation: int | None = None,
        max_mailbox: int = DEFAULT_MAX_MAILBOX,
        overflow: Overflow = DEFAULT_OVERFLOW,
    ) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("a Node must be created inside a running asyncio event loop") from None
        if name is None:
            node_name = default_node_name()
        elif name.__class__ is Atom:
            node_name = name
        elif isinstance(name, str):
            node_name = Atom(name)
        else:
            raise TypeError(f"node name must be an Atom or a str, got {type(name).__name__}")
        local, sep, host = node_name.name.partition("@")
        if not (local and sep and host):
            raise ValueError(f"node name must look like name@host, got {node_name.name!r}")
        if creation is None:
            creation = secrets.randbelow(MAX_U32) + 1
        elif type(creation) is not int or not 0 <= creation <= MAX_U32:
            raise ValueError(f"creation must be an int in 0..2**32-1, got {creation!r}")
        self._name: Atom = node_name
        self._creation = creation
        self._max_mailbox = check_max_mailbox(max_mailbox)
        self._overflow: Overflow = check_overflow(overflow)
        self._table: dict[Pid, Entry] = {}
        self._registry = Registry()
        self._ids = IdAllocator(node_name, creation)
        self._tasks: set[asyncio.Task[None]] = set()
        self._relations = Relations(self._table, self._registry, self._loop, self.make_ref)
        self._closed = False
        self._node_senders: list[Callable[[Atom, Atom, Any], bool]] = []

    # -- identity and allocators -----------------------------------------------------------

    @property
    def name(self) -> Atom:
        """This node's name."""
        return self._name

    @property
    def creation(self) -> int:
        """This node's creation (stamped in its pids and references)."""
        return self._creation

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this node runs on."""
        return self._loop

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has started."""
        return self._closed

    def _new_pid(self) -> Pid:
        return self._ids.new_pid()

    def make_ref(self) -> Reference:
        """A new reference of this node, unique for the node's lifetime (3 words, like Erlang)."""
        return self._ids.new_ref()

    # -- creating processes ------------------------------------------------------------------

    def spawn(
        self,
        fn: Callable[..., Coroutine[Any, Any, Any]],
        *args: Any,
        link_to: Pid | None = None,
        trap_exit: bool = False,
        name: Atom | str | None = None,
        max_mailbox: int | None = None,
        overflow: Overflow | None = None,
    ) -> Pid:
        """Start ``async def fn(proc, *args)`` as a new process in its own task; return its pid.

        ``proc`` is the new :class:`Process`. The process is alive (and can receive) as soon
        as ``spawn`` returns; its task starts at the next loop iteration. Options are
        applied atomically before anything runs: ``link_to`` links it with that pid
        (like ``spawn_link`` from that process; :class:`NoProcess` if ``link_to`` is not
        alive), ``trap_exit`` sets the flag, ``name`` registers it (:class:`NameTaken`),
        ``max_mailbox`` / ``overflow`` override the node defaults. On any error nothing is
        started. ``fn(proc, *args)`` is called inside ``spawn`` to create the coroutine (none
        of its body runs yet): an exception from that call propagates, and ``TypeError`` is
        raised if it does not return an awaitable.
        """
        self._check_open()
        reg_name = self._check_name_free(name)
        link_entry = self._check_link_to(link_to)
        pid = self._new_pid()
        proc = Process(
            self,
            pid,
            relations=self._relations,
            trap_exit=trap_exit,
            max_mailbox=self._max_mailbox if max_mailbox is None else check_max_mailbox(max_mailbox),
            overflow=self._overflow if overflow is None else check_overflow(overflow),
            function=function_name(fn),
        )
        body = fn(proc, *args)
        if not inspect.isawaitable(body):
            raise TypeError(f"spawn needs an async function: {fn!r} returned {type(body).__name__}")
        if isinstance(link_entry, Proxy):
            try:
                link_entry.handle.link_added(pid)
            except BaseException:
                close_awaitable(body)
                raise
        self._commit(proc, reg_name, link_entry)
        task = proc.start(body)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return pid

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            # Only KeyboardInterrupt/SystemExit get here, and they already propagated out of
            # the loop; retrieving them avoids a second "never retrieved" report.
            task.exception()

    def mailbox(
        self,
        name: Atom | str | None = None,
        *,
        link_to: Pid | None = None,
        trap_exit: bool = False,
        max_mailbox: int | None = None,
        overflow: Overflow | None = None,
    ) -> Mailbox:
        """A new :class:`Mailbox`: a process without a task, for code that is not a process.

        Options as in :meth:`spawn`. Close it (``mb.close()``, or ``with``/``async with``)
        when done: until then it stays in the process table.
        """
        self._check_open()
        reg_name = self._check_name_free(name)
        link_entry = self._check_link_to(link_to)
        pid = self._new_pid()
        box = Mailbox(
            self,
            pid,
            relations=self._relations,
            trap_exit=trap_exit,
            max_mailbox=self._max_mailbox if max_mailbox is None else check_max_mailbox(max_mailbox),
            overflow=self._overflow if overflow is None else check_overflow(overflow),
        )
        if isinstance(link_entry, Proxy):
            link_entry.handle.link_added(pid)
        self._commit(box, reg_name, link_entry)
        return box

    def _check_open(self) -> None:
        if self._closed:
            raise ProcessError(f"node {self._name.name} is closed")

    def _check_name_free(self, name: Atom | str | None) -> Atom | None:
        if name is None:
            return None
        reg_name = to_name(name)
        holder = self._registry.whereis(reg_name)
        if holder is not None:
            raise NameTaken(reg_name, holder)
        return reg_name

    def _check_link_to(self, link_to: Pid | None) -> Entry | None:
        if link_to is None:
            return None
        entry = self._table.get(link_to)
        if entry is None:
            raise NoProcess(link_to, "link a new process to it")
        return entry

    def _commit(self, proc: LocalProcess, reg_name: Atom | None, link_entry: Entry | None) -> None:
        pid = proc.pid
        self._table[pid] = proc
        if reg_name is not None:
            self._registry.register(reg_name, pid)
        if link_entry is not None:
            self._relations.add_link(pid, link_entry.pid)

    # -- sending and the registry ------------------------------------------------------------

    def send(self, dest: Pid | Atom | str | tuple[Atom | str, Atom | str], msg: Any) -> None:
        """Send ``msg`` to a pid (local process or proxy), a registered name, or a
        ``(name, node)`` pair (Erlang's ``{Name, Node} ! Msg``).

        To a pid: never fails; a dead or unknown pid silently drops the message (Erlang).
        To a name (``Atom`` or ``str``): :class:`NotRegistered` if no process holds it.
        To a proxy: whatever its :meth:`RemoteHandle.deliver` raises propagates.
        To ``(name, node)``: this node's own name delivers here (an unregistered name drops
        the message silently, as Erlang does); another node goes to the first node sender
        (:meth:`add_node_sender`, a transport) that reaches it, and is dropped silently
        (debug log) when none does; what a sender raises propagates.
        """
        if dest.__class__ is Pid:
            entry = self._table.get(dest)
            if entry is not None:
                entry.deliver(msg)
            return
        if dest.__class__ is tuple:
            self._send_to_node(dest, msg)
            return
        reg_name = to_name(dest)  # type: ignore[arg-type]
        pid = self._registry.whereis(reg_name)
        if pid is None:
            raise NotRegistered(reg_name)
        self._table[pid].deliver(msg)

    def send_with_room(self, dest: Pid | Atom, msg: Any, high: int) -> bool:
        """:meth:`send` to a pid or a registered name; True if it went into the mailbox of a
        local process that holds fewer than ``high`` messages now (the message included):
        one lookup for a transport that checks the mailbox it just fed."""
        if dest.__class__ is Pid:
            entry = self._table.get(dest)
            if entry is None:
                return False
        else:
            reg_name = to_name(dest)  # type: ignore[arg-type]
            pid = self._registry.whereis(reg_name)
            if pid is None:
                raise NotRegistered(reg_name)
            entry = self._table[pid]
        entry.deliver(msg)
        # qsize() and max_mailbox, inlined: every credited message
        return isinstance(entry, LocalProcess) and len(entry._queue) < high and entry._max > 0

    def _send_to_node(self, dest: tuple[Any, ...], msg: Any) -> None:
        if len(dest) != 2:
            raise TypeError(f"a (name, node) destination has two items, got {dest!r}")
        name, node = to_name(dest[0]), to_name(dest[1])
        if node == self._name:
            pid = self._registry.whereis(name)
            if pid is not None:
                self._table[pid].deliver(msg)
            return
        for sender in self._node_senders:
            if sender(name, node, msg):
                return
        _log.debug("node %s: message to %s on %s dropped: no connection reaches that node", self._name.name, name.name, node.name)

    def add_node_sender(self, sender: Callable[[Atom, Atom, Any], bool]) -> None:
        """Let ``sender(name, node, msg)`` carry sends to ``(name, node)`` for other nodes:
        it returns True when it took the message (a client for its server's node and, with
        ``route``, the client nodes; a server for its clients' nodes), False to pass."""
        self._node_senders.append(sender)

    def remove_node_sender(self, sender: Callable[[Atom, Atom, Any], bool]) -> None:
        """Undo :meth:`add_node_sender` (nothing if ``sender`` was not added)."""
        if sender in self._node_senders:
            self._node_senders.remove(sender)

    def register(self, name: Atom | str, pid: Pid) -> None:
        """Register ``pid`` (a live local process) under ``name`` (Erlang ``register/2``).

        :class:`NameTaken` if the name is held or the process already has a name,
        :class:`NoProcess` if ``pid`` is not alive, :class:`ProcessError` for a proxy (as in
        Erlang, only local processes can be registered). The name is released when the
        process exits.
        """
        reg_name = to_name(name)
        entry = self._table.get(pid)
        if entry is None:
            raise NoProcess(pid, f"register {reg_name.name!r}")
        if isinstance(entry, Proxy):
            raise ProcessError(f"cannot register {reg_name.name!r}: {pid!r} is a proxy for a remote process")
        self._registry.register(reg_name, pid)

    def unregister(self, name: Atom | str) -> None:
        """Remove a registered name; :class:`NotRegistered` if no process holds it."""
        self._registry.unregister(to_name(name))

    def whereis(self, name: Atom | str) -> Pid | None:
        """The pid registered under ``name``, or ``None``."""
        return self._registry.whereis(to_name(name))

    def registered(self) -> list[Atom]:
        """All registered names."""
        return self._registry.names()

    def is_alive(self, pid: Pid) -> bool:
        """True if ``pid`` is a live local process or a live proxy of this node."""
        return pid in self._table

    def processes(self) -> list[Pid]:
        """The pids of all live local processes and proxies."""
        return list(self._table)

    def proxies(self) -> list[Pid]:
        """The pids of all live proxies (remote processes seen through a transport)."""
        return [pid for pid, entry in self._table.items() if isinstance(entry, Proxy)]

    def mailbox_size(self, dest: Pid | Atom | str) -> tuple[int, int]:
        """``(queued, max_mailbox)`` of the local process ``dest`` (pid or registered name);
        ``(0, 0)`` for a proxy, a dead pid or an unknown name. Cheap enough to call per
        received burst: transports use it to stop reading a connection while a process it
        feeds is overloaded."""
        entry = self._table.get(dest) if dest.__class__ is Pid else None
        if entry is None and dest.__class__ is not Pid:
            pid = self._registry.whereis(to_name(dest))  # type: ignore[arg-type]
            entry = self._table.get(pid) if pid is not None else None
        if isinstance(entry, LocalProcess):
            return entry.qsize(), entry.max_mailbox
        return 0, 0

    def mailbox_load(self, dest: Pid | Atom | str) -> tuple[int, int, float]:
        """``(queued, max_mailbox, service_time)`` of the local process ``dest`` (see
        :attr:`LocalProcess.service_time`); ``(0, 0, 0.0)`` for a proxy, a dead pid or an
        unknown name. Servers use it to bound how long one connection's messages can make
        the others wait in a shared mailbox."""
        pid = dest if isinstance(dest, Pid) else self._registry.whereis(to_name(dest))
        entry = self._table.get(pid) if pid is not None else None
        if isinstance(entry, LocalProcess):
            return entry.qsize(), entry.max_mailbox, entry.service_time
        return 0, 0, 0.0

    def links(self, pid: Pid) -> frozenset[Pid]:
        """The pids linked with ``pid`` (Erlang's ``process_info(Pid, links)``); empty if
        ``pid`` is not alive."""
        return self._relations.links_of(pid) if pid in self._table else frozenset()

    def process_tasks(self) -> list[asyncio.Task[None]]:
        """The asyncio tasks of the processes still running (named ``pyfabric process
        <id>.<serial>``); empty once :meth:`close` has finished."""
        return list(self._tasks)

    # -- watchers (for the transport: DEAD notices) ----------------------------------------

    def watch(self, pid: Pid, callback: ExitCallback) -> WatchToken:
        """Call ``callback(pid, reason)`` once when ``pid`` exits; return a token for :meth:`unwatch`.

        For a live process the callback runs synchronously inside the exit (so, for
        example, a DEAD notice is queued after every message the process sent). For a pid
        that is already dead or never existed it is scheduled with ``loop.call_soon`` and
        reason ``noproc`` (never called from inside ``watch``). Exceptions raised by the
        callback are logged and swallowed.
        """
        return self._relations.watch(pid, callback)

    def unwatch(self, token: WatchToken) -> bool:
        """Cancel a watch; True if the callback had not been called yet (and now never will be)."""
        return self._relations.unwatch(token)

    # -- shutdown --------------------------------------------------------------------------

    async def close(self, timeout: float | None = DEFAULT_CLOSE_TIMEOUT) -> None:
        """End everything: local processes exit with ``shutdown`` (untrappable here), then
        proxies end with ``noconnection``; wait up to ``timeout`` s for the process tasks.

        Links, monitors and watchers fire as usual while this happens. Afterwards
        ``spawn``, ``mailbox`` and ``new_proxy`` raise :class:`ProcessError`; sends are dropped.
        Calling it again waits for any task still running. A process may call it: its own
        task is not waited for.
        """
        self._closed = True
        terminate = self._relations.terminate
        for entry in list(self._table.values()):
            if isinstance(entry, LocalProcess):
                terminate(entry, SHUTDOWN)
        for entry in list(self._table.values()):
            terminate(entry, NOCONNECTION)
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        if pending:
            _log.warning(
                "node %s closed with %d process task(s) still running after %s s (they ignored cancellation): %s",
                self._name.name,
                len(pending),
                timeout,
                ", ".join(task.get_name() for task in pending),
            )

    async def __aenter__(self) -> Node:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Node {self._name.name} creation={self._creation} processes={len(self._table)}>"
