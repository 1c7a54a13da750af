"""Selective-receive patterns: :data:`ANY` and the compiler from a pattern to a predicate.

A pattern is compiled once per ``receive`` into a plain function ``msg -> bool``, so a
scan over a long mailbox costs one call per message and no re-interpretation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from pyfabric.etf import FrozenList

__all__ = ["ANY", "Matcher", "compile_match"]

Matcher = Callable[[Any], bool]


class _AnyType:
    """The type of :data:`ANY` (a singleton)."""

    __slots__ = ()
    _instance: _AnyType | None = None

    def __new__(cls) -> _AnyType:
        if cls._instance is None:
            cls._instance = object.__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ANY"

    def __reduce__(self) -> str:
        return "ANY"


ANY: Final = _AnyType()
"""Wildcard in a receive pattern: matches any value (Erlang's ``_``)."""


def _always(msg: Any) -> bool:
    return True


def compile_match(match: Any) -> Matcher | None:
    """Turn a ``receive(match=...)`` argument into a predicate (``None``: take the first message).

    - ``None`` or :data:`ANY`: any message (returns ``None``, the fast path);
    - a type: ``isinstance(msg, match)``;
    - any other callable: used as the predicate itself;
    - anything else: a pattern, see :func:`_compile_pattern`.
    """
    if match is None or match is ANY:
        return None
    if isinstance(match, type):
        return _compile_pattern(match)
    if callable(match):
        return match  # type: ignore[no-any-return]
    return _compile_pattern(match)


def _compile_pattern(pattern: Any) -> Matcher:
    """Compile a template into a predicate.

    - :data:`ANY` matches anything;
    - a type matches by ``isinstance``;
    - a tuple matches a tuple of the same length, element by element;
    - a list matches a list (or :class:`~pyfabric.etf.FrozenList`) of the same length,
      element by element;
    - a dict (any mapping) matches a mapping that has every key of the pattern, with
      each value matching; other keys are allowed;
    - ``bool``, ``int`` and ``float`` compare exactly like Erlang's ``=:=``: ``1`` does not
      match ``1.0`` nor ``True``;
    - any other value matches by equality (``Atom("ok")`` matches only that atom, never
      the string ``"ok"``).

    Callables nested inside a template are compared by equality, not called.
    """
    if pattern is ANY:
        return _always
    if isinstance(pattern, type):
        cls = pattern
        return lambda msg: isinstance(msg, cls)
    if isinstance(pattern, tuple):
        return _compile_sequence(pattern, tuple)
    if isinstance(pattern, (list, FrozenList)):
        return _compile_sequence(pattern, (list, FrozenList))
    if isinstance(pattern, Mapping):
        return _compile_mapping(pattern)
    if pattern.__class__ is bool:
        value = pattern
        return lambda msg: msg is value
    if isinstance(pattern, int) and not isinstance(pattern, bool):
        number = pattern
        return lambda msg: isinstance(msg, int) and msg.__class__ is not bool and msg == number
    if isinstance(pattern, float):
        real = pattern
        return lambda msg: isinstance(msg, float) and msg == real
    constant = pattern
    return lambda msg: msg is constant or bool(constant == msg)


def _compile_sequence(
    pattern: Any, kinds: type[Sequence[Any]] | tuple[type[Sequence[Any]] | type[FrozenList], ...]
) -> Matcher:
    subs = tuple(_compile_pattern(element) for element in pattern)
    size = len(subs)

    def match_sequence(msg: Any) -> bool:
        if not isinstance(msg, kinds) or len(msg) != size:
            return False
        for sub, element in zip(subs, msg, strict=True):
            if not sub(element):
                return False
        return True

    return match_sequence


def _compile_mapping(pattern: Mapping[Any, Any]) -> Matcher:
    items = tuple((key, _compile_pattern(value)) for key, value in pattern.items())

    def match_mapping(msg: Any) -> bool:
        if not isinstance(msg, Mapping):
            return False
        for key, sub in items:
            try:
                value = msg[key]
            except KeyError:
                return False
            if not sub(value):
                return False
        return True

    return match_mapping
