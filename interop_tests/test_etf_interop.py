"""ETF interop with a real Erlang/OTP: byte-exact re-encoding of Erlang's output, and
Python-encoded terms decoded by Erlang. A missing erl fails these tests."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import random
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conformance_corpus import LEGACY_DIR
from hypothesis import HealthCheck, given, settings

from pyfabric import etf
from pyfabric.etf import Atom

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from etf_support.erl_runner import OPTION_SETS, EchoProcess, Erl, compile_helpers, read_records, write_records

_spec = importlib.util.spec_from_file_location(
    "etf_strategies", pathlib.Path(__file__).resolve().parents[1] / "tests" / "etf" / "etf_strategies.py"
)
assert _spec and _spec.loader
strategies = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(strategies)

VECTOR_DIR = LEGACY_DIR
UNSAFE = etf.DecodeLimits(max_bignum_bytes=1 << 20, max_depth=10_000, max_input_size=1 << 30,
                          max_binary_size=1 << 30, max_decompressed_size=1 << 30)


@pytest.fixture(scope="module")
def erl() -> Iterator[Erl]:
    yield from compile_helpers()


@pytest.fixture(scope="module")
def echo(erl: Erl) -> Iterator[EchoProcess]:
    process = erl.echo()
    yield process
    process.close()


def _random_seed() -> int:
    return int(os.environ.get("ETF_INTEROP_SEED", random.randrange(1, 10**6)))


@pytest.mark.parametrize("seed", [1, 2, 3, _random_seed()])
def test_erlang_terms_reencode_byte_exact(erl: Erl, tmp_path: pathlib.Path, seed: int) -> None:
    """For every term Erlang encodes under any options, encode(decode(B)) == B."""
    out = tmp_path / "terms.bin"
    count = int(erl.run("gen", str(seed), "300", str(out)).strip())
    records = read_records(out)
    assert len(records) == count * len(OPTION_SETS)
    failures = []
    for i, data in enumerate(records):
        name, compressed, minor = OPTION_SETS[i % len(OPTION_SETS)]
        term = etf.decode(data, safe=False, limits=UNSAFE)
        again = etf.encode(term, compressed=compressed, minor_version=minor)
        if again != data:
            failures.append(f"term #{i // len(OPTION_SETS)} {name}: {repr(term)[:200]}")
    assert not failures, f"seed {seed}: {len(failures)} mismatches, first: {failures[:3]}"


def test_compression_threshold_matches_erlang(erl: Erl, tmp_path: pathlib.Path) -> None:
    """Erlang compresses unless it would grow the output (ties compress): same here."""
    out = tmp_path / "sweep.bin"
    erl.run("sweep", str(out))
    records = read_records(out)
    compressed = sum(1 for r in records if r[1] == 80)
    assert 0 < compressed < len(records)
    for data in records:
        assert etf.encode(etf.decode(data), compressed=True, minor_version=1) == data


# Python value -> the Erlang expression that produces the same term.
PYTHON_VS_ERLANG: list[tuple[Any, str]] = [
    ("", '""'),
    ("abc", '"abc"'),
    ("caf\u00e9", '"caf\\x{e9}"'),
    ("\u2603 snow", '"\\x{2603} snow"'),
    ("x" * 70000, 'lists:duplicate(70000, $x)'),
    ([1, 2, 3], "[1,2,3]"),
    ([256, 1], "[256,1]"),
    ([], "[]"),
    (True, "true"),
    (False, "false"),
    (None, "undefined"),
    (b"bin", '<<"bin">>'),
    (etf.str_to_binary("caf\u00e9"), '<<"caf\\x{e9}"/utf8>>'),
    (etf.BitString(b"\xa0", 3), "<<5:3>>"),
    ((), "{}"),
    ((Atom("ok"), 1, 2.5, -(2**70)), "{ok, 1, 2.5, -(1 bsl 70)}"),
    (etf.ImproperList((1, 2), Atom("t")), "[1, 2 | t]"),
    # Python keeps dict order; Erlang writes small maps in key order: same order here.
    ({Atom("a"): [2], Atom("b"): 1}, "#{b => 1, a => [2]}"),
    (Atom("caf\u00e9"), "'caf\\x{e9}'"),
    (Atom("\u2603"), "'\\x{2603}'"),
    (Atom("a" * 255), "list_to_atom(lists:duplicate(255, $a))"),
    (etf.ExportFun(Atom("lists"), Atom("map"), 2), "fun lists:map/2"),
    (0.1, "0.1"),
    (-0.0, "-0.0"),
    (1e300, "1.0e300"),
    (5e-324, "5.0e-324"),
    (2**64, "1 bsl 64"),
    (2**2100, "1 bsl 2100"),
    ([(Atom("m"), Atom("ping")), "abababa", {Atom("k"): b"v"}], '[{m, ping}, "abababa", #{k => <<"v">>}]'),
]


def test_python_encoding_matches_erlang_literals(erl: Erl, tmp_path: pathlib.Path) -> None:
    """Python values encode exactly like the equivalent Erlang expressions, every option set."""
    source = tmp_path / "exprs.txt"
    source.write_text("\n".join(expr for _, expr in PYTHON_VS_ERLANG) + "\n", encoding="utf-8")
    out = tmp_path / "exprs.bin"
    erl.run("exprs", str(source), str(out))
    records = read_records(out)
    assert len(records) == len(PYTHON_VS_ERLANG) * len(OPTION_SETS)
    for i, data in enumerate(records):
        value, expr = PYTHON_VS_ERLANG[i // len(OPTION_SETS)]
        name, compressed, minor = OPTION_SETS[i % len(OPTION_SETS)]
        assert etf.encode(value, compressed=compressed, minor_version=minor) == data, f"{expr} with {name}"


# Maps whose keys are distinct in Erlang but equal in Python (decoded as ErlangMap).
ERLANG_MAPS = [
    "#{1 => a, 1.0 => b}",
    "#{{1} => a, {1.0} => b, [1] => c, [1.0] => d, [300] => e, [300.0] => f}",
    "#{#{1 => x} => a, #{1.0 => x} => b, 0.0 => c}",
    "#{[{1, [a]} | t] => a, [{1.0, [a]} | t] => b}",
    "#{outer => #{1 => a, 1.0 => b}, #{-1 => a, -1.0 => b} => [#{2 => c, 2.0 => d}]}",
    "maps:from_list([{I, I} || I <- lists:seq(1, 40)] ++ [{float(I), {I}} || I <- lists:seq(1, 40)])",
    "maps:from_list([{{I}, I} || I <- lists:seq(-20, 20)] ++ [{{float(I)}, I} || I <- lists:seq(-20, 20)])",
]


def test_erlang_maps_with_python_equal_keys_reencode_byte_exact(erl: Erl, tmp_path: pathlib.Path) -> None:
    """term_to_binary of maps with keys 1 and 1.0 (also nested, large, compressed) decodes and re-encodes byte for byte."""
    source = tmp_path / "maps.txt"
    source.write_text("\n".join(ERLANG_MAPS) + "\n", encoding="utf-8")
    out = tmp_path / "maps.bin"
    erl.run("exprs", str(source), str(out))
    records = read_records(out)
    assert len(records) == len(ERLANG_MAPS) * len(OPTION_SETS)
    for i, data in enumerate(records):
        expr = ERLANG_MAPS[i // len(OPTION_SETS)]
        name, compressed, minor = OPTION_SETS[i % len(OPTION_SETS)]
        term = etf.decode(data)
        assert isinstance(term, (etf.ErlangMap, dict)), expr
        assert etf.ErlangMap in _types_inside(term), expr
        assert etf.encode(term, compressed=compressed, minor_version=minor) == data, f"{expr} with {name}"
        assert etf.parse(etf.format(term)) == term, expr


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(strategies.colliding_maps())
def test_erlang_accepts_python_equal_keys_and_reencodes_byte_exact(echo: EchoProcess, term: etf.ErlangMap) -> None:
    """Erlang decodes our ErlangMaps (no duplicate keys for it); its term_to_binary re-encodes byte for byte."""
    reply = echo.roundtrip(etf.encode(term))
    answer = etf.decode(reply)
    assert answer[0] == Atom("ok"), answer
    assert etf.erlang_equal(answer[1], term)
    assert etf.encode(answer, minor_version=2) == reply


def _types_inside(term: Any) -> set[type]:
    seen: set[type] = set()
    stack = [term]
    while stack:
        value = stack.pop()
        seen.add(type(value))
        if isinstance(value, etf.ErlangMap):
            stack.extend(x for pair in value.pairs for x in pair)
        elif isinstance(value, (dict, etf.FrozenDict)):
            stack.extend(x for pair in value.items() for x in pair)
        elif isinstance(value, (tuple, list, etf.FrozenList)):
            stack.extend(value)
        elif isinstance(value, etf.ImproperList):
            stack.extend((*value.elements, value.tail))
    return seen


def test_vectors_decode_like_erlang(erl: Erl, tmp_path: pathlib.Path) -> None:
    """Erlang's reading of each vector (re-encoded by Erlang) equals ours."""
    vectors = [p.read_bytes() for p in sorted(VECTOR_DIR.glob("*.bin"))]
    source, out = tmp_path / "vectors.bin", tmp_path / "decoded.bin"
    write_records(source, vectors)
    erl.run("encode_all", str(source), str(out))
    for data, reply in zip(vectors, read_records(out)):
        answer = etf.decode(reply, safe=False)
        if answer[0] == Atom("error"):
            with pytest.raises(etf.DecodeError):
                etf.decode(data, safe=False)
        else:
            assert answer[0] == Atom("ok")
            assert strategies.norm(etf.decode(data, safe=False)) == strategies.norm(answer[1])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(strategies.terms)
def test_python_terms_decode_in_erlang(echo: EchoProcess, term: Any) -> None:
    """Erlang decodes what Python encodes to the Erlang-equal term (any options)."""
    for compressed, minor in ((False, 2), (True, 1), (False, 0)):
        data = etf.encode(term, compressed=compressed, minor_version=minor)
        reply = etf.decode(echo.roundtrip(data), safe=False, limits=UNSAFE)
        assert reply[0] == Atom("ok"), reply
        assert strategies.norm(reply[1]) == strategies.norm(term)
