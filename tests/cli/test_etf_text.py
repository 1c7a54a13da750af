"""pyfabric.etf.parse / format: Erlang term syntax (unit and property tests; the
comparison with a real erl is interop_tests/test_etf_text_interop.py)."""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import pytest
from hypothesis import given, settings

from pyfabric import etf
from pyfabric.etf import Atom, BitString, ExportFun, FrozenList, ImproperList, ParseError, Pid, Port, Reference

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from term_strategies import floats, terms

# Hypothesis warns that the (recursive) strategy's own repr is large: noise, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("ok", Atom("ok")),
        ("'hello world'", Atom("hello world")),
        ("'after'", Atom("after")),
        ("''", Atom("")),
        ("'a\\'b\\\\c\\n'", Atom("a'b\\c\n")),
        ("'\\x{2603}\\x41\\101\\^a'", Atom("\u2603AA\x01")),
        ("aB@1_", Atom("aB@1_")),
        ("\u00e9t\u00e9", Atom("\u00e9t\u00e9")),
        ("42", 42),
        ("-42", -42),
        ("- 42", -42),
        ("+7", 7),
        ("123456789012345678901234567890", 123456789012345678901234567890),
        ("16#FF", 255),
        ("-16#ff", -255),
        ("2#1010", 10),
        ("36#zz", 35 * 36 + 35),
        ("1_000_000", 1000000),
        ("$a", 97),
        ("$\\n", 10),
        ("$\\x{2603}", 0x2603),
        ("$ ", 32),
        ("2.5", 2.5),
        ("-0.0", -0.0),
        ("1.0e10", 1.0e10),
        ("1.5E-3", 1.5e-3),
        ("1.0e+2", 100.0),
        ('"abc"', "abc"),
        ('"a\\"b\\tc"', 'a"b\tc'),
        ('"ab" "cd"', "abcd"),
        ('""', ""),
        ('"\u2603"', "\u2603"),
        ("<<>>", b""),
        ('<<"abc">>', b"abc"),
        ("<<1,2,255>>", b"\x01\x02\xff"),
        ("<<256>>", b"\x00"),
        ("<<-1>>", b"\xff"),
        ("<<1:16>>", b"\x00\x01"),
        ("<<1:16/little>>", b"\x01\x00"),
        ("<<1:4,15:4>>", b"\x1f"),
        ("<<1,2,3:5>>", BitString(b"\x01\x02\x18", 5)),
        ("<<1:1>>", BitString(b"\x80", 1)),
        ('<<"\u2603"/utf8>>', "\u2603".encode()),
        ('<<"ab"/utf16>>', "ab".encode("utf-16-be")),
        ('<<"a"/utf32-little>>', "a".encode("utf-32-le")),
        ("<<2.5/float>>", b"@\x04\x00\x00\x00\x00\x00\x00"),
        ("<<1.5:32/float>>", b"?\xc0\x00\x00"),
        ("<<$a, \"bc\", 1:2/unit:4>>", b"abc\x01"),
        ("{}", ()),
        ("{a}", (Atom("a"),)),
        ("{a, {b, c}}", (Atom("a"), (Atom("b"), Atom("c")))),
        ("[]", []),
        ("[1, 2]", [1, 2]),
        ("[a | b]", ImproperList((Atom("a"),), Atom("b"))),
        ("[a, b | c]", ImproperList((Atom("a"), Atom("b")), Atom("c"))),
        ("[a | [b | c]]", ImproperList((Atom("a"), Atom("b")), Atom("c"))),
        ("[a | [b]]", [Atom("a"), Atom("b")]),
        ("[1 | []]", [1]),
        ('[$a | "bc"]', [97, 98, 99]),
        ("#{}", {}),
        ("#{a => 1, \"k\" => [x]}", {Atom("a"): 1, "k": [Atom("x")]}),
        ("#{[1] => a}", {FrozenList([1]): Atom("a")}),
        ("#{a => 1, a => 2}", {Atom("a"): 2}),
        ("fun lists:map/2", ExportFun(Atom("lists"), Atom("map"), 2)),
        ("{ok, 1}.", (Atom("ok"), 1)),
        ("  % a comment\n {ok, % another\n 1}  .  ", (Atom("ok"), 1)),
    ],
)
def test_parse(text: str, value: Any) -> None:
    got = etf.parse(text)
    assert got == value
    assert etf.encode(got) == etf.encode(value)  # same Erlang term, not just Python-equal


def test_parse_keeps_float_and_int_apart() -> None:
    assert etf.encode(etf.parse("1.0")) != etf.encode(etf.parse("1"))
    assert type(etf.parse("[1.0]")[0]) is float


@pytest.mark.parametrize(
    ("text", "message", "line", "column", "incomplete"),
    [
        ("{a,", "a term was expected", 1, 4, True),
        ("[1,2", "expected ']'", 1, 5, True),
        ('"abc', "unterminated quoted string", 1, 1, True),
        ("'abc", "unterminated quoted atom", 1, 1, True),
        ("{a b}", "expected '}' or ','", 1, 4, False),
        ("{a,\n  ]}", "a term was expected, found ']'", 2, 3, False),
        ("after", "reserved word", 1, 1, False),
        ("X", "variable X is unbound", 1, 1, False),
        ("_", "cannot be used", 1, 1, False),
        ("foo()", "unknown function foo/0", 1, 1, False),
        ("1e5", "after the term", 1, 2, False),
        ("{a} {b}", "after the term", 1, 5, False),
        ("#{a := 1}", "':='", 1, 5, False),
        ("1.0e400", "out of range", 1, 1, False),
        ("37#1", "base 37", 1, 1, False),
        ("16#", "missing digits", 1, 4, False),
        ("<<a>>", "binary segment", 1, 3, False),
        ("<<1/foo>>", "unknown type specifier foo", 1, 3, False),
        ("<<1:3/little>>", "little-endian", 1, 3, False),
        ('<<"\u2603">>x', "after the term", 1, 8, False),
        ("- a", "must be followed by a number", 1, 3, False),
        ("'\\x{D800}'", "not a Unicode scalar value", 1, 2, False),
        ("<0.1.0>", "unexpected character '<'", 1, 1, False),
        ("#Ref<0.1.2.3>", "unexpected character '#'", 1, 1, False),
        ("fun() -> ok end", "only 'fun Module:Function/Arity'", 1, 4, False),
        ("@", "unexpected character", 1, 1, False),
        ("", "unexpected end of input", 1, 1, True),
    ],
)
def test_parse_errors(text: str, message: str, line: int, column: int, incomplete: bool) -> None:
    with pytest.raises(ParseError) as info:
        etf.parse(text)
    err = info.value
    assert message in str(err)
    assert (err.line, err.column, err.incomplete) == (line, column, incomplete)
    assert isinstance(err, etf.ETFError) and isinstance(err, ValueError)


def test_parse_depth_is_bounded() -> None:
    from pyfabric.etf._text import MAX_PARSE_DEPTH

    deep = "[" * (MAX_PARSE_DEPTH + 1) + "]" * (MAX_PARSE_DEPTH + 1)
    with pytest.raises(ParseError, match="nested deeper"):
        etf.parse(deep)
    ok = "[" * MAX_PARSE_DEPTH + "]" * MAX_PARSE_DEPTH
    assert etf.parse(ok) is not None


def test_parse_bindings_and_functions() -> None:
    pid = Pid(Atom("n@h"), 5, 0, 1)
    calls = []

    def whereis(name: Atom) -> Pid:
        calls.append(name)
        return pid

    got = etf.parse("{P, self(), whereis(ping), [X]}", bindings={"P": 1, "X": "x"}, functions={"self": lambda: pid, "whereis/1": whereis})
    assert got == (1, pid, pid, ["x"])
    assert calls == [Atom("ping")]
    with pytest.raises(ParseError, match="unknown function whereis/2"):
        etf.parse("whereis(a, b)", functions={"whereis/1": whereis})
    with pytest.raises(ParseError, match="self/1"):
        etf.parse("self(1)", functions={"self": lambda: pid})


def test_parse_rejects_non_str() -> None:
    with pytest.raises(TypeError, match="takes a str"):
        etf.parse(b"ok")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Atom("ok"), "ok"),
        (Atom("Ok"), "'Ok'"),
        (Atom(""), "''"),
        (Atom("after"), "'after'"),
        (Atom("maybe"), "'maybe'"),
        (Atom("a b"), "'a b'"),
        (Atom("a'b"), "'a\\'b'"),
        (Atom("a\nb\x01"), "'a\\nb\\x{1}'"),
        (Atom("\u00e9t\u00e9"), "\u00e9t\u00e9"),
        (Atom("\u2603"), "'\u2603'"),
        (True, "true"),
        (None, "undefined"),
        (-5, "-5"),
        (2**70, str(2**70)),
        (1.0, "1.0"),
        (0.1, "0.1"),
        (1.0e10, "1.0e10"),
        (1000.0, "1.0e3"),
        (100.0, "100.0"),
        (0.0001, "0.0001"),
        (3.3e-4, "3.3e-4"),
        (123456789.0, "123456789.0"),
        (1234.0, "1234.0"),
        (12300.0, "1.23e4"),
        (-0.0, "-0.0"),
        (5e-324, "5.0e-324"),
        (1.7976931348623157e308, "1.7976931348623157e308"),
        ("abc", '"abc"'),
        ("a\"b\\c\n\t\x1b", '"a\\"b\\\\c\\n\\t\\e"'),
        ("\x00a", "[0,97]"),
        ("\x01\x02\x03", "[1,2,3]"),
        ("\u200b", '"\\x{200B}"'),
        ("\u2603", '"\u2603"'),
        ("a\ud800", "[97,55296]"),
        ("", '""'),
        (b"", "<<>>"),
        (b"abc", '<<"abc">>'),
        (b"a\nb", '<<"a\\nb">>'),
        (b"\x00\xff", "<<0,255>>"),
        ("\u2603".encode(), '<<"\u2603"/utf8>>'),
        (BitString(b"\x01\x18", 5), "<<1,3:5>>"),
        (BitString(b"\x80", 1), "<<1:1>>"),
        ((), "{}"),
        ((Atom("a"), 1), "{a,1}"),
        ([1, [2]], "[1,[2]]"),
        (FrozenList([1]), "[1]"),
        (ImproperList((1, 2), Atom("t")), "[1,2|t]"),
        ({Atom("a"): 1, "k": b"v"}, '#{a => 1,"k" => <<"v">>}'),
        (ExportFun(Atom("lists"), Atom("map"), 2), "fun lists:map/2"),
        (Pid(Atom("n@h"), 80, 0, 1), "<0.80.0>"),
        (Port(Atom("n@h"), 5, 1), "#Port<0.5>"),
        (Reference(Atom("n@h"), 1, (1, 2, 3)), "#Ref<0.3.2.1>"),
    ],
)
def test_format(value: Any, text: str) -> None:
    assert etf.format(value) == text


def test_format_pids_of_other_nodes_name_the_node() -> None:
    pid = Pid(Atom("other@h"), 7, 1, 1)
    assert etf.format(pid, node="me@h") == "<other@h.7.1>"
    assert etf.format(Pid(Atom("Other@h"), 7, 1, 1), node="me@h") == "<'Other@h'.7.1>"
    assert etf.format(Pid(Atom("me@h"), 7, 1, 1), node="me@h") == "<0.7.1>"


@pytest.mark.parametrize("value", [{1, 2}, object(), float("inf"), float("nan"), complex(1, 2), [1, {2: set()}]])
def test_format_unformattable(value: Any) -> None:
    with pytest.raises(etf.EncodeError):
        etf.format(value)


def test_format_deep_terms_do_not_recurse() -> None:
    value: Any = []
    for _ in range(5000):
        value = [value]
    text = etf.format(value)
    assert text == "[" * 5001 + "]" * 5001


@settings(max_examples=400, deadline=None)
@given(terms)
def test_format_parse_round_trip(term: Any) -> None:
    text = etf.format(term)
    again = etf.parse(text)
    assert etf.encode(again) == etf.encode(term), text
    assert etf.format(again) == etf.format(etf.parse(etf.format(again)))


@settings(max_examples=1000, deadline=None)
@given(floats)
def test_float_round_trip_exact(value: float) -> None:
    text = etf.format(value)
    back = etf.parse(text)
    assert back == value and repr(back) == repr(value)


def test_long_binaries_round_trip() -> None:
    data = bytes(range(256)) * 200
    assert etf.parse(etf.format(data)) == data
    bits = BitString(data + b"\xa0", 3)
    assert etf.parse(etf.format(bits)) == bits
