"""Python value types for Erlang terms that have no natural Python equivalent.

Every type here is immutable, hashable (when its contents are) and compares by value.
:class:`Atom` is deliberately *not* a ``str`` subclass, so ``Atom("ok") != "ok"`` and
both can be keys of the same dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Atom",
    "Pid",
    "Port",
    "Reference",
    "ImproperList",
    "BitString",
    "Fun",
    "ExportFun",
    "FrozenList",
    "FrozenDict",
]

_ATOM_INTERN: dict[str, Atom] = {}
# Interning is bounded: hostile input may name millions of distinct atoms, and an
# unbounded cache would be a memory leak (Erlang's atom table problem). Atoms created
# after the cache is full are simply not interned; equality is by name anyway.
_ATOM_INTERN_MAX = 100_000


class Atom:
    """An Erlang atom, such as ``ok`` or ``'hello world'``.

    ``Atom("ok")`` is cheap (interned) and immutable; compare with ``==``. The name is
    any ``str`` of at most 255 characters (Erlang's limit).
    """

    __slots__ = ("name", "_hash", "_ext1", "_ext2")
    name: str
    _hash: int
    _ext1: bytes | None
    _ext2: bytes | None

    def __new__(cls, name: str) -> Atom:
        atom = _ATOM_INTERN.get(name)
        if atom is not None:
            return atom
        if type(name) is not str:
            if isinstance(name, str):
                name = str(name)
            else:
                raise TypeError(f"Atom name must be a str, got {type(name).__name__}")
        if len(name) > 255:
            raise ValueError(f"Atom name too long: {len(name)} characters (Erlang's maximum is 255)")
        atom = object.__new__(cls)
        setter = object.__setattr__
        setter(atom, "name", name)
        setter(atom, "_hash", hash((Atom, name)))
        setter(atom, "_ext1", None)  # encoder cache: bytes for minor_version 0/1
        setter(atom, "_ext2", None)  # encoder cache: bytes for minor_version 2
        if len(_ATOM_INTERN) < _ATOM_INTERN_MAX:
            _ATOM_INTERN[name] = atom
        return atom

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Atom is immutable")

    def __delattr__(self, key: str) -> None:
        raise AttributeError("Atom is immutable")

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is Atom:
            return self.name == other.name
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return self._hash

    def __lt__(self, other: Atom) -> bool:
        if other.__class__ is not Atom:
            return NotImplemented
        return self.name < other.name

    def __repr__(self) -> str:
        return f"Atom({self.name!r})"

    def __str__(self) -> str:
        return self.name

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (Atom, (self.name,))

    def __copy__(self) -> Atom:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Atom:
        return self


def _check_uint(owner: str, field: str, value: int, bits: int) -> None:
    if type(value) is not int or not 0 <= value < (1 << bits):
        raise ValueError(f"{owner}.{field} must be an int in 0..2**{bits}-1, got {value!r}")


def _check_node(owner: str, node: object) -> None:
    if node.__class__ is not Atom:
        raise TypeError(f"{owner}.node must be an Atom, got {type(node).__name__}")


@dataclass(frozen=True)
class Pid:
    """An Erlang process identifier ``<node.id.serial>`` (encoded as NEW_PID_EXT)."""

    # Slots by hand (not ``slots=True``): one more slot, not a field, keeps the hash.
    __slots__ = ("node", "id", "serial", "creation", "_hash")
    node: Atom
    id: int
    serial: int
    creation: int

    def __post_init__(self) -> None:
        _check_node("Pid", self.node)
        _check_uint("Pid", "id", self.id, 32)
        _check_uint("Pid", "serial", self.serial, 32)
        _check_uint("Pid", "creation", self.creation, 32)
        object.__setattr__(self, "_hash", hash((self.id, self.serial, self.creation, self.node._hash)))

    def __reduce__(self) -> tuple[type, tuple[Atom, int, int, int]]:
        return (Pid, (self.node, self.id, self.serial, self.creation))  # the hash is this process's

    # Written out (the dataclass would generate the same semantics): pids are dict keys on
    # every message's path (process table, export and proxy tables), and the generated
    # methods build a tuple of the fields and call back into Atom for each lookup.
    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined,no-any-return]  # the slot is no field

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if other.__class__ is not Pid:
            return NotImplemented
        o: Pid = other
        return (
            self.id == o.id
            and self.serial == o.serial
            and self.creation == o.creation
            and (self.node is o.node or self.node == o.node)
        )


@dataclass(frozen=True, slots=True)
class Port:
    """An Erlang port identifier (NEW_PORT_EXT, or V4_PORT_EXT when ``id`` needs 64 bits)."""

    node: Atom
    id: int
    creation: int

    def __post_init__(self) -> None:
        _check_node("Port", self.node)
        _check_uint("Port", "id", self.id, 64)
        _check_uint("Port", "creation", self.creation, 32)


@dataclass(frozen=True, slots=True)
class Reference:
    """An Erlang reference (encoded as NEWER_REFERENCE_EXT); ``ids`` has 1 to 5 words."""

    node: Atom
    creation: int
    ids: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_node("Reference", self.node)
        _check_uint("Reference", "creation", self.creation, 32)
        ids = self.ids
        if type(ids) is not tuple:
            ids = tuple(ids)
            object.__setattr__(self, "ids", ids)
        if not 1 <= len(ids) <= 5:
            raise ValueError(f"Reference.ids must have 1 to 5 words, got {len(ids)}")
        for word in ids:
            _check_uint("Reference", "ids[]", word, 32)


@dataclass(frozen=True, slots=True)
class ImproperList:
    """A list whose final tail is not ``[]``, e.g. Erlang ``[1, 2 | tail]``.

    ``elements`` (a non-empty tuple) are the heads, ``tail`` is the final tail.
    """

    elements: tuple[Any, ...]
    tail: Any

    def __post_init__(self) -> None:
        if type(self.elements) is not tuple:
            object.__setattr__(self, "elements", tuple(self.elements))
        if not self.elements:
            raise ValueError("ImproperList needs at least one element (otherwise it is just the tail)")
        if isinstance(self.tail, list) and not self.tail:
            raise ValueError("ImproperList tail [] makes a proper list: use a list instead")


@dataclass(frozen=True, slots=True)
class BitString:
    """A bitstring whose size is not a whole number of bytes (BIT_BINARY_EXT).

    ``data`` holds the bytes, ``bits`` (1..8) how many high bits of the last byte are
    used; the unused low bits are always zero (like Erlang, they are cleared).
    """

    data: bytes
    bits: int

    def __post_init__(self) -> None:
        data = self.data
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"BitString.data must be bytes, got {type(data).__name__}")
            data = bytes(data)
        if type(self.bits) is not int or not 1 <= self.bits <= 8:
            raise ValueError(f"BitString.bits must be 1..8, got {self.bits!r}")
        if not data:
            raise ValueError("BitString.data must not be empty")
        mask = (0xFF << (8 - self.bits)) & 0xFF
        if data[-1] & ~mask:
            data = data[:-1] + bytes((data[-1] & mask,))
        object.__setattr__(self, "data", data)

    @property
    def bit_size(self) -> int:
        """Total number of bits."""
        return (len(self.data) - 1) * 8 + self.bits


@dataclass(frozen=True, slots=True)
class ExportFun:
    """An external fun ``fun Module:Function/Arity`` (EXPORT_EXT)."""

    module: Atom
    function: Atom
    arity: int

    def __post_init__(self) -> None:
        if self.module.__class__ is not Atom or self.function.__class__ is not Atom:
            raise TypeError("ExportFun.module and .function must be Atoms")
        _check_uint("ExportFun", "arity", self.arity, 8)


class Fun:
    """A local fun (NEW_FUN_EXT) received from Erlang; opaque and immutable.

    It keeps the exact encoded bytes (``raw``, everything after the tag byte) and is
    re-encoded from them unchanged, whatever ``minor_version`` is asked for; the decoded
    fields are read-only conveniences. Two funs are equal when their code identity,
    creator pid and free variables are equal.
    Funs can only come from decoding (with ``safe=False``): Python cannot create one.
    """

    __slots__ = (
        "raw",
        "arity",
        "uniq",
        "index",
        "module",
        "old_index",
        "old_uniq",
        "pid",
        "free_vars",
    )
    raw: bytes
    arity: int
    uniq: bytes
    index: int
    module: Atom
    old_index: int
    old_uniq: int
    pid: Pid
    free_vars: tuple[Any, ...]

    def __init__(self, **fields: Any) -> None:
        for name in self.__slots__:
            object.__setattr__(self, name, fields.pop(name))
        if fields:
            raise TypeError(f"unknown Fun fields: {sorted(fields)}")

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Fun is immutable")

    def _identity(self) -> tuple[Any, ...]:
        return (self.module, self.index, self.uniq, self.arity, self.old_index, self.old_uniq, self.pid)

    def __eq__(self, other: object) -> bool:
        # Like Erlang: the same code and environment, however it was encoded
        # (raw bytes differ with minor_version, e.g. ATOM_EXT vs SMALL_ATOM_UTF8_EXT).
        if type(other) is Fun:
            return self.raw == other.raw or (
                self._identity() == other._identity() and self.free_vars == other.free_vars
            )
        return NotImplemented

    def __hash__(self) -> int:
        return hash((Fun, self._identity()))

    def __repr__(self) -> str:
        return (
            f"Fun(module={self.module!r}, index={self.index}, arity={self.arity}, "
            f"uniq={self.uniq.hex()}, free_vars={len(self.free_vars)})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_make_fun, (tuple(getattr(self, name) for name in self.__slots__),))


def _make_fun(values: tuple[Any, ...]) -> Fun:
    return Fun(**dict(zip(Fun.__slots__, values, strict=True)))


class FrozenList:
    """An immutable, hashable proper list.

    The decoder produces it instead of ``list`` inside map keys (a Python dict key must
    be hashable); it encodes exactly like a list and compares equal to an equal list.
    """

    __slots__ = ("_items", "_hash")
    _items: tuple[Any, ...]
    _hash: int | None

    def __init__(self, items: Iterable[Any] = ()) -> None:
        object.__setattr__(self, "_items", tuple(items))
        object.__setattr__(self, "_hash", None)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("FrozenList is immutable")

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: Any) -> Any:
        return self._items[index]

    def __eq__(self, other: object) -> bool:
        if type(other) is FrozenList:
            return self._items == other._items
        if isinstance(other, list):
            return list(self._items) == other
        return NotImplemented

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = hash((FrozenList, self._items))
            object.__setattr__(self, "_hash", h)
        return h

    def __repr__(self) -> str:
        return f"FrozenList({list(self._items)!r})"

    def tolist(self) -> list[Any]:
        """A plain ``list`` copy."""
        return list(self._items)


class FrozenDict(Mapping[Any, Any]):
    """An immutable, hashable map (insertion order kept).

    The decoder produces it instead of ``dict`` inside map keys; it encodes exactly like
    a dict and compares equal to an equal dict.
    """

    __slots__ = ("_map", "_hash")
    _map: dict[Any, Any]
    _hash: int | None

    def __init__(self, items: Any = ()) -> None:
        object.__setattr__(self, "_map", dict(items))
        object.__setattr__(self, "_hash", None)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("FrozenDict is immutable")

    def __getitem__(self, key: Any) -> Any:
        return self._map[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __eq__(self, other: object) -> bool:
        if type(other) is FrozenDict:
            return self._map == other._map
        if isinstance(other, dict):
            return self._map == other
        return NotImplemented

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = hash((FrozenDict, frozenset(self._map.items())))
            object.__setattr__(self, "_hash", h)
        return h

    def __repr__(self) -> str:
        return f"FrozenDict({self._map!r})"

    def todict(self) -> dict[Any, Any]:
        """A plain ``dict`` copy."""
        return dict(self._map)
