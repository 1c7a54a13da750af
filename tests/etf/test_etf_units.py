"""Per-tag unit tests with bytes recorded from Erlang/OTP 25 (term_to_binary in erl)."""

from __future__ import annotations

import pytest

from pyfabric import etf
from pyfabric.etf import Atom, BitString, ExportFun, ImproperList, Pid, Port, Reference

N = Atom("n@h")

# (name, hex from erl, decoded value, encode kwargs that reproduce the bytes)
KNOWN = [
    ("small_int", "83612A", 42, {}),
    ("int_neg", "8362FFFFFFFB", -5, {}),
    ("int", "836200011170", 70000, {}),
    ("int_min", "836280000000", -(2**31), {}),
    ("small_big", "836E0600000000000001", 1 << 40, {}),
    ("small_big_neg", "836E0601000000000001", -(1 << 40), {}),
    ("small_big_2_31", "836E040000000080", 2**31, {}),
    ("large_big", "836F0000010100" + "00" * 256 + "01", 1 << 2048, {}),
    ("new_float", "8346400A000000000000", 3.25, {"minor_version": 1}),
    ("neg_zero", "83468000000000000000", -0.0, {"minor_version": 1}),
    (
        "float_ext",
        "8363332E3235303030303030303030303030303030303030652B30300000000000",
        3.25,
        {"minor_version": 0},
    ),
    ("atom_ext", "836400026F6B", Atom("ok"), {"minor_version": 1}),
    ("small_atom_utf8", "8377026F6B", Atom("ok"), {"minor_version": 2}),
    ("atom_latin1_m1", "83640004636166E9", Atom("caf\u00e9"), {"minor_version": 1}),
    ("atom_latin1_m2", "837705636166C3A9", Atom("caf\u00e9"), {"minor_version": 2}),
    ("atom_unicode_m1", "837703E29883", Atom("\u2603"), {"minor_version": 1}),
    ("atom_unicode_m0", "837703E29883", Atom("\u2603"), {"minor_version": 0}),
    ("atom_255_m1", "836400FF" + "61" * 255, Atom("a" * 255), {"minor_version": 1}),
    ("atom_255_m2", "8377FF" + "61" * 255, Atom("a" * 255), {"minor_version": 2}),
    ("atom_utf8_ext", "8376012C" + "E188B4" * 100, Atom("\u1234" * 100), {"minor_version": 2}),
    ("small_tuple", "8368026101770161", (1, Atom("a")), {}),
    ("empty_tuple", "836800", (), {}),
    ("large_tuple", "836900000100" + "6100" * 256, (0,) * 256, {}),
    ("nil", "836A", [], {}),
    ("string", "836B00026869", "hi", {}),
    ("list_int", "836C0000000162000003E86A", [1000], {}),
    ("improper", "836C0000000161016102", ImproperList((1,), 2), {}),
    ("binary", "836D00000003010203", b"\x01\x02\x03", {}),
    ("empty_binary", "836D00000000", b"", {}),
    ("bit_binary", "834D0000000103A0", BitString(b"\xa0", 3), {}),
    ("bit_binary2", "834D00000002040120", BitString(b"\x01\x20", 4), {}),
    ("map", "8374000000017701616101", {Atom("a"): 1}, {}),
    ("empty_map", "837400000000", {}, {}),
    ("new_pid", "835877036E4068000000070000000100000002", Pid(N, 7, 1, 2), {}),
    ("new_port", "835977036E40680000000900000002", Port(N, 9, 2), {}),
    ("v4_port", "837877036E4068000000010000000900000002", Port(N, (1 << 32) | 9, 2), {}),
    ("newer_reference", "835A000377036E406800000002000000010000000200000003", Reference(N, 2, (1, 2, 3)), {}),
    ("export", "837177056C6973747377036D61706102", ExportFun(Atom("lists"), Atom("map"), 2), {}),
    ("unicode_charlist", "836C00000002620000260361616A", [0x2603, 97], {}),
    ("compressed", "835000000067789CCB664849A4030000CCCB26B4", "a" * 100, {"compressed": True, "minor_version": 1}),
    (
        "compressed_tuple",
        "8350000000FC789CCB304A6160CACF1E91040025893F1B",
        (Atom("ok"),) * 50,
        {"compressed": True, "minor_version": 1},
    ),
]


@pytest.mark.parametrize("name,hexdata,value,kwargs", KNOWN, ids=[k[0] for k in KNOWN])
def test_decode_known_bytes(name: str, hexdata: str, value: object, kwargs: dict) -> None:
    decoded = etf.decode(bytes.fromhex(hexdata), safe=False)
    assert decoded == value
    assert type(decoded) is type(value)


@pytest.mark.parametrize("name,hexdata,value,kwargs", KNOWN, ids=[k[0] for k in KNOWN])
def test_encode_known_bytes(name: str, hexdata: str, value: object, kwargs: dict) -> None:
    assert etf.encode(value, **kwargs).hex().upper() == hexdata


def test_neg_zero_keeps_sign() -> None:
    assert str(etf.decode(bytes.fromhex("83468000000000000000"))) == "-0.0"


@pytest.mark.parametrize(
    "hexdata,value",
    [
        # old formats Erlang still decodes (PID_EXT, PORT_EXT, REFERENCE_EXT, NEW_REFERENCE_EXT)
        ("8367640003" + "6E4068" + "00000007" + "00000001" + "02", Pid(N, 7, 1, 2)),
        ("8366640003" + "6E4068" + "00000007" + "02", Port(N, 7, 2)),
        ("8365640003" + "6E4068" + "00000007" + "02", Reference(N, 2, (7,))),
        ("83720001640003" + "6E4068" + "02" + "00000007", Reference(N, 2, (7,))),
        ("8373026869", Atom("hi")),  # SMALL_ATOM_EXT
        ("83760002" + "6869", Atom("hi")),  # ATOM_UTF8_EXT
        ("8363" + "312E35".ljust(62, "0"), 1.5),  # FLOAT_EXT without exponent
        ("834D0000000108FF", b"\xff"),  # 8 bits used: a plain binary, as in Erlang
        ("834D0000000103FF", BitString(b"\xe0", 3)),  # unused bits are cleared
        ("834D0000000000", b""),
        ("836C00000000" + "6105", 5),  # empty LIST_EXT is just its tail
        ("836C00000001" + "6105" + "6B00026162", [5, 97, 98]),  # [5 | "ab"]
        ("836E0100" + "05", 5),  # a bignum that fits a small int
    ],
)
def test_decode_other_encodings(hexdata: str, value: object) -> None:
    assert etf.decode(bytes.fromhex(hexdata)) == value


def test_old_formats_reencode_as_otp25() -> None:
    pid = etf.decode(bytes.fromhex("8367640003" + "6E4068" + "00000007" + "00000001" + "02"))
    assert etf.encode(pid, minor_version=1)[1] == 88  # NEW_PID_EXT


def test_python_atoms_option() -> None:
    data = etf.encode((True, False, None, Atom("ok")))
    assert etf.decode(data) == (Atom("true"), Atom("false"), Atom("undefined"), Atom("ok"))
    assert etf.decode(data, python_atoms=True) == (True, False, None, Atom("ok"))
    data1 = etf.encode((True, None), minor_version=1)
    assert etf.decode(data1, python_atoms=True) == (True, None)


def test_strings_option() -> None:
    data = etf.encode("abc")
    assert etf.decode(data) == "abc"
    assert etf.decode(data, strings="list") == [97, 98, 99]
    with pytest.raises(ValueError):
        etf.decode(data, strings="bytes")


@pytest.mark.parametrize(
    "value,hexdata",
    [
        ("", "836A"),
        ([], "836A"),
        ([1, 2], "836B00020102"),  # Erlang encodes [1,2] as STRING_EXT too
        ([255, 0], "836B0002FF00"),
        ([256], "836C00000001620000010" + "06A"),
        ([True], "836C0000000177047472756" + "56A"),  # bool is not the int 1
        ("caf\u00e9", "836B0004636166E9"),
        ("\u2603", "836C000000016200002603" + "6A"),
    ],
)
def test_string_and_list_encoding(value: object, hexdata: str) -> None:
    assert etf.encode(value).hex().upper() == hexdata.upper()


def test_long_strings_become_lists() -> None:
    assert etf.encode("x" * 65535)[1] == 107
    long = etf.encode("y" * 65536)
    assert long[1] == 108 and long[-1] == 106
    assert etf.decode(long) == [ord("y")] * 65536
    assert etf.encode(list(range(256)) * 256)[1] == 108


def test_bool_none_and_subclasses() -> None:
    import enum
    from collections import OrderedDict

    class Color(enum.IntEnum):
        RED = 1

    assert etf.encode(True) == etf.encode(Atom("true"))
    assert etf.encode(None) == etf.encode(Atom("undefined"))
    assert etf.encode(Color.RED) == etf.encode(1)
    assert etf.encode(OrderedDict(a=1)) == etf.encode({"a": 1})
    assert etf.encode(bytearray(b"ab")) == etf.encode(b"ab") == etf.encode(memoryview(b"ab"))


def test_map_order_preserved_both_ways() -> None:
    d = {Atom("z"): 1, Atom("a"): 2, 3: 3}
    data = etf.encode(d)
    assert list(etf.decode(data)) == [Atom("z"), Atom("a"), 3]


def test_map_with_unhashable_keys_decodes_to_frozen() -> None:
    # #{[1,2] => a, #{} => b, [] => c, {[x]} => d} built by hand (Erlang order irrelevant)
    value = {etf.FrozenList([1000, 2]): 1, etf.FrozenDict({}): 2, etf.FrozenList(): 3, (etf.FrozenList([Atom("x")]),): 4}
    decoded = etf.decode(etf.encode(value))
    assert decoded == value
    assert etf.encode(decoded) == etf.encode(value)
    assert decoded[etf.FrozenList([1000, 2])] == 1


def test_map_duplicate_keys_rejected() -> None:
    data = bytes.fromhex("8374000000026101610261016103")
    with pytest.raises(etf.DecodeError, match="duplicate"):
        etf.decode(data)
    # 1 and 1.0 are different keys in Erlang but equal in Python: an ErlangMap, not an error
    assert type(etf.decode(bytes.fromhex("837400000002610164000161" + "463FF0000000000000" + "64000162"))) is etf.ErlangMap


def test_atom_semantics() -> None:
    assert Atom("ok") is Atom("ok")
    assert Atom("ok") != "ok"
    assert len({Atom("ok"): 1, "ok": 2}) == 2
    assert repr(Atom("ok")) == "Atom('ok')"
    assert not isinstance(Atom("ok"), str)
    with pytest.raises(AttributeError):
        Atom("ok").name = "x"  # type: ignore[misc]
    with pytest.raises(ValueError):
        Atom("a" * 256)
    import pickle

    assert pickle.loads(pickle.dumps(Atom("ok"))) is Atom("ok")


def test_value_types_are_frozen_and_hashable() -> None:
    items = [Pid(N, 1, 2, 3), Port(N, 1, 2), Reference(N, 1, (1, 2)), ImproperList((1,), 2), BitString(b"\x80", 1), ExportFun(N, N, 1)]
    assert len(set(items)) == len(items)
    import dataclasses

    for item in items:
        with pytest.raises(AttributeError):
            setattr(item, dataclasses.fields(item)[0].name, N)
    with pytest.raises(ValueError):
        Reference(N, 1, ())
    with pytest.raises(ValueError):
        BitString(b"\x00", 0)
    with pytest.raises(ValueError):
        ImproperList((), 1)


def test_fun_keeps_raw_bytes() -> None:
    from conformance_corpus import legacy_vector

    data = legacy_vector(32)
    term = etf.decode(data, safe=False)
    fun = term[2][1][1][2]
    assert isinstance(fun, etf.Fun)
    assert fun.module == Atom("erl_eval") and fun.arity == 0
    assert isinstance(fun.pid, Pid)
    assert etf.encode(term, compressed=True, minor_version=1) == data
    assert etf.decode(etf.encode(fun), safe=False) == fun
    with pytest.raises(AttributeError):
        fun.arity = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "value",
    [set(), frozenset(), object(), float("nan"), float("inf"), -float("inf"), 1j, [1, {2}], {"k": object()}],
)
def test_encode_errors(value: object) -> None:
    with pytest.raises(etf.EncodeError):
        etf.encode(value)


def test_encode_error_says_where() -> None:
    with pytest.raises(etf.EncodeError) as info:
        etf.encode((1, [2, 3, {4}]))
    assert "set" in str(info.value) and "[1][2]" in str(info.value)
    assert isinstance(info.value, TypeError)


def test_encode_cycle_is_an_error() -> None:
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(etf.EncodeError, match="cyclic"):
        etf.encode(cyclic)


def test_big_ints_any_size() -> None:
    for value in (2**31 - 1, 2**31, -(2**31) - 1, 2**2040, 2**2048, -(2**100000)):
        assert etf.decode(etf.encode(value), limits=etf.DecodeLimits(max_bignum_bytes=20000)) == value


def test_encode_options_validated() -> None:
    with pytest.raises(ValueError):
        etf.encode(1, minor_version=3)
    with pytest.raises(ValueError):
        etf.encode(1, compressed=10)
    assert etf.encode(1, compressed=0) == etf.encode(1)


def test_decode_from_offsets_and_trailing() -> None:
    a, b = etf.encode(Atom("first")), etf.encode((1, 2), compressed=9)
    big = etf.encode("z" * 1000, compressed=True)
    buf = b"junk" + a + big + b
    value, pos = etf.decode_from(buf, 4)
    assert value == Atom("first") and pos == 4 + len(a)
    value, pos = etf.decode_from(buf, pos)
    assert value == "z" * 1000 and pos == 4 + len(a) + len(big)
    value, pos = etf.decode_from(bytearray(buf), pos)
    assert value == (1, 2) and pos == len(buf)
    with pytest.raises(etf.DecodeError, match="unexpected bytes"):
        etf.decode(a + b"\x00")
    body, end = etf.decode_from(a[1:], version=False)
    assert body == Atom("first") and end == len(a) - 1
    assert etf.decode(memoryview(a)) == Atom("first")


def test_decode_from_incremental() -> None:
    data = etf.encode({Atom("k"): [1, 2.5, "x", b"y"]})
    for cut in range(len(data)):
        with pytest.raises(etf.TruncatedError):
            etf.decode_from(data[:cut])
    assert etf.decode_from(data + b"more")[1] == len(data)


def test_allowed_atoms() -> None:
    limits = etf.DecodeLimits(atoms=frozenset({"ok", "error"}))
    assert etf.decode(etf.encode((Atom("ok"), 1)), limits=limits) == (Atom("ok"), 1)
    with pytest.raises(etf.UnsafeTermError, match="surprise"):
        etf.decode(etf.encode([Atom("ok"), Atom("surprise")], minor_version=1), limits=limits)
    with pytest.raises(etf.UnsafeTermError):
        etf.decode(etf.encode(Atom("surprise"), minor_version=2), limits=limits)


def test_safe_mode_rejects_funs() -> None:
    data = etf.encode(ExportFun(Atom("os"), Atom("cmd"), 1))
    with pytest.raises(etf.UnsafeTermError):
        etf.decode(data)
    assert etf.decode(data, safe=False) == ExportFun(Atom("os"), Atom("cmd"), 1)


def test_charlist_helpers() -> None:
    assert etf.charlist_to_str("ab") == "ab"
    assert etf.charlist_to_str([0x2603, 97]) == "\u2603a"
    assert etf.charlist_to_str([]) == ""
    assert etf.str_to_charlist("ab") == [97, 98]
    assert etf.encode(etf.str_to_charlist("\u2603")) == etf.encode("\u2603")
    assert etf.binary_to_str(b"caf\xc3\xa9") == "caf\u00e9"
    assert etf.str_to_binary("caf\u00e9") == b"caf\xc3\xa9"
    with pytest.raises(ValueError):
        etf.charlist_to_str([-1])


def test_public_surface() -> None:
    assert etf.implementation in ("c", "python")  # which one: tests/etf/test_etf_backend.py
    assert len(set(etf.__all__)) == len(etf.__all__)
    for name in etf.__all__:
        assert hasattr(etf, name), name
    assert issubclass(etf.DecodeError, ValueError) and issubclass(etf.EncodeError, TypeError)
    for cls in (etf.TruncatedError, etf.LimitExceeded, etf.UnsafeTermError, etf.UnsupportedTermError):
        assert issubclass(cls, etf.DecodeError)


def test_repeated_pids_decode_identically() -> None:
    """Pids are cached by their encoding: repeated decodes must give the same values."""
    for minor_version in (1, 2):
        for node in ("srv@vm", "n\u00e9@h", "\u2603@x"):
            pid = Pid(Atom(node), 100, 7, 3)
            data = etf.encode((pid, [pid, 1], pid), minor_version=minor_version)
            for _ in range(3):
                assert etf.decode(data) == (pid, [pid, 1], pid)
