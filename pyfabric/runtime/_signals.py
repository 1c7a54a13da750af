"""Exit-signal semantics as one table, and the atoms the runtime puts in messages and reasons.

:func:`exit_signal_action` is the single place that decides what a process does with an
exit signal (OTP ``erlang:exit/2``, links and ``process_flag(trap_exit, true)``):

=========================  ==========  ===============  ==============================
signal                     trap_exit   reason           effect on the receiver
=========================  ==========  ===============  ==============================
``exit/2``                 any         ``kill``         exits with ``killed`` (untrappable)
any                        true        R                message ``{'EXIT', From, R}``
``exit/2`` from itself     false       ``normal``       exits with ``normal``
any other                  false       ``normal``       ignored
any                        false       R                exits with R
=========================  ==========  ===============  ==============================

A ``kill`` arriving through a link (a linked process *exited* with reason ``kill``) is an
ordinary reason: trappable, and it kills a non-trapping process with reason ``kill``.
"""

from __future__ import annotations

import enum
from typing import Any

from pyfabric.etf import Atom

NORMAL = Atom("normal")
KILL = Atom("kill")
KILLED = Atom("killed")
NOPROC = Atom("noproc")
NOCONNECTION = Atom("noconnection")
SHUTDOWN = Atom("shutdown")
MAILBOX_OVERFLOW = Atom("mailbox_overflow")
PYTHON_ERROR = Atom("python_error")
UNDEFINED = Atom("undefined")
EXIT = Atom("EXIT")
DOWN = Atom("DOWN")
PROCESS = Atom("process")


class Action(enum.Enum):
    """What the receiver of an exit signal does."""

    IGNORE = "ignore"
    MESSAGE = "message"  # queue {'EXIT', From, Reason}
    EXIT = "exit"  # the receiver exits (with the reason returned alongside)


def is_atom(value: Any, atom: Atom) -> bool:
    """``value`` is exactly ``atom`` (never equal to a ``str`` or anything else)."""
    return value is atom or (value.__class__ is Atom and value == atom)


def exit_signal_action(reason: Any, *, via_link: bool, trapping: bool, from_self: bool) -> tuple[Action, Any]:
    """Decide the effect of an exit signal with ``reason`` on its receiver (see the module table).

    ``via_link``: the signal comes from a linked process that exited (else from ``exit/2``).
    ``trapping``: the receiver traps exits. ``from_self``: the receiver sent it to itself.
    Returns the action and the reason (the receiver's exit reason for :attr:`Action.EXIT`,
    the reason to put in the ``EXIT`` message for :attr:`Action.MESSAGE`).
    """
    if not via_link and is_atom(reason, KILL):
        return Action.EXIT, KILLED
    if trapping:
        return Action.MESSAGE, reason
    if is_atom(reason, NORMAL):
        if from_self and not via_link:
            return Action.EXIT, NORMAL
        return Action.IGNORE, None
    return Action.EXIT, reason


def crash_reason(exc: BaseException) -> tuple[Atom, str, str]:
    """The exit reason of a process ended by an uncaught Python exception.

    ``(python_error, TypeName, Message)``: ``TypeName`` is the class name for builtins
    (``"ValueError"``) and ``module.QualName`` otherwise; ``Message`` is ``str(exc)``.
    Both are ``str``; the traceback goes to the crash report in the log, not in the reason
    (it would be large, and it travels to every linked and monitoring process).
    """
    cls = type(exc)
    if cls.__module__ == "builtins":
        type_name = cls.__qualname__
    else:
        type_name = f"{cls.__module__}.{cls.__qualname__}"
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not hide the crash
        text = f"<unprintable {type_name}>"
    return PYTHON_ERROR, type_name, text
