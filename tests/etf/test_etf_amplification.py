"""Inputs whose decoding would cost far more than their size: the safe defaults bound
the work by what arrived (issue 11 item 1).

An uncompressed input holds at most one term per byte (structure); a compressed one at
most ``max_terms_per_compressed_byte`` per compressed byte beyond an allowance; every
input at most ``max_total_terms`` terms and ``max_containers`` tuples, lists and maps.
Each attack is checked for the limit that stops it and for being stopped early (the work
done before the error is bounded by the limit, not by the input's claims).
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import pytest

from pyfabric import etf


def nil_list(n: int) -> bytes:
    return b"l" + struct.pack(">I", n) + b"j" * n + b"j"


def compressed(body: bytes) -> bytes:
    return b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body, 9)


def test_sixteen_million_empty_lists_in_a_small_compressed_frame_are_refused() -> None:
    data = compressed(nil_list(16_000_000))
    assert len(data) < 20_000
    tracemalloc.start()
    try:
        with pytest.raises(etf.LimitExceeded) as info:
            etf.decode(data)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The list header already exceeds max_container_len (the first check that fails).
    assert info.value.limit == "max_container_len"
    # Refused at the list header: nothing but the inflated body (16 MB) was allocated.
    assert peak < 40 * 2**20


def test_the_compressed_budget_follows_the_compressed_size() -> None:
    limits = etf.DEFAULT_LIMITS
    small = etf.encode([1000] * 60_000, compressed=True)  # within the allowance
    assert etf.decode(small) == [1000] * 60_000
    # Incompressible-ish data: many bytes per term, far within the ratio.
    import random

    rng = random.Random(11)
    values = [rng.randrange(2**31) for _ in range(200_000)]
    assert etf.decode(etf.encode(values, compressed=True)) == values
    # Very repetitive: 300 000 terms in ~1 KB.
    data = etf.encode([700] * 300_000, compressed=True)
    assert limits.compressed_terms_allowance + limits.max_terms_per_compressed_byte * len(data) < 300_000
    with pytest.raises(etf.LimitExceeded) as info:
        etf.decode(data)
    assert info.value.limit == "max_terms_per_compressed_byte"
    # The same term uncompressed is one term per byte at most: accepted.
    assert etf.decode(etf.encode([700] * 300_000)) == [700] * 300_000


def test_a_small_compressed_frame_of_many_empty_lists_is_refused_for_its_ratio() -> None:
    data = compressed(nil_list(400_000))
    assert len(data) < 1000
    with pytest.raises(etf.LimitExceeded) as info:
        etf.decode(data)
    assert info.value.limit == "max_terms_per_compressed_byte"
    assert "per compressed byte" in str(info.value)


def test_many_empty_lists_uncompressed_hit_max_containers() -> None:
    data = b"\x83" + nil_list(200_000)
    with pytest.raises(etf.LimitExceeded) as info:
        etf.decode(data)
    assert info.value.limit == "max_containers"
    assert etf.decode(b"\x83" + nil_list(60_000)) == [[]] * 60_000


@pytest.mark.parametrize(
    "body",
    [
        b"h\x00" * 70_000,  # empty tuples
        b"t\x00\x00\x00\x00" * 70_000,  # empty maps
        b"h\x01a\x01" * 70_000,  # one-element tuples
        b"l\x00\x00\x00\x01a\x01j" * 70_000,  # one-element lists
    ],
    ids=["empty-tuples", "empty-maps", "tuples", "lists"],
)
def test_every_container_kind_counts(body: bytes) -> None:
    data = b"\x83l" + struct.pack(">I", 70_000) + body + b"j"
    with pytest.raises(etf.LimitExceeded) as info:
        etf.decode(data)
    assert info.value.limit == "max_containers"
    assert etf.decode(data, limits=etf.DecodeLimits(max_containers=100_000)) is not None


def test_max_total_terms_bounds_scalars() -> None:
    n = etf.DEFAULT_LIMITS.max_total_terms
    assert len(etf.decode(etf.encode([1] * (n - 1)))) == n - 1
    with pytest.raises(etf.LimitExceeded) as info:
        etf.decode(etf.encode([1] * (n + 1)))
    assert info.value.limit in ("max_total_terms", "max_container_len")


def test_max_depth_default_is_what_the_network_path_enforces() -> None:
    from pyfabric.protocol import ConnectionConfig

    network = ConnectionConfig.build("secret").limits()
    assert etf.DEFAULT_LIMITS.max_depth == network.max_depth == 512
    assert network.max_total_terms == etf.DEFAULT_LIMITS.max_total_terms
    assert network.max_containers == etf.DEFAULT_LIMITS.max_containers
    deep = b"\x83" + b"l\x00\x00\x00\x01" * 512 + b"j" + b"j" * 512
    assert etf.decode(deep) is not None
    too_deep = b"\x83" + b"l\x00\x00\x00\x01" * 513 + b"j" + b"j" * 513
    with pytest.raises(etf.LimitExceeded) as info:
        etf.decode(too_deep)
    assert info.value.limit == "max_depth"


def test_relaxed_limits_do_not_ratio_bound() -> None:
    data = compressed(nil_list(200_000))
    assert len(etf.decode(data, safe=False)) == 200_000
