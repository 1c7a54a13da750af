"""Hostile inputs: each must raise a codec error quickly, with bounded memory."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import pytest

from pyfabric import etf

DEEP = 100_000


def _bounded(fn, *, max_bytes: int = 64 * 1024 * 1024):  # type: ignore[no-untyped-def]
    """Run ``fn`` and check its peak Python memory (deterministic). Its time is not asserted
    here (speed targets live in ``make bench``; the decode cost bounds are measured by
    bench/codec_bench.py); the module's pytest timeout catches a pathological hang."""
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < max_bytes, f"peak memory {peak} bytes"


@pytest.mark.parametrize("safe", [True, False])
def test_4gb_binary_declared_in_10_bytes(safe: bool) -> None:
    data = b"\x83\x6d\xff\xff\xff\xff" + b"abcd"
    assert len(data) == 10

    def run() -> None:
        with pytest.raises(etf.DecodeError):
            etf.decode(data, safe=safe)

    _bounded(run)


@pytest.mark.parametrize("tag", [104, 105, 108, 116, 107, 110, 111, 77, 112])
@pytest.mark.parametrize("safe", [True, False])
def test_huge_declared_lengths(tag: int, safe: bool) -> None:
    data = bytes((131, tag)) + b"\xff\xff\xff\xff\xff\xff" + b"a" * 20

    def run() -> None:
        with pytest.raises(etf.DecodeError):
            etf.decode(data, safe=safe)

    _bounded(run)


@pytest.mark.parametrize("safe", [True, False])
def test_2_32_element_list_header(safe: bool) -> None:
    data = b"\x83\x6c\xff\xff\xff\xff" + b"\x61\x01" * 8 + b"\x6a"

    def run() -> None:
        with pytest.raises(etf.DecodeError):
            etf.decode(data, safe=safe)

    _bounded(run)


def _zip_bomb(total: int, declared: int) -> bytes:
    """131, 80, declared size, zlib stream of a BINARY_EXT of ``total - 5`` zeros.

    Built without materialising ``total`` bytes: after a full flush the deflater's
    output for the same 1 MiB chunk of zeros is always the same, so one compressed
    chunk is repeated; the zlib header and Adler-32 trailer are added by hand.
    """
    chunk_size = 1024 * 1024
    chunk = bytes(chunk_size)
    head = b"\x6d" + struct.pack(">I", total - 5)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [deflater.compress(head) + deflater.flush(zlib.Z_FULL_FLUSH)]
    block = deflater.compress(chunk) + deflater.flush(zlib.Z_FULL_FLUSH)
    checksum = zlib.adler32(head)
    remaining = total - 5
    while remaining >= chunk_size:
        parts.append(block)
        checksum = zlib.adler32(chunk, checksum)
        remaining -= chunk_size
    tail = bytes(remaining)
    parts.append(deflater.compress(tail) + deflater.flush(zlib.Z_FINISH))
    checksum = zlib.adler32(tail, checksum)
    stream = b"\x78\xda" + b"".join(parts) + struct.pack(">I", checksum)
    return b"\x83\x50" + struct.pack(">I", declared) + stream


def test_zip_bomb_builder_is_a_valid_stream() -> None:
    total = 3 * 1024 * 1024 + 17
    bomb = _zip_bomb(total, total)
    assert etf.decode(bomb, safe=False) == bytes(total - 5)


@pytest.fixture(scope="module")
def bomb_2gb() -> bytes:
    return _zip_bomb(2 * 10**9, 2 * 10**9)


@pytest.mark.parametrize("safe", [True, False])
def test_zip_bomb_2gb(bomb_2gb: bytes, safe: bool) -> None:
    assert len(bomb_2gb) < 3 * 1024 * 1024

    def run() -> None:
        with pytest.raises(etf.LimitExceeded) as info:
            etf.decode(bomb_2gb, safe=safe)
        assert info.value.limit == "max_decompressed_size"

    _bounded(run)


def test_zip_bomb_lying_about_its_size() -> None:
    """Declared size within limits, but the stream inflates to far more."""
    data = _zip_bomb(64 * 1024 * 1024, 1000)

    def run() -> None:
        with pytest.raises(etf.DecodeError, match="more than its declared"):
            etf.decode(data)

    _bounded(run)


def test_declared_uncompressed_size_wrong() -> None:
    body = etf.encode(list(range(1000)))[1:]
    packed = zlib.compress(body)
    good = b"\x83\x50" + struct.pack(">I", len(body)) + packed
    assert etf.decode(good) == list(range(1000))
    for declared in (len(body) - 1, len(body) + 1, 0, len(body) * 2):
        with pytest.raises(etf.DecodeError):
            etf.decode(b"\x83\x50" + struct.pack(">I", declared) + packed)


def test_compressed_garbage_and_trailing() -> None:
    with pytest.raises(etf.DecodeError, match="zlib"):
        etf.decode(b"\x83\x50\x00\x00\x00\x05" + b"not zlib at all")
    body = etf.encode(Atom_ok := etf.Atom("ok"))[1:]
    inner = zlib.compress(body + b"\x61\x01")  # two terms inside one stream
    with pytest.raises(etf.DecodeError, match="after the term"):
        etf.decode(b"\x83\x50" + struct.pack(">I", len(body) + 2) + inner)
    assert Atom_ok == etf.Atom("ok")
    nested = zlib.compress(b"\x50\x00\x00\x00\x02\x61\x01")
    with pytest.raises(etf.DecodeError, match="only allowed right after"):
        etf.decode(b"\x83\x50\x00\x00\x00\x07" + nested)


@pytest.mark.parametrize("kind", ["tuple", "list", "map"])
@pytest.mark.parametrize("safe", [True, False])
def test_nested_100k_deep(kind: str, safe: bool) -> None:
    if kind == "tuple":
        data = b"\x83" + b"\x68\x01" * DEEP + b"\x6a"
    elif kind == "list":
        data = b"\x83" + b"\x6c\x00\x00\x00\x01" * DEEP + b"\x6a" + b"\x6a" * DEEP
    else:
        data = b"\x83" + b"\x74\x00\x00\x00\x01\x61\x01" * DEEP + b"\x6a"

    def run() -> None:
        with pytest.raises(etf.LimitExceeded) as info:
            etf.decode(data, safe=safe)
        assert info.value.limit == "max_depth"

    _bounded(run)


def test_depth_limit_is_configurable_and_not_recursive() -> None:
    data = b"\x83" + b"\x68\x01" * 50_000 + b"\x6a"
    value = etf.decode(data, limits=etf.DecodeLimits(max_depth=60_000))
    depth = 0
    while isinstance(value, tuple):
        value = value[0]
        depth += 1
    assert depth == 50_000
    assert etf.decode(etf.encode(())) == ()


def test_deep_python_value_encodes_without_recursion() -> None:
    value: object = []
    for _ in range(50_000):
        value = [value]
    data = etf.encode(value)
    with pytest.raises(etf.LimitExceeded):
        etf.decode(data)


@pytest.mark.parametrize(
    "data,error",
    [
        (b"", etf.TruncatedError),
        (b"\x83", etf.TruncatedError),
        (b"\x84\x61\x01", etf.DecodeError),
        (b"\x83\x01", etf.DecodeError),  # unknown tag
        (b"\x83\xff", etf.DecodeError),
        (b"\x83\x79\x00", etf.UnsupportedTermError),  # LOCAL_EXT
        (b"\x83\x44\x00", etf.UnsupportedTermError),  # distribution header
        (b"\x83\x52\x00", etf.UnsupportedTermError),  # atom cache ref
        (b"\x83\x75\x00", etf.UnsupportedTermError),  # old FUN_EXT
        (b"\x83\x77\x02\xc3\x28", etf.DecodeError),  # bad UTF-8 atom
        (b"\x83\x77\x01\xff", etf.DecodeError),
        (b"\x83\x76\x00\x03\xed\xa0\x80", etf.DecodeError),  # UTF-8 surrogate
        (b"\x83\x64\x01\x00" + b"a" * 256, etf.LimitExceeded),  # atom > 255 chars
        (b"\x83\x46\x7f\xf0\x00\x00\x00\x00\x00\x00", etf.DecodeError),  # inf
        (b"\x83\x46\x7f\xf8\x00\x00\x00\x00\x00\x01", etf.DecodeError),  # nan
        (b"\x83\x63" + b"inf".ljust(31, b"\0"), etf.DecodeError),
        (b"\x83\x63" + b"1e999".ljust(31, b"\0"), etf.DecodeError),
        (b"\x83\x63" + b" 1.5".ljust(31, b"\0"), etf.DecodeError),
        (b"\x83\x6e\x01\x02\x05", etf.DecodeError),  # bignum sign 2
        (b"\x83\x4d\x00\x00\x00\x01\x00\x01", etf.DecodeError),  # 0 bits used
        (b"\x83\x4d\x00\x00\x00\x01\x09\x01", etf.DecodeError),
        (b"\x83\x4d\x00\x00\x00\x00\x03", etf.DecodeError),
        (b"\x83\x5a\x00\x00\x77\x01\x61\x00\x00\x00\x00", etf.DecodeError),  # 0-word ref
        (b"\x83\x5a\x00\x06\x77\x01\x61" + b"\x00" * 28, etf.DecodeError),  # 6-word ref
        (b"\x83\x58\x61\x01" + b"\x00" * 12, etf.DecodeError),  # pid node not an atom
        (b"\x83\x71\x77\x01\x6d\x77\x01\x66\x62\x00\x00\x00\x01", etf.UnsafeTermError),
        (b"\x83\x50\x00\x00\x00", etf.TruncatedError),
        (b"\x83\x70\x00\x00\x00\x05\x00", etf.UnsafeTermError),  # funs rejected first in safe mode
    ],
)
def test_malformed(data: bytes, error: type) -> None:
    with pytest.raises(error):
        etf.decode(data)


def test_malformed_fun_size_unsafe() -> None:
    fun = etf.encode(etf.ExportFun(etf.Atom("m"), etf.Atom("f"), 1))
    assert etf.decode(fun, safe=False) == etf.ExportFun(etf.Atom("m"), etf.Atom("f"), 1)
    with pytest.raises(etf.DecodeError):
        etf.decode(b"\x83\x71\x77\x01\x6d\x77\x01\x66\x62\x00\x00\x00\x01", safe=False)
    with pytest.raises(etf.DecodeError):
        etf.decode(b"\x83\x70\x00\x00\x00\x05\x00", safe=False)


def test_limits_each_named() -> None:
    cases = {
        "max_input_size": (etf.encode(b"x" * 100), etf.DecodeLimits(max_input_size=50)),
        "max_container_len": (etf.encode(list(range(300, 400))), etf.DecodeLimits(max_container_len=10)),
        "max_total_terms": (etf.encode([(1, 2)] * 10), etf.DecodeLimits(max_total_terms=20)),
        "max_bignum_bytes": (etf.encode(2**100), etf.DecodeLimits(max_bignum_bytes=8)),
        "max_atom_length": (etf.encode(etf.Atom("abcdef")), etf.DecodeLimits(max_atom_length=3)),
        "max_binary_size": (etf.encode(b"x" * 100), etf.DecodeLimits(max_binary_size=10)),
        "max_decompressed_size": (etf.encode(b"x" * 1000, compressed=True), etf.DecodeLimits(max_decompressed_size=100)),
        "max_depth": (etf.encode([[[1000]]]), etf.DecodeLimits(max_depth=2)),
        "max_containers": (etf.encode([(1,), [300], {}, ()]), etf.DecodeLimits(max_containers=4)),
        "max_terms_per_compressed_byte": (
            etf.encode([300] * 5000, compressed=True),
            etf.DecodeLimits(max_terms_per_compressed_byte=1, compressed_terms_allowance=100),
        ),
    }
    for name, (data, limits) in cases.items():
        with pytest.raises(etf.LimitExceeded) as info:
            etf.decode(data, limits=limits)
        assert info.value.limit == name and name in str(info.value)
    with pytest.raises(etf.LimitExceeded):
        etf.decode_from(b"xx" + etf.encode(b"x" * 100), 2, limits=etf.DecodeLimits(max_input_size=50))


def test_error_messages_name_offset() -> None:
    with pytest.raises(etf.DecodeError) as info:
        etf.decode(b"\x83\x68\x02\x61\x01\x01")
    assert info.value.offset == 5 and "unknown tag 1" in str(info.value) and "offset 5" in str(info.value)


def test_default_limits_documented() -> None:
    import dataclasses
    import pathlib

    limits = etf.DecodeLimits()
    assert limits.max_atom_length == 255
    table = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "terms.md").read_text()
    for field in dataclasses.fields(limits):
        assert f"| `{field.name}` |" in table, f"{field.name} is not in docs/terms.md's table of limits"
    with pytest.raises(ValueError):
        etf.DecodeLimits(max_depth=-1)
    assert etf.DecodeLimits(atoms={"a"}).atoms == frozenset({"a"})
