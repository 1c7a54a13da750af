"""Links, monitors and watchers: the relations between processes, and what an exit fires.

:class:`Relations` is the one owner of who is linked to whom, who monitors whom and who
watches whose exit. It also holds the rules that involve more than one process (link,
unlink, monitor, demonitor, ``exit/2``, exit-signal delivery) and the exit itself: an
exit fires links, monitors and watchers before the call that caused it returns, and
cascades are processed iteratively (a chain of a million linked processes does not
recurse).

Process-table entries (:class:`~._process.LocalProcess`, :class:`~._proxy.Proxy`) are
driven through the two methods of :class:`~._handle.ProcessHandle` only:
``deliver(msg)`` (queue a message, or forward it for a proxy) and ``on_stopped(reason)``
(the entry has exited: record the reason, drop the queue, wake a waiting receive, cancel
the task). Nothing else of theirs is touched here.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from pyfabric.etf import Pid, Reference

from ._errors import NoProcess, ProcessExited
from ._process import LocalProcess
from ._proxy import Proxy
from ._registry import Registry
from ._signals import DOWN, EXIT, NOPROC, PROCESS, Action, exit_signal_action

__all__ = ["Relations", "WatchToken", "Entry", "ExitCallback"]

_log = logging.getLogger("pyfabric.runtime")

Entry = LocalProcess | Proxy
ExitCallback = Callable[[Pid, Any], None]


class WatchToken:
    """Returned by :meth:`Node.watch`; pass it to :meth:`Node.unwatch`."""

    __slots__ = ("pid", "_callback", "_handle", "_done")

    def __init__(self, pid: Pid, callback: ExitCallback) -> None:
        self.pid = pid
        self._callback = callback
        self._handle: asyncio.Handle | None = None
        self._done = False

    @property
    def done(self) -> bool:
        """True once the callback ran or the watch was cancelled."""
        return self._done

    def __repr__(self) -> str:
        return f"<WatchToken pid={self.pid!r} {'fired' if self._done else 'pending'}>"


class Relations:
    """The links, monitors and watchers of one node's processes (see the module docstring).

    ``table`` is the node's process table (pid -> entry), shared, not owned: the node
    adds entries, :meth:`terminate` removes them.
    """

    def __init__(
        self,
        table: dict[Pid, Entry],
        registry: Registry,
        loop: asyncio.AbstractEventLoop,
        make_ref: Callable[[], Reference],
    ) -> None:
        self.table = table
        self.registry = registry
        self._loop = loop
        self._make_ref = make_ref
        self._links: dict[Pid, set[Pid]] = {}
        self._monitors: dict[Pid, dict[Reference, Pid]] = {}  # watcher -> ref -> target
        self._monitored_by: dict[Pid, dict[Reference, Pid]] = {}  # target -> ref -> watcher
        self._watchers: dict[Pid, dict[WatchToken, ExitCallback]] = {}
        self._dying: deque[Entry] = deque()
        self._propagating = False

    # -- queries ------------------------------------------------------------------------

    def links_of(self, pid: Pid) -> frozenset[Pid]:
        """The pids linked with ``pid``."""
        return frozenset(self._links.get(pid, ()))

    def monitor_count(self, pid: Pid) -> int:
        """Monitors ``pid`` holds on other processes."""
        return len(self._monitors.get(pid, ()))

    def monitored_by_count(self, pid: Pid) -> int:
        """Monitors other processes hold on ``pid``."""
        return len(self._monitored_by.get(pid, ()))

    # -- links --------------------------------------------------------------------------

    def add_link(self, a: Pid, b: Pid) -> None:
        """Record the link a <-> b (no checks, no handle called)."""
        self._links.setdefault(a, set()).add(b)
        self._links.setdefault(b, set()).add(a)

    def remove_link(self, a: Pid, b: Pid) -> bool:
        """Forget the link a <-> b; True if there was one."""
        mine = self._links.get(a)
        if mine is None or b not in mine:
            return False
        mine.discard(b)
        theirs = self._links.get(b)
        if theirs is not None:
            theirs.discard(a)
        return True

    def link(self, proc: LocalProcess, pid: Pid) -> None:
        if not proc.alive:
            raise ProcessExited(proc.pid, proc.exit_reason)
        if pid == proc.pid or pid in self._links.get(proc.pid, ()):
            return
        target = self.table.get(pid)
        if target is None:
            if proc.trap_exit:
                proc.deliver((EXIT, pid, NOPROC))
                return
            raise NoProcess(pid, "link")
        if isinstance(target, Proxy):
            target.handle.link_added(proc.pid)
            if not (target.alive and proc.alive):  # the handle broke the no-reentry rule
                return
        self.add_link(proc.pid, pid)

    def unlink(self, proc: LocalProcess, pid: Pid) -> None:
        if pid not in self._links.get(proc.pid, ()):
            return
        target = self.table.get(pid)
        if isinstance(target, Proxy):
            target.handle.link_removed(proc.pid)
        self.remove_link(proc.pid, pid)

    # -- monitors -----------------------------------------------------------------------

    def monitor(self, proc: LocalProcess, pid: Pid) -> Reference:
        if not proc.alive:
            raise ProcessExited(proc.pid, proc.exit_reason)
        ref = self._make_ref()
        if pid not in self.table:
            proc.deliver((DOWN, ref, PROCESS, pid, NOPROC))
            return ref
        self._monitors.setdefault(proc.pid, {})[ref] = pid
        self._monitored_by.setdefault(pid, {})[ref] = proc.pid
        return ref

    def demonitor(self, proc: LocalProcess, ref: Reference) -> bool:
        """Remove the monitor ``ref`` of ``proc``; True if it was active."""
        mine = self._monitors.get(proc.pid)
        target = mine.pop(ref, None) if mine else None
        if target is None:
            return False
        theirs = self._monitored_by.get(target)
        if theirs is not None:
            theirs.pop(ref, None)
        return True

    # -- exit signals -------------------------------------------------------------------

    def exit2(self, proc: LocalProcess, pid: Pid, reason: Any) -> None:
        """``exit(pid, reason)`` called by ``proc``."""
        if not proc.alive:
            raise ProcessExited(proc.pid, proc.exit_reason)
        target = self.table.get(pid)
        if target is None:
            return
        if isinstance(target, Proxy):
            target.handle.exit_signal(proc.pid, reason)
            return
        self.signal(target, proc.pid, reason, via_link=False)

    def signal(self, target: LocalProcess, from_pid: Pid, reason: Any, *, via_link: bool) -> None:
        """Deliver an exit signal to a live local process."""
        action, value = exit_signal_action(
            reason, via_link=via_link, trapping=target.trap_exit, from_self=from_pid == target.pid
        )
        if action is Action.MESSAGE:
            target.deliver((EXIT, from_pid, value))
        elif action is Action.EXIT:
            self.terminate(target, value)

    # -- exits --------------------------------------------------------------------------

    def terminate(self, entry: Entry, reason: Any) -> None:
        """End ``entry`` with ``reason`` now; fire its links, monitors and watchers."""
        if not entry.alive:
            return
        pid = entry.pid
        del self.table[pid]
        self.registry.release(pid)
        entry.on_stopped(reason)
        self._dying.append(entry)
        if self._propagating:
            return  # the outer call's loop below will get to it
        self._propagating = True
        try:
            while self._dying:
                dead = self._dying.popleft()
                try:
                    self._propagate(dead.pid, dead.exit_reason)
                except Exception:
                    _log.exception("internal error while propagating the exit of %r", dead)
        finally:
            self._propagating = False

    def _propagate(self, pid: Pid, reason: Any) -> None:
        table = self.table
        for other_pid in self._links.pop(pid, ()):
            other = table.get(other_pid)
            if other is None:
                continue
            theirs = self._links.get(other_pid)
            if theirs is not None:
                theirs.discard(pid)
            if isinstance(other, LocalProcess):
                self.signal(other, pid, reason, via_link=True)
            # A proxy only loses the link: the remote side learns of this exit from the
            # DEAD notice for the exported pid (docs/protocol.md 5.2).
        for ref, watcher_pid in self._monitored_by.pop(pid, {}).items():
            watcher = table.get(watcher_pid)
            if isinstance(watcher, LocalProcess):
                watching = self._monitors.get(watcher_pid)
                if watching is not None:
                    watching.pop(ref, None)
                watcher.deliver((DOWN, ref, PROCESS, pid, reason))
        for ref, target_pid in self._monitors.pop(pid, {}).items():
            watched = self._monitored_by.get(target_pid)
            if watched is not None:
                watched.pop(ref, None)
        watchers = self._watchers.pop(pid, None)
        if watchers:
            for token, callback in watchers.items():
                token._done = True
                _call_watcher(callback, pid, reason)

    # -- watchers -----------------------------------------------------------------------

    def watch(self, pid: Pid, callback: ExitCallback) -> WatchToken:
        token = WatchToken(pid, callback)
        if pid not in self.table:
            token._handle = self._loop.call_soon(self._fire_noproc, token)
        else:
            self._watchers.setdefault(pid, {})[token] = callback
        return token

    def _fire_noproc(self, token: WatchToken) -> None:
        token._done = True
        token._handle = None
        _call_watcher(token._callback, token.pid, NOPROC)

    def unwatch(self, token: WatchToken) -> bool:
        if token._done:
            return False
        token._done = True
        if token._handle is not None:
            token._handle.cancel()
            token._handle = None
            return True
        watchers = self._watchers.get(token.pid)
        if watchers:
            watchers.pop(token, None)
        return True


def _call_watcher(callback: ExitCallback, pid: Pid, reason: Any) -> None:
    try:
        callback(pid, reason)
    except Exception:
        _log.exception("exit watcher %r for %r raised", callback, pid)
