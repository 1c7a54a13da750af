"""Every recorded wire vector decodes (or is rejected as documented), re-encodes
byte-exactly, and every strict prefix of it raises DecodeError and nothing else."""

from __future__ import annotations

import pathlib

import pytest
from conformance_corpus import LEGACY_DIR

from pyfabric import etf

VECTOR_DIR = LEGACY_DIR
VECTORS = sorted(VECTOR_DIR.glob("*.bin"))
NOT_ETF = {"42_c2s_garbage_hello.bin", "45_c2s_garbage_frame.bin"}  # raw-client garbage
FUN_VECTOR = "32_c2s_m_fun_payload_compressed.bin"


def test_vectors_present() -> None:
    assert len(VECTORS) >= 50


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.name)
def test_vector_decodes_and_reencodes(path: pathlib.Path) -> None:
    data = path.read_bytes()
    if path.name in NOT_ETF:
        with pytest.raises(etf.DecodeError, match="version byte"):
            etf.decode(data, safe=False)
        return
    term = etf.decode(data, safe=False)
    # The fabric peers encode with [{minor_version,1}] (+ compressed for m frames).
    assert etf.encode(term, compressed=data[1] == 80, minor_version=1) == data
    if path.name == FUN_VECTOR:
        with pytest.raises(etf.UnsafeTermError):
            etf.decode(data)
    else:
        assert etf.decode(data) == term


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.name)
def test_every_prefix_is_an_error(path: pathlib.Path) -> None:
    data = path.read_bytes()
    for cut in range(len(data)):
        with pytest.raises(etf.DecodeError):
            etf.decode(data[:cut], safe=False)
    if path.name not in NOT_ETF and data[1] != 80:
        # Uncompressed prefixes are "incomplete", which a stream reader can wait on.
        for cut in range(len(data)):
            with pytest.raises(etf.TruncatedError):
                etf.decode_from(data[:cut], safe=False)


def test_vector_with_trailing_bytes() -> None:
    data = (VECTOR_DIR / "01_c2s_hello.bin").read_bytes()
    with pytest.raises(etf.DecodeError, match="unexpected bytes"):
        etf.decode(data + b"\x83")
    assert etf.decode_from(data + b"\x83") == (etf.decode(data), len(data))


def test_vector_one_byte_at_a_time() -> None:
    """A stream reader fed one byte at a time sees TruncatedError until the end."""
    data = (VECTOR_DIR / "07_c2s_m_rich_payload_compressed.bin").read_bytes()
    buf = b""
    for i, byte in enumerate(data):
        buf += bytes((byte,))
        if i < len(data) - 1:
            with pytest.raises(etf.DecodeError):
                etf.decode_from(buf)
    assert etf.decode_from(buf)[1] == len(data)
