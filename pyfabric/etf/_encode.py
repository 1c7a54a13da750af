"""The pure-Python encoder: Python value -> ETF bytes, byte-identical to OTP 25.

It walks the value with an explicit stack of iterators (never recursion), appends
to one ``bytearray`` and dispatches on the exact type of each value, so subclasses
(``IntEnum``, ``OrderedDict`` ...) take a slower, normalising path.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from itertools import chain
from operator import length_hint
from typing import Any

from . import _tags as T
from ._erlang_map import ErlangMap
from ._errors import EncodeError
from ._types import Atom, BitString, ExportFun, FrozenDict, FrozenList, Fun, ImproperList, Pid, Port, Reference

__all__ = ["encode_term", "encode", "encode_options", "compress", "MAX_ENCODE_DEPTH"]

# Only a guard against cyclic values (a list that contains itself): real terms are
# never this deep, and the encoder itself does not recurse, so any depth below it works.
MAX_ENCODE_DEPTH = 100_000
_MAX_STRING_EXT = 0xFFFF

_SMALL_INT = [bytes((T.SMALL_INTEGER_EXT, i)) for i in range(256)]
_SMALL_TUPLE = [bytes((T.SMALL_TUPLE_EXT, i)) for i in range(256)]
# Headers of short strings, binaries and lists (the common sizes): a list index is
# cheaper than a struct.pack call.
_STRING_HEAD = [bytes((T.STRING_EXT, 0, i)) for i in range(256)]
_BINARY_HEAD = [bytes((T.BINARY_EXT, 0, 0, 0, i)) for i in range(256)]
_LIST_HEAD = [bytes((T.LIST_EXT, 0, 0, 0, i)) for i in range(256)]
_pack_int = struct.Struct(">Bi").pack
_pack_float = struct.Struct(">Bd").pack
_pack_u32 = struct.Struct(">BI").pack
_pack_u16 = struct.Struct(">BH").pack
_pack_big = struct.Struct(">BIB").pack
_pack_pid_tail = struct.Struct(">III").pack
_pack_ref_words = [struct.Struct(f">{i + 1}I").pack for i in range(6)]  # creation + ids
_pack_port_tail = struct.Struct(">II").pack
_pack_v4_port_tail = struct.Struct(">QI").pack
_NIL = bytes((T.NIL_EXT,))
_EMPTY = b""
_INT_ONLY = {int}
_BIG_BINARY = 64 * 1024


def _atom_ext(atom: Atom, minor_version: int) -> bytes:
    """The encoding of ``atom`` under ``minor_version``, cached on the atom."""
    name = atom.name
    data: bytes | None = None
    if minor_version < 2:
        # OTP 25 with minor_version 0/1: ATOM_EXT if the name is Latin-1, else UTF-8.
        try:
            data = _pack_u16(T.ATOM_EXT, len(name)) + name.encode("latin-1")
        except UnicodeEncodeError:
            data = None
    if data is None:
        try:
            raw = name.encode("utf-8")
        except UnicodeEncodeError:
            raise EncodeError(f"atom {name!r} contains a lone surrogate, not valid in an atom") from None
        if len(raw) < 256:
            data = bytes((T.SMALL_ATOM_UTF8_EXT, len(raw))) + raw
        else:
            data = _pack_u16(T.ATOM_UTF8_EXT, len(raw)) + raw
    object.__setattr__(atom, "_ext2" if minor_version == 2 else "_ext1", data)
    return data


def _atom_bytes(atom: Atom, minor_version: int) -> bytes:
    data = atom._ext2 if minor_version == 2 else atom._ext1
    return data if data is not None else _atom_ext(atom, minor_version)


_TRUE = Atom("true")
_FALSE = Atom("false")
_UNDEFINED = Atom("undefined")


def _bignum(value: int) -> bytes:
    sign = 0
    if value < 0:
        sign = 1
        value = -value
    size = (value.bit_length() + 7) >> 3
    digits = value.to_bytes(size, "little")
    if size < 256:
        return bytes((T.SMALL_BIG_EXT, size, sign)) + digits
    return _pack_big(T.LARGE_BIG_EXT, size, sign) + digits


def _float_ext(value: float, minor_version: int) -> bytes:
    if value - value != 0.0:  # inf - inf and nan - nan are nan
        raise EncodeError(f"float {value!r} cannot be encoded: Erlang has no inf or nan")
    if minor_version:
        return _pack_float(T.NEW_FLOAT_EXT, value)
    # FLOAT_EXT: 31 bytes holding C's "%.20e", zero padded (OTP's minor_version 0).
    return bytes((T.FLOAT_EXT,)) + f"{value:.20e}".encode("ascii").ljust(31, b"\0")


def _charlist(text: str) -> bytes:
    """LIST_EXT of code points: how Erlang encodes a string that is not STRING_EXT."""
    small_int = _SMALL_INT
    parts = [_pack_u32(T.LIST_EXT, len(text))]
    parts.extend([small_int[c] if c < 256 else _pack_int(T.INTEGER_EXT, c) for c in map(ord, text)])
    parts.append(_NIL)
    return b"".join(parts)


def _pid_ext(pid: Pid, minor_version: int) -> bytes:
    node = pid.node
    data = node._ext2 if minor_version == 2 else node._ext1
    if data is None:
        data = _atom_ext(node, minor_version)
    return b"X" + data + _pack_pid_tail(pid.id, pid.serial, pid.creation)


def _port_ext(port: Port, minor_version: int) -> bytes:
    node = _atom_bytes(port.node, minor_version)
    if port.id < 2**32:
        return bytes((T.NEW_PORT_EXT,)) + node + _pack_port_tail(port.id, port.creation)
    return bytes((T.V4_PORT_EXT,)) + node + _pack_v4_port_tail(port.id, port.creation)


def _reference_ext(ref: Reference, minor_version: int) -> bytes:
    ids = ref.ids
    count = len(ids)
    node = ref.node
    data = node._ext2 if minor_version == 2 else node._ext1
    if data is None:
        data = _atom_ext(node, minor_version)
    words = _pack_ref_words[count] if count < 6 else struct.Struct(f">{count + 1}I").pack
    return _pack_u16(T.NEWER_REFERENCE_EXT, count) + data + words(ref.creation, *ids)


def _bitstring_ext(bits: BitString, minor_version: int) -> bytes:
    return _pack_u32(T.BIT_BINARY_EXT, len(bits.data)) + bytes((bits.bits,)) + bits.data


def _export_ext(fun: ExportFun, minor_version: int) -> bytes:
    return (
        bytes((T.EXPORT_EXT,))
        + _atom_bytes(fun.module, minor_version)
        + _atom_bytes(fun.function, minor_version)
        + _SMALL_INT[fun.arity]
    )


def _fun_ext(fun: Fun, minor_version: int) -> bytes:
    return bytes((T.NEW_FUN_EXT,)) + fun.raw


# Each encoder takes a value of its key's type (a mapping mypy cannot spell).
_LEAF_ENCODERS: dict[type, Callable[[Any, int], bytes]] = {
    Pid: _pid_ext,
    Port: _port_ext,
    Reference: _reference_ext,
    BitString: _bitstring_ext,
    ExportFun: _export_ext,
    Fun: _fun_ext,
}


def _normalise(obj: Any) -> Any:
    """Map a subclass of a supported type to the base type; raise for the rest."""
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    if isinstance(obj, memoryview):
        return obj.tobytes()
    if isinstance(obj, tuple):
        return tuple(obj)
    if isinstance(obj, list):
        return list(obj)
    if isinstance(obj, dict):
        return dict(obj)
    raise EncodeError(f"cannot encode a value of type {type(obj).__module__}.{type(obj).__qualname__}: {_short_repr(obj)}")


def _short_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(obj).__name__} object>"
    return text if len(text) <= 60 else text[:57] + "..."


def _path(stack: list[tuple[Any, bytes, Any]], it: Any, container: Any) -> str:
    """Where the encoder is, as ``[i][j]{map}``-style text, for error messages."""
    levels = [(entry[0], entry[2]) for entry in stack[1:]] + [(it, container)]
    parts = []
    for level_it, level_container in levels:
        if isinstance(level_container, (list, tuple, FrozenList)):
            parts.append(f"[{len(level_container) - length_hint(level_it) - 1}]")
        elif isinstance(level_container, (dict, FrozenDict, ErlangMap)):
            parts.append("{map}")
        elif isinstance(level_container, ImproperList):
            parts.append("[improper]")
        elif isinstance(level_container, Fun):
            parts.append("")
    return "".join(parts)


def encode_term(term: Any, out: bytearray, minor_version: int, big_parts: list[bytes | bytearray]) -> None:
    """Append the encoding of ``term`` (without the version byte) to ``out``.

    Large binaries are not copied into ``out``: ``out`` so far and the binary are moved
    to ``big_parts``, and the caller joins ``big_parts + [out]``.
    """
    m2 = minor_version == 2
    small_int = _SMALL_INT
    small_tuple = _SMALL_TUPLE
    pack_int = _pack_int
    pack_u32 = _pack_u32
    pack_u16 = _pack_u16
    int_only = _INT_ONLY
    string_head = _STRING_HEAD
    binary_head = _BINARY_HEAD
    list_head = _LIST_HEAD
    stack: list[tuple[Any, bytes, Any]] = []
    push = stack.append
    it: Any = iter((term,))
    suffix = _EMPTY
    container: Any = None
    try:
        while True:
            for obj in it:
                t = type(obj)
                if t is Atom:
                    data = obj._ext2 if m2 else obj._ext1
                    out += data if data is not None else _atom_ext(obj, minor_version)
                elif t is int:
                    if 0 <= obj < 256:
                        out += small_int[obj]
                    elif -2147483648 <= obj <= 2147483647:
                        out += pack_int(98, obj)
                    else:
                        out += _bignum(obj)
                elif t is tuple:
                    count = len(obj)
                    out += small_tuple[count] if count < 256 else pack_u32(105, count)
                    if count:
                        if len(stack) >= MAX_ENCODE_DEPTH:
                            raise EncodeError(f"value nested deeper than {MAX_ENCODE_DEPTH} (cyclic?)")
                        push((it, suffix, container))
                        it = iter(obj)
                        suffix = _EMPTY
                        container = obj
                        break
                elif t is str:
                    count = len(obj)
                    if not count:
                        out += _NIL
                    elif count > _MAX_STRING_EXT:
                        out += _charlist(obj)
                    elif obj.isascii():
                        out += string_head[count] if count < 256 else pack_u16(107, count)
                        out += obj.encode("ascii")
                    else:
                        # Latin-1 text is STRING_EXT too: encoding with "ignore" drops
                        # the characters above 255, without raising, if there are any.
                        data = obj.encode("latin-1", "ignore")
                        if len(data) == count:
                            out += string_head[count] if count < 256 else pack_u16(107, count)
                            out += data
                        else:
                            out += _charlist(obj)
                elif t is bytes:
                    count = len(obj)
                    out += binary_head[count] if count < 256 else pack_u32(109, count)
                    if count < _BIG_BINARY:
                        out += obj
                    else:  # copy a large binary once (in the final join), not twice
                        big_parts.append(bytes(out))
                        big_parts.append(obj)
                        out.clear()
                elif t is list:
                    count = len(obj)
                    if not count:
                        out += _NIL
                        continue
                    # Erlang writes a list of at most 65535 integers 0..255 as STRING_EXT.
                    # The first element rules most other lists out without an exception.
                    first = obj[0]
                    if count <= _MAX_STRING_EXT and first.__class__ is int and 0 <= first <= 255:
                        try:
                            data = bytes(obj)
                        except (TypeError, ValueError):
                            data = None
                        if data is not None and set(map(type, obj)) == int_only:
                            out += string_head[count] if count < 256 else pack_u16(107, count)
                            out += data
                            continue
                    out += list_head[count] if count < 256 else pack_u32(108, count)
                    if len(stack) >= MAX_ENCODE_DEPTH:
                        raise EncodeError(f"value nested deeper than {MAX_ENCODE_DEPTH} (cyclic?)")
                    push((it, suffix, container))
                    it = iter(obj)
                    suffix = _NIL
                    container = obj
                    break
                elif t is float:
                    out += _float_ext(obj, minor_version)
                elif t is dict or t is FrozenDict or t is ErlangMap:
                    count = len(obj)
                    out += pack_u32(116, count)
                    if count:
                        if len(stack) >= MAX_ENCODE_DEPTH:
                            raise EncodeError(f"value nested deeper than {MAX_ENCODE_DEPTH} (cyclic?)")
                        push((it, suffix, container))
                        it = chain.from_iterable(obj.pairs if t is ErlangMap else obj.items())
                        suffix = _EMPTY
                        container = obj
                        break
                elif t is bool:
                    out += _atom_bytes(_TRUE if obj else _FALSE, minor_version)
                elif obj is None:
                    out += _atom_bytes(_UNDEFINED, minor_version)
                elif t is FrozenList:
                    if len(stack) >= MAX_ENCODE_DEPTH:
                        raise EncodeError(f"value nested deeper than {MAX_ENCODE_DEPTH} (cyclic?)")
                    push((it, suffix, container))
                    it = iter((obj.tolist(),))
                    suffix = _EMPTY
                    container = None
                    break
                elif t is ImproperList:
                    elements = obj.elements
                    out += pack_u32(108, len(elements))
                    if len(stack) >= MAX_ENCODE_DEPTH:
                        raise EncodeError(f"value nested deeper than {MAX_ENCODE_DEPTH} (cyclic?)")
                    push((it, suffix, container))
                    it = chain(elements, (obj.tail,))
                    suffix = _EMPTY
                    container = obj
                    break
                else:
                    leaf = _LEAF_ENCODERS.get(t)
                    if leaf is not None:
                        out += leaf(obj, minor_version)
                        continue
                    if t in (bytearray, memoryview):
                        data = bytes(obj)
                        out += pack_u32(109, len(data))
                        out += data
                        continue
                    # A subclass of a supported type: encode its normalised copy.
                    normalised = _normalise(obj)
                    if len(stack) >= MAX_ENCODE_DEPTH:
                        raise EncodeError(f"value nested deeper than {MAX_ENCODE_DEPTH} (cyclic?)")
                    push((it, suffix, container))
                    it = iter((normalised,))
                    suffix = _EMPTY
                    container = None
                    break
            else:
                out += suffix
                if not stack:
                    return
                it, suffix, container = stack.pop()
    except EncodeError as exc:
        if exc.path:
            raise
        raise EncodeError(exc.reason, _path(stack, it, container)) from None
    except struct.error as exc:  # an out-of-range field in a hand-built value
        raise EncodeError(f"value out of range: {exc}", _path(stack, it, container)) from None


def encode_options(compressed: bool | int, minor_version: int) -> int:
    """Check :func:`pyfabric.etf.encode`'s options; return the zlib level (0: uncompressed)."""
    if minor_version not in (0, 1, 2) or type(minor_version) is not int:
        raise ValueError(f"minor_version must be 0, 1 or 2, got {minor_version!r}")
    if compressed is True:
        return 6  # Erlang's `compressed` means zlib's default level
    if compressed is False:
        return 0
    if type(compressed) is int and 0 <= compressed <= 9:
        return compressed
    raise ValueError(f"compressed must be a bool or an int 0..9, got {compressed!r}")


def compress(encoded: bytes | bytearray, level: int) -> bytes:
    """The compressed form (tag 80) of ``encoded`` (131 and a term) if it is not larger."""
    size = len(encoded) - 1
    packed = zlib.compress(memoryview(encoded)[1:], level)
    # OTP keeps the compressed form unless it would be larger (ties compress).
    if len(packed) + 6 <= len(encoded):
        return b"\x83\x50" + size.to_bytes(4, "big") + packed
    return bytes(encoded)


def encode(term: Any, compressed: bool | int = False, minor_version: int = 2) -> bytes:
    """Implementation of :func:`pyfabric.etf.encode` (see there)."""
    level = encode_options(compressed, minor_version)
    out = bytearray(b"\x83")
    big_parts: list[bytes | bytearray] = []
    encode_term(term, out, minor_version, big_parts)
    if big_parts:
        big_parts.append(out)
        whole = b"".join(big_parts)
        return compress(whole, level) if level else whole
    return compress(out, level) if level else bytes(out)
