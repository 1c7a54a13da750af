"""Pid and reference allocation for one node: never reused, within Erlang's ranges."""

from __future__ import annotations

from pyfabric.etf import Atom, Pid, Reference

__all__ = ["IdAllocator", "MAX_U32"]

MAX_U32 = 0xFFFFFFFF


class IdAllocator:
    """Makes the pids and references of one node (``node``, ``creation``).

    Pid ids count from ``next_id`` up to 2**32-1, then the serial moves on and ids start
    again at 1; reference numbers count from ``next_ref``, spread over the three words of
    an Erlang reference (18 + 32 + 32 bits).
    """

    __slots__ = ("node", "creation", "_next_id", "_serial", "_next_ref")

    def __init__(self, node: Atom, creation: int, *, next_id: int = 1, serial: int = 0, next_ref: int = 1) -> None:
        self.node = node
        self.creation = creation
        self._next_id = next_id
        self._serial = serial
        self._next_ref = next_ref

    def new_pid(self) -> Pid:
        number = self._next_id
        if number > MAX_U32:
            self._serial += 1
            number = 1
        self._next_id = number + 1
        return Pid(self.node, number, self._serial, self.creation)

    def new_ref(self) -> Reference:
        n = self._next_ref
        self._next_ref = n + 1
        return Reference(self.node, self.creation, (n & 0x3FFFF, (n >> 18) & MAX_U32, (n >> 50) & MAX_U32))
