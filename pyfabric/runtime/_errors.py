"""The closed set of exceptions raised by the runtime, and :class:`ProcessExit`.

Every error the runtime raises on purpose is a :class:`ProcessError` (plus ``TypeError`` /
``ValueError`` for arguments of the wrong type or value, as any Python API does).
:class:`ProcessExit` is not an error: a process raises it to end with a chosen reason,
like Erlang's ``exit(Reason)``.
"""

from __future__ import annotations

from typing import Any

from pyfabric.etf import Atom, Pid

__all__ = [
    "ProcessError",
    "ReceiveTimeout",
    "ProcessExited",
    "NoProcess",
    "NameTaken",
    "NotRegistered",
    "ProcessExit",
]


class ProcessError(Exception):
    """Base class of every error the runtime raises.

    Raised directly for misuse that has no more specific class: a second concurrent
    ``receive`` on the same process, registering a proxy, using a closed :class:`Node`,
    ``terminate_proxy`` on a pid that is not a proxy.
    """


class ReceiveTimeout(ProcessError, TimeoutError):
    """``receive(timeout=...)`` found no matching message in time (``timeout=0``: none queued).

    The unmatched messages stay queued. ``timeout`` is the value that was given.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no matching message within {timeout} s")
        self.timeout = timeout


class ProcessExited(ProcessError):
    """The calling process (or mailbox) has already exited; ``reason`` says why.

    Raised by ``receive`` (also when the process exits while waiting) and by the calls that
    would create state or signals on behalf of a dead process (``link``, ``monitor``,
    ``exit``, ``register``).
    """

    def __init__(self, pid: Pid, reason: Any) -> None:
        super().__init__(f"process {_fmt_pid(pid)} has exited with reason {reason!r}")
        self.pid = pid
        self.reason = reason


class NoProcess(ProcessError):
    """The target process is not alive (Erlang's ``noproc``).

    Raised where Erlang raises ``noproc``/``badarg`` for a dead local pid: ``link`` from a
    process that does not trap exits, ``register``, ``spawn(link_to=...)``.
    """

    def __init__(self, pid: Pid, action: str) -> None:
        super().__init__(f"cannot {action}: process {_fmt_pid(pid)} is not alive (noproc)")
        self.pid = pid


class NameTaken(ProcessError):
    """``register``: the name is held by another live process, or the process already has a name.

    ``name`` is the name asked for; ``holder`` the pid holding it (or ``None`` when the
    problem is that the process already holds ``current``).
    """

    def __init__(self, name: Atom, holder: Pid | None, current: Atom | None = None) -> None:
        if holder is not None:
            text = f"name {name.name!r} is already registered to {_fmt_pid(holder)}"
        else:
            text = f"cannot register {name.name!r}: the process is already registered as {current!s}"
        super().__init__(text)
        self.name = name
        self.holder = holder
        self.current = current


class NotRegistered(ProcessError):
    """Sending to, or unregistering, a name that no live process holds (Erlang's ``badarg``)."""

    def __init__(self, name: Atom) -> None:
        super().__init__(f"no process is registered as {name.name!r}")
        self.name = name


class ProcessExit(Exception):
    """Raise inside a process function to end the process with ``reason`` (Erlang ``exit/1``).

    ``raise ProcessExit(Atom("shutdown"))`` ends the process with reason ``shutdown``:
    linked processes get that exit signal and monitors see it in their ``DOWN`` message.
    No crash report is logged (only uncaught non-``ProcessExit`` exceptions are crashes).
    """

    def __init__(self, reason: Any) -> None:
        super().__init__(reason)
        self.reason = reason


def _fmt_pid(pid: Pid) -> str:
    try:
        return f"<{pid.node.name}.{pid.id}.{pid.serial}>"
    except AttributeError:
        return repr(pid)
