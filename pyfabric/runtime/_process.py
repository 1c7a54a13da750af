"""Local processes: the mailbox, selective receive and the per-process API.

:class:`LocalProcess` holds everything a process owns (its queue, links, monitors, flags);
the rules that involve other processes (signals, links, monitors, exits) live in
:class:`~._relations.Relations`, which this module calls (and which drives a process
only through its :class:`~._handle.ProcessHandle` methods, ``deliver`` and
``on_stopped``). :class:`Mailbox` is a process without a task, held and driven by
ordinary code (:class:`~._task.Process`, a process that runs a coroutine in its own
task, builds on it). The mailbox options and the statistics snapshot are in :mod:`._limits`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING, Any

from pyfabric.etf import Atom, Pid, Reference

from ._errors import ProcessError, ProcessExited, ReceiveTimeout
from ._limits import Overflow, ProcessStatistics
from ._match import Matcher, compile_match
from ._signals import DOWN, MAILBOX_OVERFLOW, NORMAL

if TYPE_CHECKING:
    from ._node import Node
    from ._relations import Relations

__all__ = ["LocalProcess", "Mailbox"]

_log = logging.getLogger("pyfabric.runtime")

class LocalProcess:
    """The process API shared by :class:`Process` and :class:`Mailbox`.

    A local process has a ``pid``, a bounded mailbox with selective :meth:`receive`, links,
    monitors, a ``trap_exit`` flag and at most one registered name. All methods must be
    called on the node's event loop (the runtime is not thread-safe).

    Once the process has exited, ``receive``, ``link``, ``monitor``, ``exit`` and
    ``register`` raise :class:`ProcessExited`; ``send`` still works (it does not depend on
    the sender), and ``unlink`` / ``demonitor`` are no-ops.
    """

    __slots__ = (
        "node",
        "_loop",
        "pid",
        "_rel",
        "_queue",
        "_waiter",
        "_receiving",
        "_max",
        "_overflow",
        "_overflow_warned",
        "trap_exit",
        "_alive",
        "_exit_reason",
        "_epoch",
        "_head_drops",
        "_received",
        "_dropped",
        "_service",
        "_last_take",
    )

    def __init__(
        self, node: Node, pid: Pid, *, relations: Relations, trap_exit: bool, max_mailbox: int, overflow: Overflow
    ) -> None:
        self.node = node
        """The :class:`Node` this process lives on."""
        self._loop = node.loop
        self._rel = relations
        self.pid = pid
        """This process's pid."""
        self.trap_exit = bool(trap_exit)
        """When true, exit signals (except ``exit(pid, kill)``) arrive as
        ``(Atom('EXIT'), from_pid, reason)`` messages instead of ending the process."""
        self._queue: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._receiving = False
        self._max = max_mailbox
        self._overflow = overflow
        self._overflow_warned = False
        self._alive = True
        self._exit_reason: Any = None
        # Bumped when messages are removed from the middle of the queue by anything other
        # than the running receive (demonitor flush), so a waiting receive rescans.
        self._epoch = 0
        # Messages removed from the head by "drop_old", so a waiting receive can shift the
        # position it has already scanned up to instead of rescanning.
        self._head_drops = 0
        self._received = 0
        self._dropped = 0
        # Seconds the process takes per message while it is behind (an average over the
        # takes that found more messages waiting): transports bound by it how much of the
        # mailbox one flooding connection may fill (see service_time).
        self._service = 0.0
        self._last_take = 0.0

    # -- state -------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """True until the process exits."""
        return self._alive

    @property
    def exit_reason(self) -> Any:
        """The exit reason once the process has exited, else ``None``."""
        return self._exit_reason

    @property
    def registered_name(self) -> Atom | None:
        """The name this process is registered under, or ``None``."""
        return self._rel.registry.name_of(self.pid)

    @property
    def max_mailbox(self) -> int:
        """The mailbox bound: how many messages may be queued before ``overflow`` applies."""
        return self._max

    def qsize(self) -> int:
        """Number of messages queued in the mailbox."""
        return len(self._queue)

    @property
    def service_time(self) -> float:
        """Seconds this process spends per message while messages are waiting for it (a
        moving average of the time between two receives with more messages queued; 0.0 until
        it has been behind): ``qsize() * service_time`` estimates how long a message sent
        now waits in the mailbox."""
        return self._service

    def queued(self) -> list[Any]:
        """A snapshot of the queued messages, oldest first (Erlang's
        ``process_info(Pid, messages)``); receiving is unaffected."""
        return list(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    def __bool__(self) -> bool:  # __len__ must not make an empty mailbox falsy
        return True

    def statistics(self) -> ProcessStatistics:
        """A snapshot of this process's counters and state."""
        rel = self._rel
        return ProcessStatistics(
            pid=self.pid,
            alive=self._alive,
            exit_reason=self._exit_reason,
            queued=len(self._queue),
            max_mailbox=self._max,
            overflow=self._overflow,
            received=self._received,
            dropped=self._dropped,
            links=len(rel.links_of(self.pid)),
            monitors=rel.monitor_count(self.pid),
            monitored_by=rel.monitored_by_count(self.pid),
            trap_exit=self.trap_exit,
            registered_name=self.registered_name,
        )

    def __repr__(self) -> str:
        state = "alive" if self._alive else f"exited {self._exit_reason!r}"
        return f"<{type(self).__name__} {self.pid.node.name}.{self.pid.id}.{self.pid.serial} {state}>"

    # -- the process API (delegates the cross-process rules to the node) ----------------

    def send(self, dest: Pid | Atom | str | tuple[Atom | str, Atom | str], msg: Any) -> None:
        """Send ``msg`` to a pid, a registered name or ``(name, node)``; see :meth:`Node.send`."""
        self.node.send(dest, msg)

    def link(self, pid: Pid) -> None:
        """Link this process with ``pid`` (Erlang ``link/1``).

        Links are symmetric: when either side exits with reason R the other gets an exit
        signal R (``normal`` is ignored unless it traps exits). Linking twice or to itself
        does nothing. If ``pid`` is not alive: :class:`NoProcess`, unless this process traps
        exits, in which case it receives ``(Atom('EXIT'), pid, Atom('noproc'))``. Linking a
        proxy calls its handle's ``link_added``.
        """
        self._rel.link(self, pid)

    def unlink(self, pid: Pid) -> None:
        """Remove the link with ``pid`` if there is one (Erlang ``unlink/1``); from then on
        neither side's exit affects the other. Unlinking a proxy calls ``link_removed``."""
        self._rel.unlink(self, pid)

    def monitor(self, pid: Pid) -> Reference:
        """Monitor ``pid``; when it exits this process gets
        ``(Atom('DOWN'), ref, Atom('process'), pid, reason)`` (``noproc`` if already dead)."""
        return self._rel.monitor(self, pid)

    def demonitor(self, ref: Reference, flush: bool = False) -> bool:
        """Remove the monitor ``ref``; with ``flush`` also drop its queued ``DOWN`` message.

        Returns True if the monitor was active (like ``demonitor(Ref, [info])``), False if it
        had already fired or was unknown.
        """
        active = self._rel.demonitor(self, ref)
        if flush:
            self._flush_down(ref)
        return active

    def exit(self, pid: Pid, reason: Any) -> None:
        """Send an exit signal with ``reason`` to ``pid`` (Erlang ``exit/2``).

        ``Atom('kill')``: the target exits with ``killed``, even if it traps exits. Any other
        reason: a target that traps exits receives ``(Atom('EXIT'), self.pid, reason)``; one
        that does not exits with ``reason``, except ``normal``, which it ignores (unless the
        target is this process itself: it then exits with ``normal``). A dead pid: nothing
        happens. A proxy: forwarded to its handle's ``exit_signal``; the proxy stays.
        A process that kills itself this way is dead at once; its task is cancelled at its
        next ``await``.
        """
        self._rel.exit2(self, pid, reason)

    def register(self, name: Atom | str) -> None:
        """Register this process under ``name`` (see :meth:`Node.register`)."""
        if not self._alive:
            raise ProcessExited(self.pid, self._exit_reason)
        self.node.register(name, self.pid)

    # -- mailbox -----------------------------------------------------------------------

    def deliver(self, msg: Any) -> None:
        """Queue ``msg`` (the hot path of every send) and wake a waiting receive.

        Internal (:class:`~._handle.ProcessHandle`): the node and its relations call it; to
        send a message, use :meth:`send` or :meth:`Node.send`."""
        if not self._alive:
            return
        queue = self._queue
        if len(queue) >= self._max:
            self._overflowed(msg)
            return
        queue.append(msg)
        self._received += 1
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _overflowed(self, msg: Any) -> None:
        self._dropped += 1
        policy = self._overflow
        if policy == "exit":
            _log.warning(
                "mailbox of %r is full (%d messages): the process exits with reason mailbox_overflow",
                self,
                self._max,
            )
            self._rel.terminate(self, MAILBOX_OVERFLOW)
            return
        if policy == "drop_old":
            self._queue.popleft()
            self._head_drops += 1
            self._queue.append(msg)
            self._received += 1
            self._wake()
        if not self._overflow_warned:
            self._overflow_warned = True
            _log.warning(
                "mailbox of %r is full (%d messages): %s (logged once until the mailbox drains to half)",
                self,
                self._max,
                "dropping the oldest queued messages" if policy == "drop_old" else "dropping new messages",
            )

    def _take(self, index: int) -> Any:
        queue = self._queue
        now = monotonic()
        if self._last_take:
            # The previous take left messages queued, and only takes remove them: the time
            # since then went to this process's own work, not to waiting for messages.
            sample = now - self._last_take
            self._service = self._service + (sample - self._service) * 0.125 if self._service else sample
        self._last_take = now if len(queue) > 1 else 0.0
        if index == 0:
            msg = queue.popleft()
        else:
            msg = queue[index]
            del queue[index]
        if self._overflow_warned and len(queue) <= self._max >> 1:
            self._overflow_warned = False
        return msg

    async def receive(self, match: Any = None, timeout: float | None = None) -> Any:
        """Return the first queued message that matches; wait for one if none does.

        ``match`` selects messages (Erlang's ``receive`` patterns):

        - ``None`` or :data:`ANY`: any message;
        - a predicate (any callable that is not a type): ``match(msg)`` is true;
        - a template: :data:`ANY` matches anything; a type matches by ``isinstance``;
          a tuple matches a tuple of the same length and a list a list (or ``FrozenList``)
          of the same length, element by element; a dict matches a mapping that has all
          its keys with matching values (extra keys allowed); ``bool``/``int``/``float``
          compare like Erlang's ``=:=`` (``1`` matches neither ``1.0`` nor ``True``); any
          other value matches by equality (``Atom("ok")`` never matches ``"ok"``).

        Messages that do not match stay queued, in order. While waiting, only newly
        arrived messages are checked (a predicate should be pure: it is called once per
        message per receive).

        ``timeout`` is in seconds; ``None`` waits forever and ``0`` only looks at what is
        queued. A message that arrives together with the timeout still wins. On timeout
        :class:`ReceiveTimeout` (a ``TimeoutError``) is raised. :class:`ProcessExited` is
        raised if the process has exited or exits while waiting; :class:`ProcessError` if
        another ``receive`` on this process is already waiting.
        """
        if not self._alive:
            raise ProcessExited(self.pid, self._exit_reason)
        if self._receiving:
            raise ProcessError(f"{self!r}: another receive is already waiting on this process")
        queue = self._queue
        matcher = None if match is None else compile_match(match)  # (no call for the common case)
        if matcher is None:
            if queue:
                return self._take(0)
        else:
            index = _find(queue, matcher, 0)
            if index >= 0:
                return self._take(index)
        if timeout is not None and timeout <= 0:
            raise ReceiveTimeout(timeout)
        return await self._wait(matcher, timeout, len(queue))

    async def _wait(self, matcher: Matcher | None, timeout: float | None, scanned: int) -> Any:
        self._receiving = True
        loop = self._loop
        timed_out = False
        timer: asyncio.TimerHandle | None = None
        if timeout is not None:

            def on_timeout() -> None:
                nonlocal timed_out
                timed_out = True
                self._wake()

            timer = loop.call_later(timeout, on_timeout)
        queue = self._queue
        epoch = self._epoch
        head_drops = self._head_drops
        try:
            while True:
                waiter = loop.create_future()
                self._waiter = waiter
                await waiter
                if not self._alive:
                    raise ProcessExited(self.pid, self._exit_reason)
                if self._epoch != epoch:
                    epoch = self._epoch
                    scanned = 0
                elif self._head_drops != head_drops:
                    scanned = max(0, scanned - (self._head_drops - head_drops))
                head_drops = self._head_drops
                if matcher is None:
                    if queue:
                        return self._take(0)
                else:
                    index = _find(queue, matcher, scanned)
                    if index >= 0:
                        return self._take(index)
                    scanned = len(queue)
                if timed_out:
                    raise ReceiveTimeout(timeout)  # type: ignore[arg-type]
        finally:
            self._receiving = False
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _flush_down(self, ref: Reference) -> None:
        """Drop queued ``DOWN`` messages of monitor ``ref`` (``demonitor(ref, flush=True)``)."""
        queue = self._queue
        kept = [
            m
            for m in queue
            if not (m.__class__ is tuple and len(m) == 5 and m[0] == DOWN and m[1] == ref)
        ]
        if len(kept) != len(queue):
            queue.clear()
            queue.extend(kept)
            self._epoch += 1

    # -- exit ----------------------------------------------------------------------------

    def on_stopped(self, reason: Any) -> None:
        """Internal (:class:`~._handle.ProcessHandle`): called by
        :class:`~._relations.Relations` when this process exits: record ``reason``, drop the
        queue, wake a waiting receive. To end a process, use :meth:`exit`."""
        self._alive = False
        self._exit_reason = reason
        self._queue.clear()
        self._wake()


def _find(queue: deque[Any], matcher: Matcher, start: int) -> int:
    """Index of the first message at or after ``start`` that matches, or -1."""
    index = start
    for msg in itertools.islice(queue, start, None) if start else queue:
        if matcher(msg):
            return index
        index += 1
    return -1


class Mailbox(LocalProcess):
    """A process without a task: a pid and a mailbox that ordinary code holds and drives.

    Create with :meth:`Node.mailbox`. It receives messages, links, monitors and exit
    signals exactly like a :class:`Process`. It ends with :meth:`close` (reason ``normal``
    by default) or when an exit signal kills it; then ``receive`` raises
    :class:`ProcessExited`. Usable as a (sync or async) context manager that closes it.
    """

    __slots__ = ()

    def close(self, reason: Any = NORMAL) -> None:
        """End the mailbox with ``reason`` (links and monitors fire); no-op if already ended."""
        if self._alive:
            self._rel.terminate(self, reason)

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Mailbox:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
