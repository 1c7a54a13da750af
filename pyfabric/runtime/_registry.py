"""The name registry of one node: Erlang ``register/2`` rules, as a two-way table.

A name is an atom held by at most one live process, and a process holds at most one name.
The table knows nothing about liveness; :class:`~pyfabric.runtime.Node` checks that and
calls :meth:`Registry.release` when a process exits.
"""

from __future__ import annotations

from pyfabric.etf import Atom, Pid

from ._errors import NameTaken, NotRegistered
from ._signals import UNDEFINED

__all__ = ["Registry", "to_name"]


def to_name(name: Atom | str) -> Atom:
    """Normalise a registered name: an :class:`Atom`, or a ``str`` taken as the atom's name.

    ``undefined`` is refused (``ValueError``) as in Erlang, where it means "no name".
    """
    if name.__class__ is Atom:
        atom = name
    elif isinstance(name, str):
        atom = Atom(name)
    else:
        raise TypeError(f"a registered name is an Atom or a str, got {type(name).__name__}")
    if atom == UNDEFINED:
        raise ValueError("'undefined' cannot be registered (it means 'no name' in Erlang)")
    return atom


class Registry:
    """Names to pids and back, with Erlang's one-name-per-process rule."""

    __slots__ = ("_by_name", "_by_pid")

    def __init__(self) -> None:
        self._by_name: dict[Atom, Pid] = {}
        self._by_pid: dict[Pid, Atom] = {}

    def register(self, name: Atom, pid: Pid) -> None:
        """Give ``name`` to ``pid``; :class:`NameTaken` if either already has a binding."""
        holder = self._by_name.get(name)
        if holder is not None:
            raise NameTaken(name, holder)
        current = self._by_pid.get(pid)
        if current is not None:
            raise NameTaken(name, None, current)
        self._by_name[name] = pid
        self._by_pid[pid] = name

    def unregister(self, name: Atom) -> Pid:
        """Remove ``name``; return the pid that held it; :class:`NotRegistered` if none did."""
        pid = self._by_name.pop(name, None)
        if pid is None:
            raise NotRegistered(name)
        del self._by_pid[pid]
        return pid

    def whereis(self, name: Atom) -> Pid | None:
        """The pid holding ``name``, or ``None``."""
        return self._by_name.get(name)

    def name_of(self, pid: Pid) -> Atom | None:
        """The name ``pid`` holds, or ``None``."""
        return self._by_pid.get(pid)

    def release(self, pid: Pid) -> None:
        """Drop ``pid``'s name, if it has one (the process exited)."""
        name = self._by_pid.pop(pid, None)
        if name is not None:
            del self._by_name[name]

    def names(self) -> list[Atom]:
        """Every registered name, in registration order."""
        return list(self._by_name)
