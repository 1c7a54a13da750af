"""The decoder's and encoder's fast paths give the same results and errors as the slow ones.

The hot loop decodes common tags inline and caches atoms and pids by their encoded
bytes; these tests pin the cases where a shortcut could differ from the general path.
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import pytest

from pyfabric import etf
from pyfabric.etf import Atom, ImproperList, Pid, Reference


def test_cached_atom_never_matches_a_truncated_encoding() -> None:
    assert etf.decode(etf.encode(Atom("ok"), minor_version=1)) == Atom("ok")
    assert etf.decode(etf.encode(Atom("ok"), minor_version=2)) == Atom("ok")
    # The name bytes present ("ok") are a cached atom, but the length says 3.
    for data in (b"\x83d\x00\x03ok", b"\x83w\x03ok"):
        with pytest.raises(etf.TruncatedError):
            etf.decode(data)
        with pytest.raises(etf.TruncatedError):
            etf.decode(b"\x83h\x01" + data[1:])


def test_cached_pid_never_matches_a_truncated_encoding() -> None:
    pid = Pid(Atom("srv@vm"), 100, 0, 3)
    data = etf.encode(pid, minor_version=1)
    assert etf.decode(data) == pid
    for cut in range(2, len(data)):
        with pytest.raises(etf.TruncatedError):
            etf.decode(data[:cut])
        with pytest.raises(etf.TruncatedError):
            etf.decode(b"\x83h\x01" + data[1:cut])


@pytest.mark.parametrize("minor_version", [1, 2])
@pytest.mark.parametrize("kind", ["atom", "pid", "reference", "port"])
def test_cached_atoms_still_obey_limits_and_allow_list(kind: str, minor_version: int) -> None:
    name = "a" * 200
    atom = Atom(name)
    term = {
        "atom": atom,
        "pid": Pid(atom, 1, 2, 3),
        "reference": Reference(atom, 1, (2, 3)),
        "port": etf.Port(atom, 1, 2),
    }[kind]
    data = etf.encode((term, [term]), minor_version=minor_version)
    assert etf.decode(data) == (term, [term])  # fills the caches
    with pytest.raises(etf.LimitExceeded, match="max_atom_length"):
        etf.decode(data, limits=etf.DecodeLimits(max_atom_length=100))
    with pytest.raises(etf.UnsafeTermError):
        etf.decode(data, limits=etf.DecodeLimits(atoms=frozenset({"other"})))
    assert etf.decode(data, limits=etf.DecodeLimits(atoms=frozenset({name}))) == (term, [term])


def test_references_decode_with_each_id_count_and_node_form() -> None:
    for minor_version in (1, 2):
        for node in ("srv@vm", "n\u00e9@h"):
            for ids in ((1,), (1, 2, 3), (1, 2, 3, 4, 5)):
                ref = Reference(Atom(node), 7, ids)
                data = etf.encode([ref, (ref,)], minor_version=minor_version)
                assert etf.decode(data) == [ref, (ref,)]
                for cut in range(2, len(data) - 1):
                    with pytest.raises(etf.TruncatedError):
                        etf.decode(data[:cut])
    bad = bytearray(etf.encode(Reference(Atom("n@h"), 1, (1,)), minor_version=1))
    bad[3] = 6  # six id words: invalid
    with pytest.raises(etf.DecodeError, match="1 to 5 id words"):
        etf.decode(bytes(bad))


@pytest.mark.parametrize(
    "term",
    [
        [1000, 2000, 3000],
        [Atom("a"), [Atom("b")]],
        ImproperList((1, 2), Atom("t")),
        ImproperList((1,), b"tail"),
        [ImproperList(([],), ())],
        {(1, etf.FrozenList([2000, 3000])): [4000], etf.FrozenList([1000]): {Atom("k"): [1000]}},
        [[], [[]], [[], []]],
    ],
)
def test_list_tails(term: object) -> None:
    for minor_version in (1, 2):
        data = etf.encode(term, minor_version=minor_version)
        assert etf.decode(data) == term
        assert etf.encode(etf.decode(data), minor_version=minor_version) == data


def test_list_tail_forms_from_erlang() -> None:
    # [1 | [2]] written with an explicit non-NIL tail: a proper list, as in Erlang.
    assert etf.decode(bytes.fromhex("836C00000001610" + "16C00000001610" + "26A")) == [1, 2]
    assert etf.decode(bytes.fromhex("836C0000000161016B00026263")) == [1, 98, 99]  # [1 | "bc"]
    assert etf.decode(bytes.fromhex("836C00000000" + "6A")) == []  # empty LIST_EXT: its tail
    with pytest.raises(etf.TruncatedError):
        etf.decode(bytes.fromhex("836C000000016101"))  # no tail


def test_map_keys_with_lists_are_frozen() -> None:
    data = etf.encode({(1, etf.FrozenList([2000])): [3000], etf.FrozenList([]): 1})
    value = etf.decode(data)
    key = next(iter(value))
    assert type(key[1]) is etf.FrozenList and type(value[key]) is list


def test_zip_bomb_declaring_zero_bytes_is_bounded() -> None:
    """Declared size 0 must not mean "no output limit" (zlib's max_length=0)."""
    stream = zlib.compress(bytes(64 * 1024 * 1024), 9)
    tracemalloc.start()
    try:
        with pytest.raises(etf.DecodeError, match="more than its declared"):
            etf.decode(b"\x83\x50" + struct.pack(">I", 0) + stream)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_compressed_term_does_not_copy_the_rest_of_the_buffer() -> None:
    term = (Atom("msg"), "x" * 300)
    data = etf.encode(term, compressed=True)
    assert data[1] == 80
    buf = data + bytes(32 * 1024 * 1024)
    tracemalloc.start()
    try:
        value, end = etf.decode_from(buf, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert value == term and end == len(data)
    assert peak < 1024 * 1024


def test_padded_zlib_stream_longer_than_compress_bound() -> None:
    """Empty deflate blocks make a valid stream of any length: still decoded exactly."""
    body = etf.encode([Atom("ok")] * 10)[1:]
    deflater = zlib.compressobj(6)
    stream = deflater.compress(body) + deflater.flush(zlib.Z_FULL_FLUSH)  # byte aligned now
    stream += b"\x00\x00\x00\xff\xff" * 200  # empty stored blocks: no output
    stream += deflater.flush(zlib.Z_FINISH)
    assert len(stream) > 2 * len(body) + 64
    data = b"\x83\x50" + struct.pack(">I", len(body)) + stream
    assert etf.decode(data) == [Atom("ok")] * 10
    value, end = etf.decode_from(data + b"trailing" * 100, 0)
    assert value == [Atom("ok")] * 10 and end == len(data)
    with pytest.raises(etf.TruncatedError):
        etf.decode_from(data[:-10], 0)


@pytest.mark.parametrize(
    "value,tag",
    [
        ([300, 600], 108),
        ([5, 300], 108),
        ([5, -1], 108),
        ([5, "a"], 108),
        ([5, True], 108),
        ([5, 2.0], 108),
        ([5, 6], 107),
        (list(range(256)), 107),
        ([0] * 65535, 107),
        ([0] * 65536, 108),
        ("caf\u00e9", 107),
        ("caf\u00e9 \u2603", 108),
        ("\ud800", 108),
        ("\u00e9" * 65535, 107),
        ("\u00e9" * 65536, 108),
    ],
)
def test_string_ext_choice(value: object, tag: int) -> None:
    data = etf.encode(value)
    assert data[1] == tag
    assert etf.encode(etf.decode(data)) == data


def test_encode_pid_and_reference_fast_paths() -> None:
    node = Atom("n@h")
    assert etf.encode(Pid(node, 7, 1, 2)).hex().upper() == "835877036E4068000000070000000100000002"
    ref = Reference(node, 2, (1, 2, 3))
    assert etf.encode(ref).hex().upper() == "835A000377036E406800000002000000010000000200000003"
    for ids in ((1,), (1, 2, 3, 4, 5)):
        ref = Reference(Atom("caf\u00e9"), 9, ids)
        for minor_version in (0, 1, 2):
            assert etf.decode(etf.encode(ref, minor_version=minor_version)) == ref


def test_options_cache_is_keyed_by_limits_identity() -> None:
    data = etf.encode([[[1000]]])
    for depth in (1, 2, 3):
        limits = etf.DecodeLimits(max_depth=depth)
        if depth < 3:
            with pytest.raises(etf.LimitExceeded):
                etf.decode(data, limits=limits)
        else:
            assert etf.decode(data, limits=limits) == [[[1000]]]
    # Equal limits objects created and dropped repeatedly: ids may be reused.
    for _ in range(200):
        assert etf.decode(etf.encode([[1000]]), limits=etf.DecodeLimits(max_depth=5)) == [[1000]]
        with pytest.raises(etf.LimitExceeded):
            etf.decode(etf.encode([[1000]]), limits=etf.DecodeLimits(max_depth=1))
