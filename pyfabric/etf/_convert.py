"""Helpers between Python text and the ways Erlang represents text.

Erlang has no string type: ``"abc"`` is the list ``[97, 98, 99]`` (a *charlist*), and
text is also commonly carried as a UTF-8 *binary* (``<<"abc"/utf8>>``). These helpers
make the intended representation explicit.
"""

from __future__ import annotations

from typing import Any

from ._types import FrozenList

__all__ = ["charlist_to_str", "str_to_charlist", "binary_to_str", "str_to_binary"]


def charlist_to_str(value: Any) -> str:
    """Text of an Erlang charlist as decoded (``str``, ``list[int]`` or ``[]``).

    Accepts what the decoder returns for a string: a ``str`` (from STRING_EXT), a list
    of code points (from LIST_EXT, or STRING_EXT with ``strings="list"``) or ``[]``.
    Raises ``ValueError`` if an element is not a valid Unicode code point.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, FrozenList)):
        try:
            return "".join(map(chr, value))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"not a charlist: {exc}") from None
    raise ValueError(f"not a charlist: {type(value).__name__}")


def str_to_charlist(text: str) -> list[int]:
    """The list of code points of ``text``; encodes exactly like ``text`` itself.

    Useful when a value must be a *list* in Python (for example to append to it).
    """
    return [ord(ch) for ch in text]


def binary_to_str(value: bytes | bytearray | memoryview, errors: str = "strict") -> str:
    """Decode an Erlang UTF-8 binary (``<<"text"/utf8>>``) to ``str``."""
    return bytes(value).decode("utf-8", errors)


def str_to_binary(text: str) -> bytes:
    """Encode ``text`` as the UTF-8 binary Erlang code expects for ``<<"text"/utf8>>``."""
    return text.encode("utf-8")
