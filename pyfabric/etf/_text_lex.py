"""Tokens of Erlang term syntax (the lexer of :mod:`pyfabric.etf._text_parse`)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

from ._errors import ETFError

__all__ = ["MAX_PARSE_DEPTH", "RESERVED", "Lexer", "ParseError", "Token"]

MAX_PARSE_DEPTH = 200
"""Containers nested deeper than this are a :class:`ParseError` (the parser recurses)."""

RESERVED = frozenset(
    ["after", "and", "andalso", "band", "begin", "bnot", "bor", "bsl", "bsr", "bxor", "case", "catch", "cond", "div", "end", "fun", "if", "let", "maybe", "else", "not", "of", "or", "orelse", "receive", "rem", "try", "when", "xor"]
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


class Lexer:
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
                code, end = self._char(pos + 1)
                yield Token("char", code, pos, end)
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
