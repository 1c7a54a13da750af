"""Processes that run a coroutine: ``async def fn(proc, *args)`` in an asyncio task.

:class:`Process` is a :class:`~._process.LocalProcess` whose life is its task: the task
ends the process when the coroutine returns or raises, and an exit signal that ends the
process cancels the task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pyfabric.etf import Pid

from ._errors import ProcessExit
from ._limits import Overflow
from ._process import LocalProcess
from ._signals import KILLED, NORMAL, crash_reason

if TYPE_CHECKING:
    from ._node import Node
    from ._relations import Relations

__all__ = ["Process", "function_name", "close_awaitable"]

_log = logging.getLogger("pyfabric.runtime")


class Process(LocalProcess):
    """A process running ``async def fn(proc, *args)`` in its own asyncio task.

    ``proc`` (this object) is passed to ``fn``. The process ends when ``fn`` returns
    (reason ``normal``), raises :class:`ProcessExit` (its reason), raises any other
    exception (reason ``(Atom('python_error'), 'TypeName', 'message')``, and an ERROR crash
    report is logged with the traceback) or is killed by an exit signal (its task is
    cancelled; a bare cancellation from outside counts as ``killed``).

    An exit signal ends the process at once (links, monitors and watchers fire
    immediately); its task is cancelled and sees ``CancelledError`` at its next ``await``.
    """

    __slots__ = ("_task", "_started", "function")

    def __init__(
        self,
        node: Node,
        pid: Pid,
        *,
        relations: Relations,
        trap_exit: bool,
        max_mailbox: int,
        overflow: Overflow,
        function: str = "?",
    ) -> None:
        super().__init__(
            node, pid, relations=relations, trap_exit=trap_exit, max_mailbox=max_mailbox, overflow=overflow
        )
        self.function = function
        """Qualified name of the function the process runs (for logs and crash reports)."""
        self._task: asyncio.Task[None] | None = None
        self._started = False

    def start(self, body: Awaitable[Any]) -> asyncio.Task[None]:
        """Internal: called once by :meth:`Node.spawn` to run ``body`` in this process's
        task (users start processes with ``spawn``)."""
        pid = self.pid
        task = self.node.loop.create_task(self._run(body), name=f"pyfabric process {pid.id}.{pid.serial}")
        self._task = task
        return task

    async def _run(self, body: Awaitable[Any]) -> None:
        """The task's coroutine: run the body, then turn how it ended into an exit reason."""
        self._started = True
        if not self._alive:  # killed before its first step: the body never runs
            close_awaitable(body)
            return
        try:
            await body
        except ProcessExit as exc:
            reason = exc.reason
        except asyncio.CancelledError:
            # Killed by a signal (already dead), or cancelled from outside (e.g. the loop
            # shutting down): the process ends with `killed` either way. The cancellation is
            # not re-raised: the task belongs to the runtime and ends here.
            reason = KILLED
        except Exception as exc:
            if not self._alive:
                return  # e.g. ProcessExited raised by a receive after a kill
            reason = crash_reason(exc)
            _log.error(
                "process %s running %s crashed with reason %r",
                _fmt(self.pid),
                self.function,
                reason,
                exc_info=exc,
            )
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: end the process, re-raise
            if self._alive:
                self._task = None
                self._rel.terminate(self, crash_reason(exc))
            raise
        else:
            reason = NORMAL
        self._task = None  # ending by itself: nothing to cancel
        if self._alive:
            self._rel.terminate(self, reason)

    def on_stopped(self, reason: Any) -> None:
        """Internal (:class:`~._handle.ProcessHandle`): as :meth:`LocalProcess.on_stopped`,
        and cancel the process's task if it has started."""
        super().on_stopped(reason)
        task = self._task
        # A task that has not started yet is left to start: _run then sees the process is
        # dead and closes the body (cancelling it now would leave the body never awaited).
        if task is not None and self._started and not task.done():
            task.cancel()


def function_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of the function a process runs, for logs and crash reports."""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module else name


def close_awaitable(body: Any) -> None:
    """Close a process body that will never run (a coroutine not awaited would warn)."""
    close = getattr(body, "close", None)
    if close is not None:
        close()


def _fmt(pid: Pid) -> str:
    return f"<{pid.node.name}.{pid.id}.{pid.serial}>"
