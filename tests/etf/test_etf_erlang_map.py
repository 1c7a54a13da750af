"""Maps whose keys are distinct in Erlang but equal in Python: ErlangMap and erlang_equal."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from etf_strategies import colliding_maps
from hypothesis import given
from hypothesis import strategies as st

from pyfabric import etf
from pyfabric.etf import Atom, ErlangMap, FrozenDict, FrozenList, erlang_equal
from pyfabric.etf._erlang_map import erlang_key

A, B = Atom("a"), Atom("b")
# term_to_binary(#{1 => a, 1.0 => b}) in OTP 25
ONE_AND_ONE_POINT_ZERO = bytes.fromhex("837400000002610164000161" + "463ff0000000000000" + "64000162")


def test_decode_one_and_one_point_zero_is_an_erlang_map() -> None:
    term = etf.decode(ONE_AND_ONE_POINT_ZERO)
    assert type(term) is ErlangMap
    assert term.pairs == ((1, A), (1.0, B))
    assert type(term.pairs[1][0]) is float
    assert term[1] is A and term[1.0] is B
    assert list(term) == [1, 1.0] and len(term) == 2
    assert 1.0 in term and 2 not in term and [1] not in term
    assert etf.encode(term, minor_version=1) == ONE_AND_ONE_POINT_ZERO


def test_plain_dict_when_python_can_hold_the_map() -> None:
    assert type(etf.decode(etf.encode({1: A, 2.0: B}))) is dict
    assert type(etf.decode(etf.encode({FrozenDict({1: A}): B}))) is dict


@pytest.mark.parametrize(
    "keys",
    [
        [(1,), (1.0,)],
        [FrozenList([300]), FrozenList([300.0])],
        [FrozenList([Atom("x"), 1]), FrozenList([Atom("x"), 1.0])],
        [FrozenDict({1: A}), FrozenDict({1.0: A})],
        [etf.ImproperList((1,), A), etf.ImproperList((1.0,), A)],
        [((1, (2,)),), ((1, (2.0,)),)],
    ],
)
def test_nested_keys_equal_in_python(keys: list[Any]) -> None:
    term = ErlangMap((k, i) for i, k in enumerate(keys))
    data = etf.encode(term)
    back = etf.decode(data)
    assert type(back) is ErlangMap and back == term
    assert etf.encode(back) == data
    # as a map key and inside a value too
    outer = {ErlangMap(term): [term]}
    assert etf.encode(etf.decode(etf.encode(outer))) == etf.encode(outer)


def test_python_atoms_true_and_one() -> None:
    data = etf.encode(ErlangMap([(1, A), (Atom("true"), B)]))
    term = etf.decode(data, python_atoms=True)
    assert type(term) is ErlangMap and term[True] is B and term[1] is A
    assert etf.encode(term) == data
    assert type(etf.decode(data)) is dict  # without python_atoms a dict holds them


def test_real_duplicates_are_still_errors() -> None:
    with pytest.raises(etf.DecodeError, match="duplicate"):
        etf.decode(bytes.fromhex("8374000000026101610261016103"))  # #{1 => a, 1 => c}
    # OTP 25: 0.0 =:= -0.0, so these are one key and binary_to_term rejects the map
    zero_twice = bytes.fromhex("837400000002" + "460000000000000000" + "64000161" + "468000000000000000" + "64000162")
    with pytest.raises(etf.DecodeError, match="duplicate"):
        etf.decode(zero_twice)
    with pytest.raises(ValueError, match="distinct under Erlang's =:="):
        ErlangMap([("ab", 1), (FrozenList([97, 98]), 2)])


def test_erlang_equality() -> None:
    assert not erlang_equal(1, 1.0)
    assert erlang_equal(0.0, -0.0)  # OTP 25
    assert erlang_equal("ab", [97, 98]) and erlang_equal("", [])
    assert erlang_equal(True, Atom("true")) and erlang_equal(None, Atom("undefined"))
    assert not erlang_equal(True, 1)
    assert not erlang_equal((1, [2]), (1, [2.0]))
    assert erlang_equal({1: [1]}, ErlangMap([(1, [1])]))
    assert not erlang_equal(b"a", "a")
    deep: Any = 1
    for _ in range(400):  # the safe max_depth is 512
        deep = (deep,)
    assert erlang_equal(deep, (deep,)[0]) and not erlang_equal(deep, (deep,))
    for _ in range(50_000):
        deep = (deep,)
    erlang_key(deep)  # building the form is iterative: no RecursionError
    with pytest.raises(TypeError, match="no Erlang form"):
        erlang_equal({1, 2}, 1)


def test_comparison_hash_and_immutability() -> None:
    m = ErlangMap([(1, A), (1.0, B)])
    assert m == ErlangMap([(1.0, B), (1, A)])  # maps are unordered
    assert m != ErlangMap([(1, B), (1.0, A)])
    assert hash(m) == hash(ErlangMap([(1.0, B), (1, A)]))
    assert ErlangMap({1: A}) == {1: A} and ErlangMap({1: A}) != {1.0: A}
    assert ErlangMap({1: A}) != FrozenDict({1: A})  # FrozenDict's equality is Python's
    assert pickle.loads(pickle.dumps(m)) == m
    assert repr(m) == "ErlangMap([(1, Atom('a')), (1.0, Atom('b'))])"
    with pytest.raises(AttributeError):
        m.x = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        m[2] = 3  # type: ignore[index]


def test_text_parse_and_format() -> None:
    term = etf.parse("#{1 => a, 1.0 => b}")
    assert type(term) is ErlangMap and term == ErlangMap([(1, A), (1.0, B)])
    assert etf.format(term) == "#{1 => a,1.0 => b}"
    assert etf.parse("#{{1} => a, {1.0} => b, 1 => c}") == ErlangMap([((1,), A), ((1.0,), B), (1, Atom("c"))])
    nested = etf.parse("#{#{1 => x, 1.0 => y} => z}")
    assert type(nested) is dict and type(next(iter(nested))) is ErlangMap
    # a repeated key: the last value wins and the first key stays (Erlang: #{0.0 => b})
    zero = etf.parse("#{0.0 => a, -0.0 => b}")
    assert zero == {0.0: B} and str(next(iter(zero))) == "0.0"
    assert etf.parse("#{1 => a, 1 => b}") == {1: B}


@given(colliding_maps(), st.sampled_from([(False, 2), (True, 1), (False, 0), (6, 1)]))
def test_roundtrip_byte_exact(term: ErlangMap, options: tuple[Any, int]) -> None:
    compressed, minor = options
    data = etf.encode(term, compressed=compressed, minor_version=minor)
    back = etf.decode(data)
    assert erlang_equal(back, term)  # an ErlangMap, or a dict where [1] decoded as "\x01"
    assert etf.encode(back, compressed=compressed, minor_version=minor) == data
    assert etf.parse(etf.format(term)) == term
    wrapped = (term, {term: 1})
    assert etf.encode(etf.decode(etf.encode(wrapped))) == etf.encode(wrapped)
