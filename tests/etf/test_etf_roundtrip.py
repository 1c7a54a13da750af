"""Hypothesis round trips Python -> ETF -> Python for every supported type."""

from __future__ import annotations

from typing import Any

from etf_strategies import norm, terms
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfabric import etf

_RELAXED = etf.DecodeLimits(max_bignum_bytes=1 << 20)


@settings(max_examples=400, deadline=None)
@given(terms, st.sampled_from([0, 1, 2]), st.sampled_from([False, True, 1, 9]))
def test_roundtrip_erlang_equal(term: Any, minor_version: int, compressed: bool | int) -> None:
    data = etf.encode(term, minor_version=minor_version, compressed=compressed)
    decoded = etf.decode(data, limits=_RELAXED, safe=False)
    assert norm(decoded) == norm(term)
    # Decoding is canonical: re-encoding the decoded value gives the same bytes.
    assert etf.encode(decoded, minor_version=minor_version, compressed=compressed) == data


@settings(max_examples=200, deadline=None)
@given(terms)
def test_roundtrip_options(term: Any) -> None:
    data = etf.encode(term)
    as_lists = etf.decode(data, limits=_RELAXED, safe=False, strings="list", python_atoms=True)
    assert norm(as_lists) == norm(term)
    assert etf.encode(as_lists) == data


@settings(max_examples=200, deadline=None)
@given(terms, st.binary(max_size=10))
def test_decode_from_with_trailing(term: Any, trailing: bytes) -> None:
    data = etf.encode(term, compressed=True)
    value, end = etf.decode_from(b"\x00\x00" + data + trailing, 2, limits=_RELAXED, safe=False)
    assert end == 2 + len(data)
    assert norm(value) == norm(term)


@given(st.lists(st.integers(0, 255), max_size=300))
def test_byte_lists_are_strings(values: list[int]) -> None:
    data = etf.encode(values)
    assert data[1] == (106 if not values else 107)
    assert etf.decode(data, strings="list") == values


@given(st.text())
def test_str_encodes_like_erlang_literal(text: str) -> None:
    data = etf.encode(text)
    if not text:
        assert data == b"\x83\x6a"
    elif max(map(ord, text)) <= 255:
        assert data[1] == 107
    else:
        assert data[1] == 108
    assert etf.charlist_to_str(etf.decode(data)) == text
