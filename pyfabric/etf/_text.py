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
import struct
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any, NamedTuple

from ._encode import encode as _encode_term
from ._errors import EncodeError, ETFError
from ._types import Atom, BitString, ExportFun, FrozenDict, FrozenList, Fun, ImproperList, Pid, Port, Reference

__all__ = ["parse", "format", "ParseError", "MAX_PARSE_DEPTH"]

MAX_PARSE_DEPTH = 200
"""Containers nested deeper than this are a :class:`ParseError` (the parser recurses)."""

RESERVED = frozenset(
    "after and andalso band begin bnot bor bsl bsr bxor case catch cond div end fun if let "
    "maybe else not of or orelse receive rem try when xor".split()
)
"""Words :func:`format` always quotes (``maybe``/``else`` are reserved only where the
``maybe`` feature is on, OTP 25+)."""
_PARSE_RESERVED = RESERVED - {"maybe", "else"}  # OTP 25 prints and reads them bare


class ParseError(ETFError, ValueError):
    """Text that is not a valid Erlang term; ``line`` and ``column`` (1-based) say where.

    ``incomplete`` is True when more input could make it valid (an unterminated quote or
    bracket, a missing final ``.``): a REPL reads another line then.
    """

    def __init__(self, message: str, line: int, column: int, *, incomplete: bool = False) -> None:
        super().__init__(f"{message} (line {line}, column {column})")
        self.reason = message
        self.line = line
        self.column = column
        self.incomplete = incomplete


# -- tokens -------------------------------------------------------------------------------------


class Token(NamedTuple):
    kind: str  # atom var int float char string punct reserved dot eof
    value: Any
    pos: int  # offset in the text
    end: int


_ATOM_START = re.compile(r"[a-z\u00df-\u00f6\u00f8-\u00ff]")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_@\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff]*")
_VAR_START = re.compile(r"[A-Z_\u00c0-\u00d6\u00d8-\u00de]")
_DECIMAL = re.compile(r"[0-9](?:_?[0-9])*")
_PUNCT = ("<<", ">>", "#{", "=>", ":=", "{", "}", "[", "]", "(", ")", ",", "|", "/", ":", "!", "=", "-", "+")
_SIMPLE_ESCAPES = {"b": 8, "d": 127, "e": 27, "f": 12, "n": 10, "r": 13, "s": 32, "t": 9, "v": 11}


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def where(self, pos: int) -> tuple[int, int]:
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return line, column

    def error(self, message: str, pos: int, incomplete: bool = False) -> ParseError:
        line, column = self.where(pos)
        return ParseError(message, line, column, incomplete=incomplete)

    def tokens(self) -> Iterator[Token]:
        text = self.text
        n = len(text)
        while True:
            pos = self._skip_space()
            if pos >= n:
                yield Token("eof", None, n, n)
                return
            ch = text[pos]
            if ch.isdigit():
                yield self._number(pos)
            elif _ATOM_START.match(ch):
                end = _NAME_CHARS.match(text, pos + 1).end()  # type: ignore[union-attr]
                word = text[pos:end]
                yield Token("reserved" if word in _PARSE_RESERVED else "atom", word, pos, end)
                self.pos = end
            elif _VAR_START.match(ch):
                end = _NAME_CHARS.match(text, pos + 1).end()  # type: ignore[union-attr]
                yield Token("var", text[pos:end], pos, end)
                self.pos = end
            elif ch == "'":
                value, end = self._quoted(pos, "'")
                yield Token("atom", value, pos, end)
            elif ch == '"':
                value, end = self._quoted(pos, '"')
                yield Token("string", value, pos, end)
            elif ch == "$":
                value, end = self._char(pos + 1)
                yield Token("char", value, pos, end)
            elif ch == "." and (pos + 1 >= n or text[pos + 1].isspace() or text[pos + 1] == "%"):
                self.pos = pos + 1
                yield Token("dot", ".", pos, pos + 1)
            else:
                for p in _PUNCT:
                    if text.startswith(p, pos):
                        self.pos = pos + len(p)
                        yield Token("punct", p, pos, pos + len(p))
                        break
                else:
                    raise self.error(f"unexpected character {ch!r}", pos)

    def _skip_space(self) -> int:
        text, pos, n = self.text, self.pos, len(self.text)
        while pos < n:
            if text[pos].isspace():
                pos += 1
            elif text[pos] == "%":
                nl = text.find("\n", pos)
                pos = n if nl < 0 else nl + 1
            else:
                break
        self.pos = pos
        return pos

    def _number(self, pos: int) -> Token:
        text = self.text
        m = _DECIMAL.match(text, pos)
        assert m is not None
        end = m.end()
        digits = m.group().replace("_", "")
        if end < len(text) and text[end] == "#":
            base = int(digits)
            if not 2 <= base <= 36:
                raise self.error(f"integer base {base} is not in 2..36", pos)
            alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"[:base]
            start = end + 1
            end = start
            while end < len(text) and (text[end].lower() in alphabet or (text[end] == "_" and end > start)):
                end += 1
            body = text[start:end].rstrip("_")
            end = start + len(body)
            if not body:
                raise self.error(f"missing digits after {base}#", start)
            self.pos = end
            return Token("int", int(body.replace("_", ""), base), pos, end)
        if end + 1 < len(text) and text[end] == "." and text[end + 1].isdigit():
            frac = _DECIMAL.match(text, end + 1)
            assert frac is not None
            end = frac.end()
            exp = re.compile(r"[eE][+-]?[0-9](?:_?[0-9])*").match(text, end)
            if exp is not None:
                end = exp.end()
            value = float(text[pos:end].replace("_", ""))
            if math.isinf(value):
                raise self.error(f"float {text[pos:end]} is out of range (Erlang floats are finite)", pos)
            self.pos = end
            return Token("float", value, pos, end)
        self.pos = end
        return Token("int", int(digits), pos, end)

    def _escape(self, pos: int) -> tuple[int, int]:
        """The character code of the escape sequence after a backslash at ``pos - 1``."""
        text, n = self.text, len(self.text)
        if pos >= n:
            raise self.error("unterminated escape sequence", pos, incomplete=True)
        ch = text[pos]
        if ch in "01234567":
            end = pos
            while end < n and end < pos + 3 and text[end] in "01234567":
                end += 1
            return int(text[pos:end], 8), end
        if ch == "x":
            if text.startswith("{", pos + 1):
                close = text.find("}", pos + 2)
                if close < 0:
                    raise self.error("unterminated \\x{...} escape", pos, incomplete=True)
                hexdigits = text[pos + 2 : close]
                end = close + 1
            else:
                hexdigits = text[pos + 1 : pos + 3]
                end = pos + 3
            if not hexdigits or not re.fullmatch(r"[0-9a-fA-F]+", hexdigits):
                raise self.error(f"bad \\x escape {text[pos - 1 : end]!r}", pos - 1)
            return int(hexdigits, 16), end
        if ch == "^":
            if pos + 1 >= n:
                raise self.error("unterminated \\^ escape", pos, incomplete=True)
            return ord(text[pos + 1]) & 31, pos + 2
        if ch in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[ch], pos + 1
        return ord(ch), pos + 1  # \\ \' \" and any other character stand for themselves

    def _code(self, code: int, pos: int) -> str:
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise self.error(f"character code {code} is not a Unicode scalar value", pos)
        return chr(code)

    def _quoted(self, pos: int, quote: str) -> tuple[str, int]:
        text, n = self.text, len(self.text)
        out: list[str] = []
        i = pos + 1
        while True:
            j = i
            while j < n and text[j] != quote and text[j] != "\\":
                j += 1
            out.append(text[i:j])
            if j >= n:
                what = "atom" if quote == "'" else "string"
                raise self.error(f"unterminated quoted {what}", pos, incomplete=True)
            if text[j] == quote:
                self.pos = j + 1
                return "".join(out), j + 1
            code, i = self._escape(j + 1)
            out.append(self._code(code, j))

    def _char(self, pos: int) -> tuple[int, int]:
        text = self.text
        if pos >= len(text):
            raise self.error("missing character after $", pos, incomplete=True)
        if text[pos] == "\\":
            code, end = self._escape(pos + 1)
        else:
            code, end = ord(text[pos]), pos + 1
        self._code(code, pos)
        self.pos = end
        return code, end


# -- parser -------------------------------------------------------------------------------------

Functions = Mapping[str, Callable[..., Any]]


class Parser:
    """Recursive-descent parser over the tokens of ``text`` (also used by the CLI's REPL,
    which adds ``=`` and ``!`` on top of :meth:`term`)."""

    def __init__(self, text: str, bindings: Mapping[str, Any] | None = None, functions: Functions | None = None) -> None:
        self.lexer = _Lexer(text)
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

    def _map(self, _open: Token) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        if self.is_punct("}"):
            self.advance()
            return result
        seen: dict[bytes, Any] = {}  # Erlang identity of each key -> the key in result
        while True:
            key_tok = self.tok
            key = freeze(self.term())
            if self.is_punct(":="):
                raise self.error("':=' only updates existing keys: a map literal uses '=>'")
            self.expect("=>", "after a map key")
            value = self.term()
            identity = _encode_term(key)
            if identity in seen:
                del result[seen[identity]]  # a repeated key: the last value wins, as in Erlang
            elif key in result:
                old = next(k for k in result if k == key)
                raise self.error(
                    f"map keys {format(old)} and {format(key)} are distinct in Erlang but equal in Python",
                    key_tok,
                    incomplete=False,
                )
            seen[identity] = key
            result[key] = value
            if self.is_punct(","):
                self.advance()
                continue
            self.expect("}", "or ',' in map")
            return result

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
        except ValueError as exc:
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
    if isinstance(value, tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, ImproperList):
        return ImproperList(tuple(freeze(v) for v in value.elements), freeze(value.tail))
    return value


_SEGMENT_TYPES = frozenset({"integer", "float", "utf8", "utf16", "utf32", "binary", "bytes", "bitstring", "bits"})


class _Bits:
    """Bits of a binary being built, most significant first."""

    def __init__(self) -> None:
        self.acc = 0
        self.nbits = 0

    def push(self, value: int, size: int) -> None:
        self.acc = (self.acc << size) | (value & ((1 << size) - 1))
        self.nbits += size

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
                raise ValueError(f"{value!r} is not a number for a float segment")
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
            raise ValueError(f"{value!r} is not an integer for an integer segment")
        if little and total % 8:
            raise ValueError("a little-endian segment needs a size that is a whole number of bytes here")
        value &= (1 << total) - 1 if total else 0
        if little and total:
            value = int.from_bytes(value.to_bytes(total // 8, "big"), "little")
        self.push(value, total)

    def value(self) -> bytes | BitString:
        nbytes, rest = divmod(self.nbits, 8)
        if rest == 0:
            return self.acc.to_bytes(nbytes, "big")
        data = (self.acc << (8 - rest)).to_bytes(nbytes + 1, "big")
        return BitString(data, rest)


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


def _format_str(text: str) -> str:
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        # Not writable as an Erlang string literal: the same list, as integers.
        return "[" + ",".join(str(ord(c)) for c in text) + "]"
    return _quote(text, '"')


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


def format(term: Any, *, node: Atom | str | None = None) -> str:  # noqa: A001 - the module's verb
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
