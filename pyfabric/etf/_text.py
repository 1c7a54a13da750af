"""Erlang term syntax: :func:`parse` text such as ``{ok, [1, 2.5, <<"x">>]}`` into the
Python values of ``docs/terms.md``, and :func:`format` such values back into text that
``erl_scan``/``erl_parse:parse_term/1`` read as the same term.

What :func:`parse` accepts is what ``erl_parse:parse_term/1`` accepts for literal terms:

- atoms (``ok``, ``'hello world'``, escapes as in Erlang), integers (``-12``, bignums,
  ``16#FF``, ``2#1010``, ``1_000``, ``$a``, ``$\\n``), floats (``2.5``, ``1.0e10``),
  strings ``"..."`` (a ``str``: in Erlang a string *is* a list of character codes, and a
  ``str`` encodes exactly like it), binaries ``<<"abc">>``, ``<<1,2,3:5>>``,
  ``<<"é"/utf8>>``, ``<<1:16/little>>``, ``<<2.5/float>>``, tuples, lists, improper
  lists ``[a, b | c]``, maps ``#{k => v}``, and ``fun M:F/A`` (an :class:`ExportFun`);
- and, only when the caller supplies them, variables (``bindings``: a name -> value
  mapping, e.g. the ones a REPL bound with ``P = ...``) and calls of named functions
  (``functions``: a name -> callable mapping, e.g. ``self()``), evaluated while parsing.

Pids, ports, references and local funs have no literal syntax in Erlang: their printed
forms (``<0.80.0>``, ``#Ref<...>``) are not parsed; reach them through ``bindings`` or
``functions``.

:func:`format` writes the compact form of ``io_lib:format("~0tp")`` except that it keeps
Python's distinction between ``str`` (printed as ``"..."``) and ``list`` (printed as
``[...]``): both are the same Erlang term. Floats are printed the way Erlang prints them
(the shortest text that reads back as the same float, ``1.0e10`` style).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ._errors import EncodeError
from ._text_lex import MAX_PARSE_DEPTH, RESERVED, ParseError
from ._text_parse import parse
from ._types import Atom, BitString, ExportFun, FrozenList, Fun, ImproperList, Pid, Port, Reference

__all__ = ["MAX_PARSE_DEPTH", "ParseError", "format", "format_atom", "format_float", "parse"]

# -- formatter ----------------------------------------------------------------------------------

_UNQUOTED = re.compile(r"[a-z\u00df-\u00f6\u00f8-\u00ff][A-Za-z0-9_@\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff]*\Z")
_ESCAPES = {8: "\\b", 127: "\\d", 27: "\\e", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v", 92: "\\\\"}


def _quote(text: str, quote: str) -> str:
    out = [quote]
    for ch in text:
        code = ord(ch)
        if ch == quote:
            out.append("\\" + quote)
        elif code in _ESCAPES:
            out.append(_ESCAPES[code])
        elif code < 32 or 0x7F <= code < 0xA0 or not ch.isprintable():
            out.append(f"\\x{{{code:X}}}")
        else:
            out.append(ch)
    out.append(quote)
    return "".join(out)


def format_atom(name: str) -> str:
    """An atom as Erlang writes it: bare when it can be, else in single quotes."""
    if _UNQUOTED.match(name) and name not in RESERVED:
        return name
    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise EncodeError(f"atom {name!r} contains a surrogate code point (Erlang atoms are Unicode text)")
    return _quote(name, "'")


def format_float(value: float) -> str:
    """``value`` as ``float_to_list(V, [short])`` and ``~p`` print it: the shortest digits
    that read back as ``value``, in fixed or scientific notation, whichever is shorter
    (fixed on a tie), and always scientific from 2**53 up."""
    if not math.isfinite(value):
        raise EncodeError(f"{value!r} has no Erlang form (Erlang floats are finite)")
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0.0"
    _s, digit_tuple, exp = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exp = int(exp) + len(digit_tuple) - len(digits)  # value = int(digits) * 10**exp
    sci_exp = exp + len(digits) - 1
    sci = f"{digits[0]}.{digits[1:] or '0'}e{sci_exp}"
    if sci_exp >= 0:
        whole = digits[: sci_exp + 1].ljust(sci_exp + 1, "0")
        fixed = f"{whole}.{digits[sci_exp + 1:] or '0'}"
    else:
        fixed = "0." + "0" * (-sci_exp - 1) + digits
    if abs(value) >= 2.0**53:  # OTP: beyond exact integers, always scientific
        return sign + sci
    return sign + (fixed if len(fixed) <= len(sci) else sci)


_PRINTABLE_BYTES = frozenset(range(32, 127)) | frozenset(_ESCAPES)


def _format_binary(data: bytes) -> str:
    if not data:
        return "<<>>"
    if all(b in _PRINTABLE_BYTES for b in data):
        return "<<" + _quote(data.decode("ascii"), '"') + ">>"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or ord(c) in _ESCAPES for c in text):
        return "<<" + _quote(text, '"') + "/utf8>>"
    return "<<" + ",".join(map(str, data)) + ">>"


def _format_bitstring(bs: BitString) -> str:
    if bs.bits == 8:
        return _format_binary(bs.data)
    head = ",".join(map(str, bs.data[:-1]))
    last = f"{bs.data[-1] >> (8 - bs.bits)}:{bs.bits}"
    return f"<<{head},{last}>>" if head else f"<<{last}>>"


def _erlang_printable(code: int) -> bool:
    """``io_lib:printable_unicode_list/1``'s test for one character."""
    return (
        32 <= code < 127
        or 0xA0 <= code < 0xD800
        or 0xDFFF < code < 0xFFFE
        or 0xFFFF < code <= 0x10FFFF
        or code in _ESCAPES
    )


def _format_str(text: str) -> str:
    if all(_erlang_printable(ord(c)) for c in text):
        return _quote(text, '"')
    # As Erlang prints a list that is not text (and a lone surrogate cannot be written in
    # a string literal at all): the same list, as integers.
    return "[" + ",".join(str(ord(c)) for c in text) + "]"


def _node_prefix(node: Atom, local: Atom | None) -> str:
    return "0" if local is None or node == local else format_atom(node.name)


def _scalar(term: Any, local: Atom | None) -> str | None:
    """The text of a term without children, or None for a container."""
    cls = term.__class__
    if cls is Atom:
        return format_atom(term.name)
    if cls is bool:
        return "true" if term else "false"
    if term is None:
        return "undefined"
    if cls is int or (isinstance(term, int) and not isinstance(term, bool)):
        return str(int(term))
    if isinstance(term, float):
        return format_float(float(term))
    if isinstance(term, str):
        return _format_str(str(term))
    if isinstance(term, (bytes, bytearray, memoryview)):
        return _format_binary(bytes(term))
    if cls is BitString:
        return _format_bitstring(term)
    if cls is Pid:
        return f"<{_node_prefix(term.node, local)}.{term.id}.{term.serial}>"
    if cls is Port:
        return f"#Port<{_node_prefix(term.node, local)}.{term.id}>"
    if cls is Reference:
        return f"#Ref<{_node_prefix(term.node, local)}.{'.'.join(str(i) for i in reversed(term.ids))}>"
    if cls is ExportFun:
        return f"fun {format_atom(term.module.name)}:{format_atom(term.function.name)}/{term.arity}"
    if cls is Fun:
        return f"#Fun<{format_atom(term.module.name)}.{term.index}.{term.old_uniq}>"
    return None


def format(term: Any, *, node: Atom | str | None = None) -> str:
    """``term`` as Erlang term text on one line (``~0tp`` style); :func:`parse` and
    ``erl_parse:parse_term/1`` read it back as the same term (pids, ports, references and
    local funs excepted: they have no literal syntax).

    Pids, ports and references print as Erlang prints its own ones (``<0.84.0>``,
    ``#Port<0.5>``, ``#Ref<0.1.2.3>``): those of ``node`` (default: every node) with a
    ``0``, those of other nodes with the node's name where Erlang would show its index.

    Raises :class:`EncodeError` for values with no Erlang form (sets, objects, inf/nan).
    Deeply nested terms are fine (the formatter does not recurse).
    """
    local = Atom(node) if isinstance(node, str) else node
    out: list[str] = []
    # A stack of pending work: str pieces to emit, or ("term", value, path) to expand.
    stack: list[Any] = [(term, "")]
    while stack:
        item = stack.pop()
        if item.__class__ is str:
            out.append(item)
            continue
        value, path = item
        text = _scalar(value, local)
        if text is not None:
            out.append(text)
            continue
        pieces: list[Any]
        if isinstance(value, tuple):
            pieces = ["{", *_joined(value, path), "}"]
        elif isinstance(value, (list, FrozenList)):
            pieces = ["[", *_joined(list(value), path), "]"]
        elif isinstance(value, ImproperList):
            pieces = ["[", *_joined(list(value.elements), path), "|", (value.tail, path + "[tail]"), "]"]
        elif isinstance(value, Mapping):
            pieces = ["#{"]
            for i, (k, v) in enumerate(value.items()):
                if i:
                    pieces.append(",")
                pieces += [(k, path + "{map key}"), " => ", (v, path + f"[{k!r}]")]
            pieces.append("}")
        else:
            raise EncodeError(f"cannot format {type(value).__name__} as an Erlang term", path)
        stack.extend(reversed(pieces))
    return "".join(out)


def _joined(items: list[Any] | tuple[Any, ...], path: str) -> list[Any]:
    pieces: list[Any] = []
    for i, item in enumerate(items):
        if i:
            pieces.append(",")
        pieces.append((item, f"{path}[{i}]"))
    return pieces
