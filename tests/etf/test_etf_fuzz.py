"""Fuzz: random bytes and mutated vectors make the decoder raise only ETFError."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from conformance_corpus import LEGACY_DIR
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
