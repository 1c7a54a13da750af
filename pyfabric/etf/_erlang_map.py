"""Erlang's exact term equality (``=:=``) on Python values, and :class:`ErlangMap`.

Python equality is looser than Erlang's for map keys: ``1 == 1.0``, ``(1,) == (1.0,)``,
``[1] == [1.0]`` and ``True == 1``, yet in Erlang each pair is two distinct keys. A map
holding such keys cannot be a ``dict``; the decoder (and :func:`pyfabric.etf.parse`)
returns an :class:`ErlangMap` for it, and only for it.

:func:`erlang_key` maps a value to a hashable canonical form whose Python equality is
Erlang's ``=:=`` (OTP 25: ``0.0 =:= -0.0``, so those are one key, as in Erlang). It is
iterative: deep values never raise ``RecursionError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ._types import Atom, BitString, ExportFun, FrozenDict, FrozenList, Fun, ImproperList, Pid, Port, Reference

__all__ = ["ErlangMap", "erlang_key", "erlang_equal"]

_TRUE = Atom("true")
_FALSE = Atom("false")
_UNDEFINED = Atom("undefined")

# Tags of the canonical forms. A canonical form is an int (an Erlang integer), an
# Atom or one of the value types below, or a tuple starting with one of these strings
# (no raw str ever appears in a canonical form, so the tags cannot be confused).
_FLOAT = "f"
_LIST = "l"
_IMPROPER = "il"
_TUPLE = "t"
_MAP = "m"
_BINARY = "b"

_SELF = frozenset({Atom, Pid, Port, Reference, BitString, ExportFun, Fun})
# Subclasses of these are read as the base, as the encoder does.
_BASES: tuple[type, ...] = (bool, int, float, str, bytes, tuple, list, dict)


def _split(value: Any) -> tuple[str | None, Any]:
    """``(None, canonical)`` for a leaf, ``(tag, children)`` for a container."""
    t = value.__class__
    if t is int:
        return None, value
    if t in _SELF:
        return None, value
    if t is tuple:
        return _TUPLE, value
    if t is list or t is FrozenList:
        return _LIST, value
    if t is str:  # a charlist
        return None, (_LIST, tuple(map(ord, value)))
    if t is float:
        return None, (_FLOAT, value)
    if t is dict or t is FrozenDict:
        return _MAP, [x for pair in value.items() for x in pair]
    if t is ErlangMap:
        return _MAP, [x for pair in value.pairs for x in pair]
    if t is bool:
        return None, _TRUE if value else _FALSE
    if value is None:
        return None, _UNDEFINED
    if t is bytes:
        return None, (_BINARY, value)
    if t is bytearray or t is memoryview:
        return None, (_BINARY, bytes(value))
    if t is ImproperList:
        return _IMPROPER, (*value.elements, value.tail)
    for base in _BASES:
        if isinstance(value, base):
            return _split(base(value))
    raise TypeError(f"a value of type {t.__module__}.{t.__qualname__} has no Erlang form: {value!r:.60}")


def _build(tag: str, items: list[Any]) -> Any:
    if tag == _MAP:
        return (_MAP, frozenset(zip(items[0::2], items[1::2], strict=True)))
    return (tag, tuple(items))


def erlang_key(value: Any) -> Any:
    """A hashable form of ``value``: two values have equal forms iff Erlang's ``=:=`` holds.

    ``1`` and ``1.0`` differ, ``"ab"`` and ``[97, 98]`` are equal, ``True`` is the atom
    ``true``. Raises ``TypeError`` for a value with no Erlang form.
    """
    tag, payload = _split(value)
    if tag is None:
        return payload
    stack: list[tuple[str, Iterator[Any], list[Any]]] = [(tag, iter(payload), [])]
    while True:
        tag, children, done = stack[-1]
        for child in children:
            child_tag, child_payload = _split(child)
            if child_tag is None:
                done.append(child_payload)
            else:
                stack.append((child_tag, iter(child_payload), []))
                break
        else:
            stack.pop()
            result = _build(tag, done)
            if not stack:
                return result
            stack[-1][2].append(result)


def erlang_equal(a: Any, b: Any) -> bool:
    """Erlang's exact equality ``A =:= B`` on two Python values."""
    return bool(erlang_key(a) == erlang_key(b))


class ErlangMap(Mapping[Any, Any]):
    """An immutable Erlang map whose keys are compared with Erlang's ``=:=``.

    ``ErlangMap([(1, a), (1.0, b)])`` holds two keys, as ``#{1 => a, 1.0 => b}`` does in
    Erlang. The decoder returns it only for maps that a ``dict`` cannot hold; it encodes
    as MAP_EXT in its pairs' order, so decoding then encoding is byte-exact.

    Lookup uses Erlang equality (``m[1]`` is ``a``, ``m[1.0]`` is ``b``); iteration yields
    the keys in order; :attr:`pairs` is the ``(key, value)`` tuple. It equals another
    ``ErlangMap`` or a ``dict`` with the same pairs under ``=:=`` (never a ``FrozenDict``,
    whose Python equality is looser), and is hashable.
    """

    __slots__ = ("_pairs", "_index", "_hash")
    _pairs: tuple[tuple[Any, Any], ...]
    _index: dict[Any, int]
    _hash: int | None

    def __init__(self, pairs: Iterable[tuple[Any, Any]] | Mapping[Any, Any] = ()) -> None:
        if isinstance(pairs, Mapping):
            pairs = pairs.pairs if isinstance(pairs, ErlangMap) else pairs.items()
        items = tuple((key, value) for key, value in pairs)
        index: dict[Any, int] = {}
        for i, (key, _) in enumerate(items):
            form = erlang_key(key)
            if form in index:
                raise ValueError(
                    f"duplicate map key {key!r:.60}: keys must be distinct under Erlang's =:= "
                    "(1 and 1.0 are distinct, \"ab\" and [97, 98] are not)"
                )
            index[form] = i
        object.__setattr__(self, "_pairs", items)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_hash", None)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("ErlangMap is immutable")

    @property
    def pairs(self) -> tuple[tuple[Any, Any], ...]:
        """The ``(key, value)`` pairs, in order."""
        return self._pairs

    def __getitem__(self, key: Any) -> Any:
        try:
            i = self._index[erlang_key(key)]
        except TypeError:
            raise KeyError(key) from None
        return self._pairs[i][1]

    def __contains__(self, key: object) -> bool:
        try:
            return erlang_key(key) in self._index
        except TypeError:
            return False

    def __iter__(self) -> Iterator[Any]:
        return (key for key, _ in self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is ErlangMap or other.__class__ is dict:
            return bool(erlang_key(self) == erlang_key(other))
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = hash((ErlangMap, erlang_key(self)))
            object.__setattr__(self, "_hash", h)
        return h

    def __repr__(self) -> str:
        return f"ErlangMap({list(self._pairs)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ErlangMap, (self._pairs,))
