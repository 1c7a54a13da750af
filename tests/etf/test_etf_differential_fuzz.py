"""The C backend against the Python one (issue 15): the same bytes, values and errors.

Each test runs both backends' entry points (``_accel`` and ``_decode``/``_encode``) on
the same input in one process and compares what comes out exactly: encoded bytes;
decoded values by their exact shape (:func:`shape`: every term's exact type and ``repr``,
which tells ``1`` from ``1.0`` and ``True``, a list from a FrozenList, a dict from a
FrozenDict or an ErlangMap) and end offsets; errors by
class, message and offset. Skipped unless the C backend is the active one (an install
without a compiler has only the Python backend; ``make unit`` requires the C one, see
test_etf_backend.py). ``make fuzz`` runs it longer (FUZZ_SECONDS).
"""

from __future__ import annotations

import gc
import os
import struct
import tracemalloc
import zlib
from collections import OrderedDict
from enum import IntEnum
from typing import Any

import pytest
from etf_strategies import terms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfabric import etf
from pyfabric.etf import (
    Atom,
    DecodeLimits,
    ErlangMap,
    FrozenDict,
    FrozenList,
    ImproperList,
    Pid,
    Reference,
    _decode,
    _encode,
)

if etf.implementation != "c":
    pytest.skip("the C backend is not the active one", allow_module_level=True)
from pyfabric.etf import _accel

_SCALE = max(1, int(os.environ.get("FUZZ_SECONDS", "20")) // 20)
DIFF = settings(max_examples=300 * _SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TIGHT = DecodeLimits(
    max_input_size=400,
    max_depth=3,
    max_container_len=6,
    max_total_terms=20,
    max_containers=5,
    max_bignum_bytes=9,
    max_atom_length=6,
    max_binary_size=8,
    max_decompressed_size=300,
)
ALLOWED = DecodeLimits(atoms=frozenset({"ok", "m", "pr", "pl", "a@b", "srv@vm"}))
SHORT_ATOMS = DecodeLimits(max_atom_length=3)
_RELAXED = DecodeLimits(max_bignum_bytes=1 << 20)
OPTION_SETS = [
    {},
    {"safe": False},
    {"python_atoms": True, "strings": "list"},
    {"safe": False, "python_atoms": True, "strings": "list", "limits": _RELAXED},
    {"limits": TIGHT},
    {"limits": TIGHT, "strings": "list"},
    {"limits": ALLOWED},
    {"limits": SHORT_ATOMS, "python_atoms": True},
]


def _opts(options: dict[str, Any]) -> _decode.Options:
    """The resolved options ``etf.decode(..., **options)`` passes to its backend."""
    safe = options.get("safe", True)
    limits = options.get("limits") or (etf.DEFAULT_LIMITS if safe else etf.RELAXED_LIMITS)
    return _decode.Options(limits, safe, options.get("python_atoms", False), options.get("strings", "str"))


def shape(value: Any) -> list[Any]:
    """The exact shape of a decoded value, flat and iteratively (values may be 10 000 deep):
    each term as its exact type and its leaf value or its length, then its children."""
    out: list[Any] = []
    todo = [value]
    while todo:
        v = todo.pop()
        t = type(v)
        if t in (tuple, list, FrozenList):
            children = list(v)
        elif t in (dict, FrozenDict):
            children = [x for pair in v.items() for x in pair]
        elif t is ErlangMap:
            children = [x for pair in v.pairs for x in pair]
        elif t is ImproperList:
            children = [*v.elements, v.tail]
        elif t is etf.Fun:
            children = list(v.free_vars)
            out.append(v.raw)
        else:
            out.append((t, repr(v)))
            continue
        out.append((t, len(children)))
        todo.extend(reversed(children))
    return out


def _outcome(fn: Any, *args: Any) -> tuple[Any, ...]:
    try:
        value, end = fn(*args)
    except Exception as exc:  # compared, whatever it is: both backends must agree
        return ("error", type(exc), str(exc), getattr(exc, "offset", None))
    return ("ok", shape(value), end)


def assert_same_decoding(data: bytes, pos: int = 0) -> None:
    for options in OPTION_SETS:
        opts = _opts(options)
        for version in (True, False):
            c = _outcome(_accel.decode_versioned, data, pos, opts, version)
            py = _outcome(_decode.decode_versioned, data, pos, opts, version)
            assert c == py, (data, options, version)
        if len(data) > pos + 1:
            assert _outcome(_accel.decode_term, data, pos + 1, opts) == _outcome(_decode.decode_term, data, pos + 1, opts)


def _encode_outcome(fn: Any, term: Any, compressed: bool | int, minor_version: int) -> tuple[Any, ...]:
    try:
        return ("ok", fn(term, compressed, minor_version))
    except Exception as exc:  # compared
        return ("error", type(exc), str(exc))


def assert_same_encoding(term: Any) -> None:
    for minor_version in (0, 1, 2):
        for compressed in (False, True):
            c = _encode_outcome(_accel.encode, term, compressed, minor_version)
            py = _encode_outcome(_encode.encode, term, compressed, minor_version)
            assert c == py, (term, minor_version, compressed)


# --- random terms ------------------------------------------------------------------


@DIFF
@given(terms)
def test_random_terms_encode_identically_and_decode_equal(term: Any) -> None:
    assert_same_encoding(term)
    for minor_version in (1, 2):
        assert_same_decoding(_encode.encode(term, False, minor_version))
    assert_same_decoding(_encode.encode(term, 9, 2))


@DIFF
@given(terms, st.data())
def test_compressed_bodies_decode_alike(term: Any, data: st.DataObject) -> None:
    """Mutate inside the zlib stream's payload (the C decoder decodes inflated bodies), and
    declare sizes around the real one."""
    body = bytearray(_encode.encode(term, False, 2)[1:])
    if data.draw(st.booleans()):
        where = data.draw(st.integers(0, len(body) - 1))
        body[where] = data.draw(st.integers(0, 255))
    declared = len(body) + data.draw(st.sampled_from([0, 0, 0, -1, 1]))
    packed = b"\x83P" + struct.pack(">I", max(0, declared)) + zlib.compress(bytes(body))
    assert_same_decoding(packed)
    assert_same_decoding(packed + b"\x00")


@DIFF
@given(terms, st.data())
def test_mutated_encodings_decode_alike(term: Any, data: st.DataObject) -> None:
    raw = bytearray(_encode.encode(term, False, data.draw(st.sampled_from([1, 2]))))
    mode = data.draw(st.sampled_from(["truncate", "flip", "byte", "insert", "length"]))
    where = data.draw(st.integers(0, len(raw) - 1))
    if mode == "truncate":
        del raw[where:]
    elif mode == "flip":
        raw[where] ^= 1 << data.draw(st.integers(0, 7))
    elif mode == "byte":
        raw[where] = data.draw(st.integers(0, 255))
    elif mode == "insert":
        raw[where:where] = data.draw(st.binary(min_size=1, max_size=3))
    else:  # a huge or off-by-one length where a length field may be
        value = data.draw(st.sampled_from([0, 1, 2, 255, 256, 65535, 2**31 - 1, 2**32 - 1]))
        raw[where + 1 : where + 5] = struct.pack(">I", value)
    assert_same_decoding(bytes(raw))


@DIFF
@given(st.binary(max_size=64))
def test_random_bytes_decode_alike(data: bytes) -> None:
    assert_same_decoding(b"\x83" + data)


@DIFF
@given(terms, st.binary(max_size=6), st.integers(0, 3))
def test_offsets_and_trailing_bytes(term: Any, trailing: bytes, lead: int) -> None:
    assert_same_decoding(b"\x00" * lead + _encode.encode(term, False, 2) + trailing, lead)


# --- edges, written out --------------------------------------------------------------


def _nested(depth: int, opener: bytes, closer: bytes, leaf: bytes = b"j") -> bytes:
    return b"\x83" + opener * depth + leaf + closer * depth


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4, 511, 512, 513, 10_000, 10_001])
def test_deep_nesting_at_the_limits(depth: int) -> None:
    assert_same_decoding(_nested(depth, b"l\x00\x00\x00\x01", b"j"))  # [[[...]]]
    assert_same_decoding(_nested(depth, b"h\x01", b""))  # {{{...}}}
    assert_same_decoding(_nested(depth, b"t\x00\x00\x00\x01a\x01", b""))  # #{1 => #{1 => ...}}
    assert_same_decoding(_nested(depth, b"t\x00\x00\x00\x01", b"a\x01"))  # keys: #{#{... => 1} => 1}


HOSTILE = [
    b"\x83m\xff\xff\xff\xffabcd",  # a 4 GB binary declared in 10 bytes
    b"\x83l\xff\xff\xff\xffj",  # a huge list
    b"\x83i\xff\xff\xff\xff",  # a huge tuple
    b"\x83t\x7f\xff\xff\xff",  # a huge map
    b"\x83o\xff\xff\xff\xff\x00",  # a huge bignum
    b"\x83n\x09\x00" + b"\xff" * 9,  # a bignum at TIGHT's limit
    b"\x83n\x0a\x00" + b"\xff" * 10,  # and one past it
    b"\x83n\x01\x02\x01",  # a bad sign byte
    b"\x83k\xff\xff",  # STRING_EXT longer than the input
    b"\x83k\x00\x06abcdef",
    b"\x83k\x00\x15" + b"x" * 21,  # more terms than TIGHT allows as a list
    b"\x83w\x07abcdefg",  # an atom over SHORT_ATOMS's and TIGHT's length
    b"\x83w\x02\xc3\x28",  # invalid UTF-8 atom
    b"\x83d\x00\x02ok",
    b"\x83s\x02ok",  # SMALL_ATOM_EXT (Latin-1): decoded by the Python function for the tag
    b"\x83v\x00\x02ok",
    b"\x83w\x04true",
    b"\x83F\x7f\xf0\x00\x00\x00\x00\x00\x00",  # inf
    b"\x83F\x7f\xf8\x00\x00\x00\x00\x00\x00",  # nan
    b"\x83F\x3f\xf0\x00\x00",  # truncated float
    b"\x83c" + b"1.50000000000000000000e+00".ljust(31, b"\x00"),  # FLOAT_EXT
    b"\x83P\x00\x00\x00\x04x\x9c\xcbe\x00\x00\x00\xd5\x00\xd4",
    b"\x83l\x00\x00\x00\x00a\x07",  # an empty LIST_EXT is just its tail
    b"\x83l\x00\x00\x00\x01a\x01a\x02",  # improper
    b"\x83l\x00\x00\x00\x01a\x01l\x00\x00\x00\x01a\x02j",  # [1 | [2]]
    b"\x83l\x00\x00\x00\x01a\x01k\x00\x02ab",  # [1 | "ab"]
    b"\x83l\x00\x00\x00\x01a\x01k\x00\x00",  # [1 | ""]: STRING_EXT of 0 bytes is a tail
    b"\x83t\x00\x00\x00\x02a\x01a\x02a\x01a\x03",  # duplicate keys
    b"\x83t\x00\x00\x00\x02a\x01a\x02F\x3f\xf0\x00\x00\x00\x00\x00\x00a\x03",  # 1 and 1.0
    b"\x83t\x00\x00\x00\x01l\x00\x00\x00\x01jjj",  # a list key holding []
    b"\x83t\x00\x00\x00\x01t\x00\x00\x00\x00a\x01",  # #{#{} => 1}
    b"\x83t\x00\x00\x00\x01k\x00\x02aba\x01",  # a STRING_EXT key (a list with strings="list")
    b"\x83h\x00",
    b"\x83i\x00\x00\x00\x00",
    b"\x83t\x00\x00\x00\x00",
    b"\x83j",
    b"\x83hj",
    b"\x83h\x02jjj",
    b"\x83X",
    b"\x83Xw\x04a@bc\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03",
    b"\x83Xw\x04a@b\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03",
    b"\x83Xw\x04a@b\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00",
    b"\x83Xs\x03a@b\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03",
    b"\x83Z\x00\x02w\x03a@b\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03",
    b"\x83Z\x00\x02w\x03a@b\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00",
    b"\x83Z\x00\x00w\x03a@b\x00\x00\x00\x01",
    b"\x83Z\x00\x06w\x03a@b" + b"\x00" * 28,
    b"\x83Z\x00\x01d\x00\x03a@b\x00\x00\x00\x01\x00\x00\x00\x02",
    b"\x83r\x00\x01w\x03a@b\x01\x00\x00\x00\x02",
    b"\x83e\x00\x00\x00\x01",
    b"\x83y",
    b"\x83R\x00",
    b"\x83\xff",
    b"\x83qw\x01mw\x01fa\x02",  # an export fun: rejected unless safe=False
    b"\x83M\x00\x00\x00\x01\x03\xe0",  # a bit binary
    b"\x83M\x00\x00\x00\x01\x08\xe0",
    b"\x83p\x00\x00\x00\x00",  # a truncated NEW_FUN_EXT
    b"\x83h\x01P\x00\x00\x00\x01",  # a compressed term not right after the version byte
    b"\x83",
    b"",
    b"\x82a\x01",
    b"\x83a\x01\x00",
    b"\x83b\xff\xff\xff\xfe",
]


@pytest.mark.parametrize("data", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_and_edge_inputs_decode_alike(data: bytes) -> None:
    assert_same_decoding(data)
    for cut in range(len(data)):
        assert_same_decoding(data[:cut])


def test_container_budget_edges() -> None:
    for count in range(7):  # TIGHT: 6 elements per container, 5 containers, 20 terms
        assert_same_decoding(b"\x83l" + struct.pack(">I", count) + b"a\x01" * count + b"j")
        assert_same_decoding(b"\x83h" + bytes((count,)) + b"j" * count)
        assert_same_decoding(b"\x83h" + bytes((count,)) + b"h\x03a\x01a\x02a\x03" * count)


class Colour(IntEnum):
    RED = 1


class Weird:
    def __repr__(self) -> str:
        return "Weird()"


def _cycle() -> list[Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return loop


NODE = Atom("srv@vm")
ENCODE_EDGES: list[Any] = [
    (Atom("m"), (Atom("pr"), 5), ((Atom("pl"), 7), 12345)),
    [0, 255],
    [0, 256],
    [0, True],
    [1, 2.0],
    list(range(256)) * 256,  # more than 65535 bytes: a LIST_EXT
    "a" * 65535,
    "a" * 65536,
    "caf\u00e9",
    "\u2603",
    "\ud800",  # a lone surrogate in a charlist
    Atom("\u2603"),
    Atom("caf\u00e9"),
    Atom("x" * 255),
    2**31 - 1,
    2**31,
    -(2**31),
    -(2**31) - 1,
    2**64,
    -(2**2040),
    -(2**2048),
    0.0,
    -0.0,
    1e308,
    float("inf"),
    float("nan"),
    True,
    None,
    b"",
    b"x" * 70_000,
    bytearray(b"ab"),
    memoryview(b"ab"),
    Colour.RED,
    OrderedDict(a=1),
    Weird(),
    {1, 2},
    {Atom("a"): [1], "b": (2,)},
    FrozenDict({1: FrozenList([1, 2])}),
    FrozenList([]),
    FrozenList([300, 1]),
    FrozenList([1, 2]),
    ErlangMap([(1, Atom("a")), (1.0, Atom("b"))]),
    ImproperList((1, 2), Atom("t")),
    ImproperList((1,), ""),
    Pid(NODE, 1, 2, 3),
    Reference(NODE, 3, (1, 2, 3, 4, 5)),
    etf.Port(NODE, 2**40, 1),
    etf.Port(NODE, 7, 1),
    etf.BitString(b"\xe0", 3),
    etf.ExportFun(Atom("m"), Atom("f"), 2),
    (),
    [],
    {},
    _cycle(),
    [[Weird()]],
    (1, [2, {3: Weird()}]),
]


@pytest.mark.parametrize("term", ENCODE_EDGES, ids=range(len(ENCODE_EDGES)))
def test_edge_values_encode_alike(term: Any) -> None:
    assert_same_encoding(term)


def test_deep_values_encode_alike_at_the_encoder_depth_guard() -> None:
    for depth in (_encode.MAX_ENCODE_DEPTH - 1, _encode.MAX_ENCODE_DEPTH, _encode.MAX_ENCODE_DEPTH + 1):
        nested: Any = 1
        for _ in range(depth):
            nested = [nested]
        assert_same_encoding(nested)
    frozen: Any = 1
    for _ in range(_encode.MAX_ENCODE_DEPTH // 2):
        frozen = FrozenList([frozen])
    assert_same_encoding(frozen)  # a FrozenList counts twice in the Python encoder's stack


def test_atoms_are_interned_and_shared_with_the_python_backend() -> None:
    opts = _opts({})
    value, _ = _accel.decode_versioned(b"\x83w\x0bdiff_atom_1", 0, opts)
    assert value is Atom("diff_atom_1")
    value, _ = _decode.decode_versioned(b"\x83w\x0bdiff_atom_2", 0, opts)
    assert _accel.decode_versioned(b"\x83w\x0bdiff_atom_2", 0, opts)[0] is value


def test_no_memory_is_kept_by_repeated_decodes_and_encodes() -> None:
    """Every path (success, each deferral, each error) frees what it built: after a warm-up,
    a few thousand more rounds hold no more memory (tracemalloc also sees PyMem_Malloc)."""
    values = [term for term in ENCODE_EDGES if len(repr(term)) < 200 and "[...]" not in repr(term)]  # small, acyclic
    corpus = [data for data in HOSTILE if data]
    for term in values:
        try:
            corpus.append(_encode.encode(term, False, 2))
        except etf.EncodeError:
            pass
    opts_list = [_opts(options) for options in OPTION_SETS]

    def rounds(n: int) -> None:
        for _ in range(n):
            for data in corpus:
                for opts in opts_list:
                    try:
                        _accel.decode_versioned(data, 0, opts)
                    except etf.ETFError:
                        pass
            for term in values:
                try:
                    _accel.encode(term, False, 2)
                except (etf.EncodeError, ValueError):
                    pass

    rounds(3)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        rounds(10)
        gc.collect()  # the errors' tracebacks are cycles
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 16 * 1024, f"{grown} bytes more after 10 rounds"


def test_collector_walking_every_object_during_a_decode_sees_only_complete_containers() -> None:
    """The C decoder calls Python helpers (here: a port's, a new atom's) with containers still
    being filled; a collection then, and anything it runs, must find only complete ones."""
    walked = []

    def walk_all(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            for obj in gc.get_objects():
                if type(obj) in (list, tuple) and len(obj) < 8:
                    for _ in obj:
                        pass
            walked.append(phase)

    data = _encode.encode([(Atom(f"gc_walk_{i}"), [i, etf.Port(NODE, i, 1)]) for i in range(40)], False, 2)
    threshold = gc.get_threshold()
    gc.callbacks.append(walk_all)
    gc.set_threshold(1, 1, 1)
    try:
        value, _ = _accel.decode_versioned(data, 0, _opts({}))
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(walk_all)
    assert walked
    assert shape(value) == shape(_decode.decode_versioned(data, 0, _opts({}))[0])
