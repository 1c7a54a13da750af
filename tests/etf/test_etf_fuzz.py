"""Fuzz: random bytes and mutated vectors make the decoder raise only ETFError."""

from __future__ import annotations

import os

from conformance_corpus import LEGACY_DIR
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfabric import etf

VECTORS = [p.read_bytes() for p in sorted(LEGACY_DIR.glob("*.bin"))]
_SCALE = max(1, int(os.environ.get("FUZZ_SECONDS", "20")) // 20)
FUZZ = settings(max_examples=1500 * _SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_everything(data: bytes) -> None:
    for safe in (True, False):
        for kwargs in ({}, {"python_atoms": True, "strings": "list"}):
            try:
                etf.decode(data, safe=safe, **kwargs)
            except etf.ETFError:
                pass
            try:
                etf.decode_from(data, 0, safe=safe, **kwargs)
            except etf.ETFError:
                pass


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    _decode_everything(b"\x83" + data)


@FUZZ
@given(
    st.sampled_from(VECTORS),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 2),
)
def test_mutated_vectors(vector: bytes, edits: list[tuple[int, int]], mode: int) -> None:
    data = bytearray(vector)
    for where, byte in edits:
        where %= len(data)
        if mode == 0:
            data[where] = byte
        elif mode == 1:
            del data[where]
        else:
            data.insert(where, byte)
    _decode_everything(bytes(data))


@FUZZ
@given(st.sampled_from(VECTORS), st.integers(0, 10**6), st.binary(min_size=1, max_size=8))
def test_mutated_decompressed_bodies(vector: bytes, where: int, patch: bytes) -> None:
    """Mutate *inside* compressed payloads too (otherwise zlib rejects nearly all)."""
    import zlib

    if vector[:2] != b"\x83\x50":
        return
    body = bytearray(zlib.decompress(vector[6:]))
    where %= len(body)
    body[where : where + len(patch)] = patch
    data = b"\x83\x50" + len(body).to_bytes(4, "big") + zlib.compress(bytes(body))
    _decode_everything(data)


# -- amplifying and large inputs (issue 11): small or cheap on the wire, costly to decode --

_UNITS = [b"j", b"h\x00", b"t\x00\x00\x00\x00", b"a\x01", b"h\x01j", b"l\x00\x00\x00\x01jj", b"m\x00\x00\x00\x00", b"w\x01a"]


def _count(term: object) -> tuple[int, int]:
    """(terms, containers) of a decoded value, iteratively."""
    terms = containers = 0
    stack = [term]
    while stack:
        value = stack.pop()
        terms += 1
        if isinstance(value, (list, tuple)):
            containers += 1
            stack.extend(value)
        elif isinstance(value, dict):
            containers += 1
            for k, v in value.items():
                stack.extend((k, v))
    return terms, containers


@settings(max_examples=40 * _SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    st.sampled_from(_UNITS),
    st.integers(1, 2_000_000),
    st.sampled_from(["list", "tuple", "nested"]),
    st.booleans(),
    st.integers(-3, 3),
)
def test_amplifying_inputs_are_bounded_by_the_limits(unit: bytes, n: int, shape: str, compress: bool, lie: int) -> None:
    import struct
    import zlib

    if shape == "list":
        body = b"l" + struct.pack(">I", max(0, n + lie)) + unit * n + b"j"
    elif shape == "tuple":
        body = b"i" + struct.pack(">I", max(0, n + lie)) + unit * n
    else:
        depth = n % 3000 + 1
        body = b"l\x00\x00\x00\x01" * depth + unit + b"j" * depth
    data = b"\x83" + body
    if compress:
        data = b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body, 1)
    limits = etf.DEFAULT_LIMITS
    try:
        value = etf.decode(data)
    except etf.ETFError:
        return
    terms, containers = _count(value)
    assert terms <= limits.max_total_terms + 1
    assert containers <= limits.max_containers
    if compress:
        assert terms <= limits.compressed_terms_allowance + limits.max_terms_per_compressed_byte * len(data) + 1
    else:
        assert terms <= len(data)
