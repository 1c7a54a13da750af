"""The parser of Erlang term syntax: :func:`parse` (see :mod:`pyfabric.etf._text`)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

from ._erlang_map import ErlangMap, erlang_key
from ._text_lex import MAX_PARSE_DEPTH, Lexer, ParseError, Token
from ._types import Atom, BitString, ExportFun, FrozenDict, FrozenList, ImproperList

__all__ = ["Functions", "Parser", "parse"]

# -- parser -------------------------------------------------------------------------------------

Functions = Mapping[str, Callable[..., Any]]


class Parser:
    """Recursive-descent parser over the tokens of ``text`` (also used by the CLI's REPL,
    which adds ``=`` and ``!`` on top of :meth:`term`)."""

    def __init__(self, text: str, bindings: Mapping[str, Any] | None = None, functions: Functions | None = None) -> None:
        self.lexer = Lexer(text)
        self._tokens = self.lexer.tokens()
        self.bindings = bindings if bindings is not None else {}
        self.functions = functions if functions is not None else {}
        self.tok = next(self._tokens)
        self.depth = 0

    def advance(self) -> Token:
        tok = self.tok
        if tok.kind != "eof":
            self.tok = next(self._tokens)
        return tok

    def error(self, message: str, tok: Token | None = None, incomplete: bool | None = None) -> ParseError:
        tok = tok or self.tok
        if incomplete is None:
            incomplete = tok.kind == "eof"
        return self.lexer.error(message, tok.pos, incomplete)

    def is_punct(self, value: str) -> bool:
        return self.tok.kind == "punct" and self.tok.value == value

    def expect(self, value: str, context: str) -> Token:
        if not self.is_punct(value):
            raise self.error(f"expected '{value}' {context}, found {describe(self.tok)}")
        return self.advance()

    def term(self) -> Any:
        tok = self.tok
        kind = tok.kind
        if kind == "atom":
            self.advance()
            if self.is_punct("("):
                return self._call(tok)
            return Atom(self._atom_name(tok))
        if kind in ("int", "float", "char"):
            self.advance()
            return tok.value
        if kind == "string":
            return self._strings()
        if kind == "var":
            self.advance()
            if tok.value.startswith("_"):
                raise self.error(f"variable {tok.value} cannot be used in a term", tok)
            if tok.value not in self.bindings:
                raise self.error(f"variable {tok.value} is unbound", tok, incomplete=False)
            return self.bindings[tok.value]
        if kind == "punct":
            if tok.value in ("-", "+"):
                self.advance()
                num = self.tok
                if num.kind not in ("int", "float", "char"):
                    raise self.error(f"'{tok.value}' must be followed by a number, found {describe(num)}")
                self.advance()
                return -num.value if tok.value == "-" else num.value
            opener = {"{": self._tuple, "[": self._list, "#{": self._map, "<<": self._binary}.get(tok.value)
            if opener is not None:
                self.depth += 1
                if self.depth > MAX_PARSE_DEPTH:
                    raise self.error(f"terms nested deeper than {MAX_PARSE_DEPTH} levels", tok, incomplete=False)
                self.advance()
                try:
                    return opener(tok)
                finally:
                    self.depth -= 1
        if kind == "reserved" and tok.value == "fun":
            return self._fun()
        if kind == "reserved":
            raise self.error(f"'{tok.value}' is a reserved word: quote it ('{tok.value}') to make it an atom")
        if kind == "eof":
            raise self.error("unexpected end of input: a term was expected")
        raise self.error(f"a term was expected, found {describe(tok)}")

    def _atom_name(self, tok: Token) -> str:
        if len(tok.value) > 255:
            raise self.error(f"atom of {len(tok.value)} characters (Erlang's maximum is 255)", tok, incomplete=False)
        return str(tok.value)

    def _strings(self) -> str:
        parts = []
        while self.tok.kind == "string":  # "ab" "cd" is "abcd", as in Erlang
            parts.append(self.advance().value)
        return "".join(parts)

    def _call(self, name_tok: Token) -> Any:
        self.advance()  # (
        args = []
        if not self.is_punct(")"):
            args.append(self.term())
            while self.is_punct(","):
                self.advance()
                args.append(self.term())
        self.expect(")", f"to close the arguments of {name_tok.value}(...)")
        fn = self.functions.get(f"{name_tok.value}/{len(args)}") or self.functions.get(name_tok.value)
        if fn is None:
            known = ", ".join(sorted(self.functions)) or "none here"
            raise self.error(
                f"unknown function {name_tok.value}/{len(args)} (a term cannot contain calls; functions known: {known})",
                name_tok,
                incomplete=False,
            )
        try:
            return fn(*args)
        except ParseError:
            raise
        except TypeError as exc:
            raise self.error(f"{name_tok.value}/{len(args)}: {exc}", name_tok, incomplete=False) from exc

    def _tuple(self, _open: Token) -> tuple[Any, ...]:
        items = self._items("}", "tuple")
        return tuple(items)

    def _items(self, close: str, what: str) -> list[Any]:
        items: list[Any] = []
        if self.is_punct(close):
            self.advance()
            return items
        while True:
            items.append(self.term())
            if self.is_punct(","):
                self.advance()
                continue
            self.expect(close, f"or ',' in {what}")
            return items

    def _list(self, _open: Token) -> Any:
        items: list[Any] = []
        if self.is_punct("]"):
            self.advance()
            return items
        while True:
            items.append(self.term())
            if self.is_punct(","):
                self.advance()
                continue
            if self.is_punct("|"):
                self.advance()
                tail = self.term()
                self.expect("]", "after the tail of an improper list")
                return _cons(items, tail)
            self.expect("]", "or ',' or '|' in list")
            return items

    def _map(self, _open: Token) -> dict[Any, Any] | ErlangMap:
        if self.is_punct("}"):
            self.advance()
            return {}
        pairs: list[tuple[Any, Any]] = []
        seen: dict[Any, int] = {}  # Erlang identity (=:=) of each key -> its place in pairs
        while True:
            key = freeze(self.term())
            if self.is_punct(":="):
                raise self.error("':=' only updates existing keys: a map literal uses '=>'")
            self.expect("=>", "after a map key")
            value = self.term()
            identity = erlang_key(key)
            place = seen.get(identity)
            if place is None:
                seen[identity] = len(pairs)
                pairs.append((key, value))
            else:  # a repeated key: the last value wins, the first key stays, as in Erlang
                pairs[place] = (pairs[place][0], value)
            if self.is_punct(","):
                self.advance()
                continue
            self.expect("}", "or ',' in map")
            result = dict(pairs)
            # Keys distinct in Erlang but equal in Python (1 and 1.0): a dict cannot hold them.
            return result if len(result) == len(pairs) else ErlangMap(pairs)

    def _fun(self) -> ExportFun:
        self.advance()  # fun
        module = self.tok  # Erlang prints `fun m:after/0` with reserved words bare: accept them
        if module.kind not in ("atom", "reserved"):
            raise self.error("only 'fun Module:Function/Arity' can be written as a term")
        self.advance()
        self.expect(":", "in fun Module:Function/Arity")
        function = self.tok
        if function.kind not in ("atom", "reserved"):
            raise self.error("expected a function name in fun Module:Function/Arity")
        self.advance()
        self.expect("/", "in fun Module:Function/Arity")
        arity = self.tok
        if arity.kind != "int" or not 0 <= arity.value <= 255:
            raise self.error("expected an arity 0..255 in fun Module:Function/Arity")
        self.advance()
        return ExportFun(Atom(module.value), Atom(function.value), arity.value)

    def _binary(self, _open: Token) -> bytes | BitString:
        bits = _Bits()
        if self.is_punct(">>"):
            self.advance()
            return b""
        while True:
            self._segment(bits)
            if self.is_punct(","):
                self.advance()
                continue
            self.expect(">>", "or ',' in binary")
            return bits.value()

    def _segment(self, bits: _Bits) -> None:
        tok = self.tok
        if tok.kind == "string":
            value: Any = self._strings()
        elif tok.kind in ("int", "float", "char"):
            value = self.advance().value
        elif tok.kind == "punct" and tok.value in ("-", "+"):
            value = self.term()
        else:
            raise self.error(f"a binary segment is a number or a string, found {describe(tok)}")
        size = None
        if self.is_punct(":"):
            self.advance()
            size_tok = self.tok
            if size_tok.kind != "int":
                raise self.error(f"a segment size is an integer, found {describe(size_tok)}")
            size = self.advance().value
        specs = []
        if self.is_punct("/"):
            self.advance()
            while True:
                spec = self.tok
                if spec.kind != "atom":
                    raise self.error(f"expected a type specifier, found {describe(spec)}")
                self.advance()
                if spec.value == "unit" and self.is_punct(":"):
                    self.advance()
                    unit = self.tok
                    if unit.kind != "int" or not 1 <= unit.value <= 256:
                        raise self.error("unit:N needs N in 1..256")
                    self.advance()
                    specs.append(("unit", unit.value))
                else:
                    specs.append((spec.value, None))
                if not self.is_punct("-"):
                    break
                self.advance()
        try:
            if isinstance(value, str):
                for ch in value:
                    bits.add(ord(ch), size, specs)
            else:
                bits.add(value, size, specs)
        except (ValueError, TypeError) as exc:
            raise self.error(str(exc), tok, incomplete=False) from None

    def finish(self, allow_dot: bool = True) -> None:
        if allow_dot and self.tok.kind == "dot":
            self.advance()
        if self.tok.kind != "eof":
            raise self.error(f"unexpected {describe(self.tok)} after the term")


def describe(tok: Token) -> str:
    if tok.kind == "eof":
        return "the end of the input"
    if tok.kind == "dot":
        return "'.'"
    if tok.kind == "string":
        return "a string"
    return f"'{tok.value}'" if tok.kind in ("punct", "reserved") else f"{tok.kind} {tok.value!r}"


def _cons(heads: list[Any], tail: Any) -> Any:
    if isinstance(tail, list):
        return heads + tail
    if isinstance(tail, str):  # [$a | "bc"] is "abc"
        return heads + [ord(c) for c in tail]
    if isinstance(tail, ImproperList):
        return ImproperList(tuple(heads) + tail.elements, tail.tail)
    return ImproperList(tuple(heads), tail)


def freeze(value: Any) -> Any:
    """``value`` with lists and maps turned into FrozenList / FrozenDict (map keys)."""
    if isinstance(value, list):
        return FrozenList(freeze(v) for v in value)
    if isinstance(value, dict):
        return FrozenDict((freeze(k), freeze(v)) for k, v in value.items())
    if isinstance(value, ErlangMap):
        return ErlangMap((freeze(k), freeze(v)) for k, v in value.pairs)
    if isinstance(value, tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, ImproperList):
        return ImproperList(tuple(freeze(v) for v in value.elements), freeze(value.tail))
    return value


_SEGMENT_TYPES = frozenset({"integer", "float", "utf8", "utf16", "utf32", "binary", "bytes", "bitstring", "bits"})


class _Bits:
    """Bits of a binary being built: whole bytes in ``out``, fewer than 8 pending in ``acc``
    (so a long binary costs linear time, not a shift of an ever larger integer per segment)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.nbits = 0

    def push(self, value: int, size: int) -> None:
        acc = (self.acc << size) | (value & ((1 << size) - 1))
        nbits = self.nbits + size
        if nbits >= 8:
            rest = nbits & 7
            self.out += (acc >> rest).to_bytes(nbits >> 3, "big")
            acc &= (1 << rest) - 1
            nbits = rest
        self.acc, self.nbits = acc, nbits

    def add(self, value: Any, size: int | None, specs: list[tuple[str, int | None]]) -> None:
        names = [name for name, _ in specs]
        types = [n for n in names if n in _SEGMENT_TYPES]
        unknown = [n for n in names if n not in _SEGMENT_TYPES and n not in ("big", "little", "signed", "unsigned", "unit")]
        if unknown:
            raise ValueError(f"unknown type specifier {unknown[0]} (use integer, float, utf8, utf16, utf32, big, little, signed, unsigned, unit:N)")
        if len(types) > 1:
            raise ValueError(f"conflicting segment types {'-'.join(types)}")
        kind = types[0] if types else ("float" if isinstance(value, float) else "integer")
        little = "little" in names
        unit = next((u for n, u in specs if n == "unit"), None)
        if kind in ("binary", "bytes", "bitstring", "bits"):
            raise ValueError("binary segments must be written out: use the bytes themselves")
        if kind in ("utf8", "utf16", "utf32"):
            if size is not None or unit is not None:
                raise ValueError(f"a {kind} segment has no size")
            if not isinstance(value, int) or not (0 <= value <= 0x10FFFF) or 0xD800 <= value <= 0xDFFF:
                raise ValueError(f"{value!r} is not a Unicode code point for a {kind} segment")
            codec = {"utf8": "utf-8", "utf16": "utf-16", "utf32": "utf-32"}[kind] + ("-le" if little and kind != "utf8" else "-be" if kind != "utf8" else "")
            for byte in chr(value).encode(codec):
                self.push(byte, 8)
            return
        total = (size if size is not None else (64 if kind == "float" else 8)) * (unit or 1)
        if kind == "float":
            if not isinstance(value, (int, float)):
                raise TypeError(f"{value!r} is not a number for a float segment")
            if total not in (16, 32, 64):
                raise ValueError(f"a float segment is 16, 32 or 64 bits, not {total}")
            fmt = {16: "e", 32: "f", 64: "d"}[total]
            try:
                raw = struct.pack((">" if not little else "<") + fmt, float(value))
            except OverflowError:
                raise ValueError(f"{value!r} does not fit a {total}-bit float") from None
            self.push(int.from_bytes(raw, "big"), total)
            return
        if not isinstance(value, int):
            raise TypeError(f"{value!r} is not an integer for an integer segment")
        if little and total % 8:
            raise ValueError("a little-endian segment needs a size that is a whole number of bytes here")
        value &= (1 << total) - 1 if total else 0
        if little and total:
            value = int.from_bytes(value.to_bytes(total // 8, "big"), "little")
        self.push(value, total)

    def value(self) -> bytes | BitString:
        if self.nbits == 0:
            return bytes(self.out)
        return BitString(bytes(self.out) + bytes(((self.acc << (8 - self.nbits)) & 0xFF,)), self.nbits)


def parse(text: str, *, bindings: Mapping[str, Any] | None = None, functions: Functions | None = None) -> Any:
    """Parse one Erlang term from ``text`` (a final ``.`` is optional).

    ``bindings`` maps variable names to values (``P`` in ``{P, hello}``); ``functions``
    maps names to callables for calls such as ``self()`` (key ``"self"``, or
    ``"name/arity"`` for one arity only), called with the parsed arguments. Without them,
    only literal terms are accepted, as ``erl_parse:parse_term/1`` does.

    Raises :class:`ParseError` (with ``line``/``column``) for anything else.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() takes a str, got {type(text).__name__}")
    parser = Parser(text, bindings, functions)
    value = parser.term()
    parser.finish()
    return value

