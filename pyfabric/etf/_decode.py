"""The pure-Python decoder: ETF bytes -> Python value, bounded and non-recursive.

The decoder walks the input with an explicit stack of open containers, so nesting
depth is a counted limit and never a RecursionError. Every declared length is checked
against the bytes that remain (structure) and against :class:`DecodeLimits` (policy)
before anything is allocated. Tags are dispatched inline for the common ones and via
a table for the rest.
"""

from __future__ import annotations

import gc
import re
import struct
import zlib
from collections.abc import Callable
from typing import Any

from . import _tags as T
from ._erlang_map import ErlangMap
from ._errors import DecodeError, LimitExceeded, TruncatedError, UnsafeTermError, UnsupportedTermError
from ._limits import DecodeLimits
from ._types import (
    Atom,
    BitString,
    ExportFun,
    FrozenDict,
    FrozenList,
    Fun,
    ImproperList,
    Pid,
    Port,
    Reference,
)

__all__ = ["Options", "decode_versioned"]

_u16 = struct.Struct(">H").unpack_from
_u32 = struct.Struct(">I").unpack_from
_i32 = struct.Struct(">i").unpack_from
_f64 = struct.Struct(">d").unpack_from
_u32x2 = struct.Struct(">II").unpack_from
_u32x3 = struct.Struct(">III").unpack_from
_u32u8 = struct.Struct(">IB").unpack_from
_u32x2u8 = struct.Struct(">IIB").unpack_from
_u64u32 = struct.Struct(">QI").unpack_from
_REF_IDS = [struct.Struct(f">{i}I").unpack_from for i in range(6)]
# NEWER_REFERENCE_EXT after its node: creation and 1..5 id words, by id count.
_REF_WORDS = [struct.Struct(f">{i + 1}I").unpack_from for i in range(6)]

# Encoded atom (tag, length and name bytes) -> Atom, bounded like Atom's own intern
# table. The key is the whole encoding, so a truncated input can never match an entry
# (its name would be shorter than its length field says) and the tag tells Latin-1
# from UTF-8. Only atoms that passed every check are stored.
_ATOMS: dict[bytes, Atom] = {}
_ATOM_CACHE_MAX = 100_000

_TRUE = Atom("true")
_FALSE = Atom("false")
_UNDEFINED = Atom("undefined")

# Container kinds on the decode stack.
_K_TUPLE = 0
_K_LIST = 1  # a LIST_EXT's elements; its tail is read when they are complete
_K_MAP = 2
_K_TAIL = 3  # a LIST_EXT whose tail is not NIL_EXT: elements, then the tail
_K_FUN = 4
_K_ROOT = 5  # the outermost "container": holds the one result value

_FLOAT_TEXT = re.compile(rb"[+-]?[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?\0*\Z")

_UNSUPPORTED = {
    T.LOCAL_EXT: "LOCAL_EXT (tag 121) is a node-local encoding that only the emitting node can decode",
    T.DIST_HEADER: "a distribution header (tag 68) belongs to the Erlang distribution protocol, not to term_to_binary output",
    T.DIST_FRAG_HEADER: "a fragmented distribution header (tag 69) belongs to the Erlang distribution protocol",
    T.ATOM_CACHE_REF: "ATOM_CACHE_REF (tag 82) needs a distribution atom cache, which plain ETF does not have",
    117: "FUN_EXT (tag 117) is the pre-R8 fun format, no longer produced or accepted by Erlang",
}


class Options:
    """Decode options resolved once per call (limits, policy, output shapes)."""

    __slots__ = ("limits", "safe", "python_atoms", "strings_as_list", "allowed_atoms", "max_input", "hot")

    def __init__(self, limits: DecodeLimits, safe: bool, python_atoms: bool, strings: str) -> None:
        if strings not in ("str", "list"):
            raise ValueError(f"strings must be 'str' or 'list', got {strings!r}")
        self.limits = limits
        self.safe = safe
        self.python_atoms = python_atoms
        self.strings_as_list = strings == "list"
        self.allowed_atoms = limits.atoms
        self.max_input = limits.max_input_size
        # A cached atom (or pid) may be used as is when no check could reject it now:
        # no allow-list, and the length limit admits every atom (Erlang's 255).
        atom_fast = limits.atoms is None and limits.max_atom_length >= 255
        # What decode_term reads on every call, unpacked in one step.
        self.hot = (
            limits.max_depth,
            limits.max_container_len,
            limits.max_total_terms,
            limits.max_containers,
            limits.max_binary_size,
            python_atoms,
            self.strings_as_list,
            atom_fast,
        )


def _truncated(what: str, offset: int, need: int, have: int) -> TruncatedError:
    return TruncatedError(f"truncated input: {what} needs {need} more bytes but only {have} remain", offset)


def _make_atom(raw: bytes, utf8: bool, offset: int, opts: Options, key: bytes) -> Atom:
    """Slow path of atom decoding: validate, create and cache (under ``key``)."""
    if utf8:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"atom is not valid UTF-8 ({exc.reason} at byte {exc.start})", offset) from None
    else:
        name = raw.decode("latin-1")
    max_len = opts.limits.max_atom_length
    if len(name) > max_len:
        raise LimitExceeded("max_atom_length", f"atom of {len(name)} characters, maximum {max_len}", offset)
    atom = Atom(name)
    if len(_ATOMS) < _ATOM_CACHE_MAX:
        _ATOMS[key] = atom
    return atom


def _read_atom(buf: bytes, pos: int, opts: Options) -> tuple[Atom, int]:
    """Decode the atom (any of the four atom tags) at ``pos``; return it and the next offset."""
    tag = buf[pos]
    if tag == T.ATOM_EXT:
        length = (buf[pos + 1] << 8) | buf[pos + 2]
        start = pos + 3
        utf8 = False
    elif tag == T.SMALL_ATOM_UTF8_EXT:
        length = buf[pos + 1]
        start = pos + 2
        utf8 = True
    elif tag == T.SMALL_ATOM_EXT:
        length = buf[pos + 1]
        start = pos + 2
        utf8 = False
    elif tag == T.ATOM_UTF8_EXT:
        length = (buf[pos + 1] << 8) | buf[pos + 2]
        start = pos + 3
        utf8 = True
    else:
        raise DecodeError(f"expected an atom, found tag {tag} ({T.TAG_NAMES.get(tag, 'unknown')})", pos)
    end = start + length
    if end > len(buf):
        raise _truncated("atom", pos, end - pos, len(buf) - pos)
    limits = opts.limits
    if length > limits.max_atom_length and (not utf8 or length > 4 * limits.max_atom_length):
        raise LimitExceeded("max_atom_length", f"atom of {length} bytes, maximum {limits.max_atom_length} characters", pos)
    key = buf[pos:end]
    atom = _ATOMS.get(key)
    if atom is None or (utf8 and length > limits.max_atom_length):
        atom = _make_atom(buf[start:end], utf8, pos, opts, key)
    allowed = opts.allowed_atoms
    if allowed is not None and atom.name not in allowed:
        raise UnsafeTermError(f"atom {atom.name!r} is not in the allowed atoms", pos)
    return atom, end


def _small_or_int(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    tag = buf[pos]
    if tag == T.SMALL_INTEGER_EXT:
        return buf[pos + 1], pos + 2
    if tag == T.INTEGER_EXT:
        return _i32(buf, pos + 1)[0], pos + 5
    raise DecodeError(f"{what} must be SMALL_INTEGER_EXT or INTEGER_EXT, found tag {tag}", pos)


# --- scalar tags decoded by table dispatch: f(buf, pos, opts) -> (value, next_pos) ---


def _d_float(buf: bytes, pos: int, opts: Options) -> tuple[Any, int]:
    end = pos + 32
    if end > len(buf):
        raise _truncated("FLOAT_EXT", pos, 32, len(buf) - pos)
    text = buf[pos + 1 : end]
    value: float | None = None
    if _FLOAT_TEXT.match(text):
        value = float(text.rstrip(b"\0"))
    if value is None or value - value != 0.0:
        raise DecodeError(f"FLOAT_EXT text {text.rstrip(bytes(1))!r} is not a finite float", pos)
    return value, end


def _d_new_float(buf: bytes, pos: int, opts: Options) -> tuple[Any, int]:
    value = _f64(buf, pos + 1)[0]
    if value - value != 0.0:
        raise DecodeError("NEW_FLOAT_EXT is inf or nan, which Erlang cannot represent", pos)
    return value, pos + 9


def _d_big(buf: bytes, pos: int, opts: Options) -> tuple[Any, int]:
    if buf[pos] == T.SMALL_BIG_EXT:
        size = buf[pos + 1]
        sign = buf[pos + 2]
        start = pos + 3
    else:
        size, sign = _u32u8(buf, pos + 1)
        start = pos + 6
    limit = opts.limits.max_bignum_bytes
    if size > limit:
        raise LimitExceeded("max_bignum_bytes", f"integer of {size} bytes, maximum {limit}", pos)
    end = start + size
    if end > len(buf):
        raise _truncated("big integer", pos, end - pos, len(buf) - pos)
    if sign > 1:
        raise DecodeError(f"big integer sign byte must be 0 or 1, got {sign}", pos)
    value = int.from_bytes(buf[start:end], "little")
    return (-value if sign else value), end


def _d_binary_len(buf: bytes, pos: int, opts: Options, size: int, header: int, what: str) -> int:
    limit = opts.limits.max_binary_size
    if size > limit:
        raise LimitExceeded("max_binary_size", f"{what} of {size} bytes, maximum {limit}", pos)
    end = pos + header + size
    if end > len(buf):
        raise _truncated(what, pos, end - pos, len(buf) - pos)
    return end


def _d_bit_binary(buf: bytes, pos: int, opts: Options) -> tuple[Any, int]:
    size, bits = _u32u8(buf, pos + 1)
    end = _d_binary_len(buf, pos, opts, size, 6, "BIT_BINARY_EXT")
    if size == 0:
        if bits != 0:
            raise DecodeError(f"empty BIT_BINARY_EXT must have 0 bits in its last byte, got {bits}", pos)
        return b"", end
    if not 1 <= bits <= 8:
        raise DecodeError(f"BIT_BINARY_EXT bits must be 1..8, got {bits}", pos)
    data = buf[pos + 6 : end]
    if bits == 8:
        return data, end  # a whole number of bytes: Erlang decodes it as a binary
    return BitString(data, bits), end


# Pid and Reference are frozen dataclasses; the decoder fills their slots directly
# (the slot descriptors' setters are the cheapest way) instead of re-validating fields
# the wire format already bounds.
_new = object.__new__
# (Read from the class __dict__: type checkers see a slot as the field's type, not as
# the member descriptor it is at run time.)
_set_pid_node: Callable[[Pid, Atom], None] = Pid.__dict__["node"].__set__
_set_pid_id: Callable[[Pid, int], None] = Pid.__dict__["id"].__set__
_set_pid_serial: Callable[[Pid, int], None] = Pid.__dict__["serial"].__set__
_set_pid_creation: Callable[[Pid, int], None] = Pid.__dict__["creation"].__set__
_set_pid_hash: Callable[[Pid, int], None] = Pid.__dict__["_hash"].__set__
_set_ref_node: Callable[[Reference, Atom], None] = Reference.__dict__["node"].__set__
_set_ref_creation: Callable[[Reference, int], None] = Reference.__dict__["creation"].__set__
_set_ref_ids: Callable[[Reference, tuple[int, ...]], None] = Reference.__dict__["ids"].__set__


def _pid(node: Atom, ident: int, serial: int, creation: int) -> Pid:
    """Pid without re-validating fields the wire format already bounds."""
    pid = _new(Pid)
    _set_pid_node(pid, node)
    _set_pid_id(pid, ident)
    _set_pid_serial(pid, serial)
    _set_pid_creation(pid, creation)
    _set_pid_hash(pid, hash((ident, serial, creation, node._hash)))  # as Pid.__post_init__
    return pid


def _reference(node: Atom, creation: int, ids: tuple[int, ...]) -> Reference:
    ref = _new(Reference)
    _set_ref_node(ref, node)
    _set_ref_creation(ref, creation)
    _set_ref_ids(ref, ids)
    return ref


def _atom_end(buf: bytes, pos: int) -> int:
    """End of the SMALL_ATOM_UTF8_EXT or ATOM_EXT at ``pos`` (0 for other tags)."""
    tag = buf[pos]
    if tag == 119:
        return pos + 2 + buf[pos + 1]
    if tag == 100:
        return pos + 3 + ((buf[pos + 1] << 8) | buf[pos + 2])
    return 0


def _node_atom(buf: bytes, pos: int, opts: Options) -> tuple[Atom, int]:
    """The node name atom of a pid/port/reference: cached fast path, else _read_atom."""
    if opts.hot[-1]:
        end = _atom_end(buf, pos)
        atom = _ATOMS.get(buf[pos:end])  # buf[pos:0] is b"", never a key
        if atom is not None:
            return atom, end
    return _read_atom(buf, pos, opts)


# Encoded NEW_PID_EXT bytes -> Pid: the same few processes recur in most messages.
_PIDS: dict[bytes, Pid] = {}
_PID_CACHE_MAX = 4096


def _d_new_pid(buf: bytes, pos: int, opts: Options) -> tuple[Any, int]:
    node_end = _atom_end(buf, pos + 1)
    end = node_end + 12
    if node_end and end <= len(buf) and opts.hot[-1]:
        raw = buf[pos + 1 : end]
        pid = _PIDS.get(raw)
        if pid is not None:
            return pid, end
        pid, p = _d_pid(buf, pos, opts)
        if len(_PIDS) >= _PID_CACHE_MAX:
            _PIDS.clear()
        _PIDS[raw] = pid
        return pid, p
    return _d_pid(buf, pos, opts)


def _d_pid(buf: bytes, pos: int, opts: Options) -> tuple[Any, int]:
    node, p = _node_atom(buf, pos + 1, opts)
    if buf[pos] == T.NEW_PID_EXT:
        ident, serial, creation = _u32x3(buf, p)
        p += 12
    else:
        ident, serial, creation = _u32x2u8(buf, p)
        p += 9
    return _pid(node, ident, serial, creation), p


def _d_port(buf: bytes, pos: int, opts: Options) -> tuple[Any, int]:
    tag = buf[pos]
    node, p = _node_atom(buf, pos + 1, opts)
    if tag == T.NEW_PORT_EXT:
        ident, creation = _u32x2(buf, p)
        p += 8
    elif tag == T.V4_PORT_EXT:
        ident, creation = _u64u32(buf, p)
        p += 12
    else:
        ident, creation = _u32u8(buf, p)
        p += 5
    return Port(node, ident, creation), p


def _d_old_reference(buf: bytes, pos: int, opts: Options) -> tuple[Any, int]:
    node, p = _read_atom(buf, pos + 1, opts)
    ident, creation = _u32u8(buf, p)
    return Reference(node, creation, (ident,)), p + 5


def _d_reference(buf: bytes, pos: int, opts: Options) -> tuple[Any, int]:
    tag = buf[pos]
    count = _u16(buf, pos + 1)[0]
    if not 1 <= count <= 5:
        raise DecodeError(f"reference must have 1 to 5 id words, got {count}", pos)
    node, p = _node_atom(buf, pos + 3, opts)
    if tag == T.NEWER_REFERENCE_EXT:
        creation = _u32(buf, p)[0]
        p += 4
    else:
        creation = buf[p]
        p += 1
    ids = _REF_IDS[count](buf, p)
    return _reference(node, creation, ids), p + 4 * count


def _d_export(buf: bytes, pos: int, opts: Options) -> tuple[Any, int]:
    if opts.safe:
        raise UnsafeTermError("external fun (EXPORT_EXT) rejected in safe mode; decode with safe=False to accept funs", pos)
    module, p = _read_atom(buf, pos + 1, opts)
    function, p = _read_atom(buf, p, opts)
    if buf[p] != T.SMALL_INTEGER_EXT:
        raise DecodeError(f"EXPORT_EXT arity must be SMALL_INTEGER_EXT, found tag {buf[p]}", p)
    return ExportFun(module, function, buf[p + 1]), p + 2


def _d_atom(buf: bytes, pos: int, opts: Options) -> tuple[Any, int]:
    atom, end = _read_atom(buf, pos, opts)
    if opts.python_atoms:
        if atom is _TRUE:
            return True, end
        if atom is _FALSE:
            return False, end
        if atom is _UNDEFINED:
            return None, end
    return atom, end


def _d_unsupported(buf: bytes, pos: int, opts: Options) -> tuple[Any, int]:
    tag = buf[pos]
    raise UnsupportedTermError(f"unsupported term: {_UNSUPPORTED[tag]}", pos)


def _d_misplaced_compressed(buf: bytes, pos: int, opts: Options) -> tuple[Any, int]:
    raise DecodeError("compressed term (tag 80) is only allowed right after the version byte", pos)


def _d_unknown(buf: bytes, pos: int, opts: Options) -> tuple[Any, int]:
    tag = buf[pos]
    raise DecodeError(f"unknown tag {tag}", pos)


_SCALARS: list[Any] = [_d_unknown] * 256
for _tag, _fn in (
    (T.FLOAT_EXT, _d_float),
    (T.NEW_FLOAT_EXT, _d_new_float),
    (T.SMALL_BIG_EXT, _d_big),
    (T.LARGE_BIG_EXT, _d_big),
    (T.BIT_BINARY_EXT, _d_bit_binary),
    (T.NEW_PID_EXT, _d_new_pid),
    (T.PID_EXT, _d_pid),
    (T.NEW_PORT_EXT, _d_port),
    (T.V4_PORT_EXT, _d_port),
    (T.PORT_EXT, _d_port),
    (T.REFERENCE_EXT, _d_old_reference),
    (T.NEW_REFERENCE_EXT, _d_reference),
    (T.NEWER_REFERENCE_EXT, _d_reference),
    (T.EXPORT_EXT, _d_export),
    (T.COMPRESSED, _d_misplaced_compressed),
    (T.ATOM_EXT, _d_atom),
    (T.SMALL_ATOM_EXT, _d_atom),
    (T.ATOM_UTF8_EXT, _d_atom),
    (T.SMALL_ATOM_UTF8_EXT, _d_atom),
):
    _SCALARS[_tag] = _fn
for _tag in _UNSUPPORTED:
    _SCALARS[_tag] = _d_unsupported
del _tag, _fn


def _container_error(
    count: int, need: int, room: int, total: int, max_total: int, cleft: int, depth: int, opts: Options, pos: int
) -> None:
    """Raise the error of a container header that failed a check (first failing check wins)."""
    limits = opts.limits
    if count > limits.max_container_len:
        raise LimitExceeded("max_container_len", f"container of {count} elements, maximum {limits.max_container_len}", pos)
    if need > room:
        raise TruncatedError(f"truncated input: container declares {count} elements but only {room} bytes remain", pos)
    if total > max_total:
        raise LimitExceeded("max_total_terms", f"more than {max_total} terms", pos)
    if cleft < 0:
        raise LimitExceeded(
            "max_containers", f"more than {limits.max_containers} tuples, lists and maps in one term", pos
        )
    raise LimitExceeded("max_depth", f"nesting deeper than {limits.max_depth}", pos)


def _finish_list(items: list[Any], frozen: int, offset: int) -> Any:
    tail = items.pop()
    if tail.__class__ is list or tail.__class__ is FrozenList:
        if tail:  # [a | [b, c]] is the proper list [a, b, c]
            items.extend(tail)
        return FrozenList(items) if frozen else items
    if tail.__class__ is str and tail:  # [a | "bc"] is [a, $b, $c]
        items.extend(map(ord, tail))
        return FrozenList(items) if frozen else items
    return ImproperList(tuple(items), tail)


def _finish_map(items: list[Any], frozen: int, offset: int) -> Any:
    it = iter(items)
    try:
        value = dict(zip(it, it, strict=True))
    except TypeError as exc:  # defensive: keys are built hashable
        raise DecodeError(f"map key is not hashable in Python: {exc}", offset) from None
    if 2 * len(value) != len(items):
        return _erlang_map(items, offset)
    return FrozenDict(value) if frozen == 1 else value


def _erlang_map(items: list[Any], offset: int) -> ErlangMap:
    """A map whose keys a dict cannot hold (Erlang-distinct, Python-equal, like 1 and 1.0)."""
    try:
        return ErlangMap(zip(items[0::2], items[1::2], strict=True))
    except ValueError:
        raise DecodeError("map has duplicate keys (Erlang rejects them too)", offset) from None
    except RecursionError:  # comparing keys nested deeper than Python compares (safe=False depths)
        raise LimitExceeded("max_depth", "map keys nested too deep to compare in Python", offset) from None


def _finish_fun(items: list[Any], header: tuple[Any, ...], buf: bytes, end: int) -> Any:
    start, size, arity, uniq, index, module, old_index, old_uniq, pid = header
    if end - (start + 1) != size:
        raise DecodeError(f"NEW_FUN_EXT declares size {size} but its fields take {end - start - 1} bytes", start)
    return Fun(
        raw=buf[start + 1 : end],
        arity=arity,
        uniq=uniq,
        index=index,
        module=module,
        old_index=old_index,
        old_uniq=old_uniq,
        pid=pid,
        free_vars=tuple(items),
    )


def _open_fun(buf: bytes, pos: int, opts: Options) -> tuple[tuple[Any, ...], int, int]:
    """Read NEW_FUN_EXT up to its free variables: (header, free var count, next pos)."""
    if opts.safe:
        raise UnsafeTermError("fun (NEW_FUN_EXT) rejected in safe mode; decode with safe=False to accept funs", pos)
    size = _u32(buf, pos + 1)[0]
    if pos + 1 + size > len(buf):
        raise _truncated("NEW_FUN_EXT", pos, 1 + size, len(buf) - pos)
    arity = buf[pos + 5]
    uniq = buf[pos + 6 : pos + 22]
    index, num_free = _u32x2(buf, pos + 22)
    p = pos + 30
    module, p = _read_atom(buf, p, opts)
    old_index, p = _small_or_int(buf, p, "NEW_FUN_EXT OldIndex")
    old_uniq, p = _small_or_int(buf, p, "NEW_FUN_EXT OldUniq")
    if buf[p] not in (T.NEW_PID_EXT, T.PID_EXT):
        raise DecodeError(f"NEW_FUN_EXT Pid must be a pid, found tag {buf[p]}", p)
    pid, p = _d_pid(buf, p, opts)
    if num_free > len(buf) - p:
        raise _truncated("NEW_FUN_EXT free variables", pos, num_free, len(buf) - p)
    return (pos, size, arity, uniq, index, module, old_index, old_uniq, pid), num_free, p


def decode_term(buf: bytes, pos: int, opts: Options, max_terms: int = -1) -> tuple[Any, int]:
    """Decode one term body (no version byte) at ``pos`` of ``buf``; return (term, end).

    ``max_terms`` (if not negative) replaces ``max_total_terms`` as the term budget: a
    compressed input gets a smaller one, proportional to its compressed size.

    One loop reads one tag per iteration; the hot tags are decoded inline, the rest by
    the ``_SCALARS`` table. The innermost open container lives in local variables
    (``items``, ``left``, ``kind``, ``frozen``, ``extra``); enclosing ones
    are saved on ``stack``. The outermost "container" (``_K_ROOT``) receives the result.
    ``left`` counts the values the container still needs (a LIST_EXT's tail is read
    when its elements are complete). ``frozen`` says how children must be built: 0
    normally, 1 hashable (inside a map key), 2 for a map that is not itself frozen (its
    even-numbered children are keys).
    """
    n = len(buf)
    if n - pos >= _GC_PAUSE_BYTES and gc.isenabled():
        return _decode_term_without_gc(buf, pos, opts, max_terms)
    max_depth, max_len, max_total, cleft, max_binary, python_atoms, strings_as_list, atom_fast = opts.hot
    if max_terms >= 0:
        max_total = max_terms
    scalars = _SCALARS
    u32 = _u32
    i32 = _i32
    total = 0
    stack: list[tuple[Any, ...]] = []
    items: list[Any] = []
    left = 1
    kind = _K_ROOT
    frozen = 0
    extra: Any = None
    value: Any
    try:
        while True:
            tag = buf[pos]
            if tag == 97 or tag == 98:  # SMALL_INTEGER_EXT, INTEGER_EXT
                if left > 1:
                    # A run of integers inside a container: append them directly,
                    # leaving the container's last element to the general path.
                    while True:
                        if tag == 97:
                            items.append(buf[pos + 1])
                            pos += 2
                        else:
                            items.append(i32(buf, pos + 1)[0])
                            pos += 5
                        left -= 1
                        if left == 1:
                            break
                        tag = buf[pos]
                        if tag != 97 and tag != 98:
                            break
                    continue
                if tag == 97:
                    value = buf[pos + 1]
                    pos += 2
                else:
                    value = i32(buf, pos + 1)[0]
                    pos += 5
            elif tag == 119 or tag == 100:  # SMALL_ATOM_UTF8_EXT, ATOM_EXT
                end = pos + 2 + buf[pos + 1] if tag == 119 else pos + 3 + ((buf[pos + 1] << 8) | buf[pos + 2])
                value = _ATOMS.get(buf[pos:end])  # keyed by the whole encoding, see _ATOMS
                if value is None or not atom_fast:
                    value, end = _read_atom(buf, pos, opts)
                pos = end
                if python_atoms:
                    if value is _TRUE:
                        value = True
                    elif value is _FALSE:
                        value = False
                    elif value is _UNDEFINED:
                        value = None
            elif tag == 107:  # STRING_EXT
                end = pos + 3 + ((buf[pos + 1] << 8) | buf[pos + 2])
                if end > n:
                    raise _truncated("STRING_EXT", pos, end - pos, n - pos)
                if strings_as_list:
                    value = list(buf[pos + 3 : end])
                    total += len(value)
                    if total > max_total:
                        raise LimitExceeded("max_total_terms", f"more than {max_total} terms", pos)
                    if frozen == 1 or (frozen == 2 and not len(items) & 1):
                        value = FrozenList(value)
                else:
                    value = buf[pos + 3 : end].decode("latin-1")
                pos = end
            elif tag == 109:  # BINARY_EXT
                end = pos + 5 + u32(buf, pos + 1)[0]
                if end > n or end - pos - 5 > max_binary:
                    end = _d_binary_len(buf, pos, opts, end - pos - 5, 5, "BINARY_EXT")
                value = buf[pos + 5 : end]
                pos = end
            elif tag == 104:  # SMALL_TUPLE_EXT: the most common container
                count = buf[pos + 1]
                cleft -= 1  # containers still allowed (max_containers), counted down
                if count:
                    total += count
                    if count > max_len or count > n - pos - 2 or total > max_total or len(stack) >= max_depth or cleft < 0:
                        _container_error(count, count, n - pos - 2, total, max_total, cleft, len(stack), opts, pos)
                    stack.append((items, left, kind, frozen, extra))
                    if frozen == 2:  # a child of a plain map: its keys must be hashable
                        frozen = 0 if len(items) & 1 else 1
                    items = []
                    left = count
                    kind = _K_TUPLE
                    pos += 2
                    continue
                if cleft < 0:
                    _container_error(0, 0, 0, 0, 0, cleft, 0, opts, pos)
                value = ()
                pos += 2
            elif tag == 108 or tag == 116 or tag == 105:  # LIST_EXT, MAP_EXT, LARGE_TUPLE_EXT
                count = u32(buf, pos + 1)[0]
                if count:
                    # Each element takes at least one byte (a list also has its tail).
                    need = count + 1 if tag == 108 else (2 * count if tag == 116 else count)
                    total += count
                    cleft -= 1
                    if count > max_len or need > n - pos - 5 or total > max_total or len(stack) >= max_depth or cleft < 0:
                        _container_error(count, need, n - pos - 5, total, max_total, cleft, len(stack), opts, pos)
                    stack.append((items, left, kind, frozen, extra))
                    if frozen == 2:  # a child of a plain map: its keys must be hashable
                        frozen = 0 if len(items) & 1 else 1
                    items = []
                    if tag == 116:
                        left = 2 * count
                        kind = _K_MAP
                        frozen = 1 if frozen else 2
                    else:
                        left = count
                        kind = _K_LIST if tag == 108 else _K_TUPLE
                    extra = pos
                    pos += 5
                    continue
                pos += 5
                if tag == 108:
                    continue  # an empty LIST_EXT is just its tail
                cleft -= 1
                if cleft < 0:
                    _container_error(0, 0, 0, 0, 0, cleft, 0, opts, pos - 5)
                if tag == 116:
                    value = FrozenDict() if frozen == 1 or (frozen == 2 and not len(items) & 1) else {}
                else:
                    value = ()
            elif tag == 106:  # NIL_EXT
                cleft -= 1
                if cleft < 0:
                    _container_error(0, 0, 0, 0, 0, cleft, 0, opts, pos)
                if frozen == 1 or (frozen == 2 and not len(items) & 1):
                    value = FrozenList()
                else:
                    value = []
                pos += 1
            # Pids and references: a node atom that is SMALL_ATOM_UTF8_EXT or ATOM_EXT is
            # looked up in a cache. A cache key is a whole valid encoding (its length
            # field gives its size), so a hit is never a truncated input; a miss, or any
            # other node tag (end 0: the key b"" is never cached), takes the general
            # path, which checks everything.
            elif tag == 88:  # NEW_PID_EXT: the same few processes recur, cached by encoding
                node_tag = buf[pos + 1]
                if node_tag == 119:
                    end = pos + 15 + buf[pos + 2]  # tag, atom tag and length, name, 12 bytes
                elif node_tag == 100:
                    end = pos + 16 + ((buf[pos + 2] << 8) | buf[pos + 3])
                else:
                    end = 0
                value = _PIDS.get(buf[pos + 1 : end]) if atom_fast else None
                if value is None:
                    value, end = _d_new_pid(buf, pos, opts)
                pos = end
            elif tag == 90:  # NEWER_REFERENCE_EXT (ids are unique: not cached)
                count = (buf[pos + 1] << 8) | buf[pos + 2]
                node_tag = buf[pos + 3] if atom_fast and 0 < count < 6 else 0
                if node_tag == 119:
                    node_end = pos + 5 + buf[pos + 4]
                elif node_tag == 100:
                    node_end = pos + 6 + ((buf[pos + 4] << 8) | buf[pos + 5])
                else:
                    node_end = 0
                node = _ATOMS.get(buf[pos + 3 : node_end])
                if node is None:
                    value, pos = _d_reference(buf, pos, opts)
                else:
                    words = _REF_WORDS[count](buf, node_end)  # creation, then the ids
                    value = _new(Reference)
                    _set_ref_node(value, node)
                    _set_ref_creation(value, words[0])
                    _set_ref_ids(value, words[1:])
                    pos = node_end + 4 + 4 * count
            elif tag == 112:  # NEW_FUN_EXT
                fun_header, count, end = _open_fun(buf, pos, opts)
                if count == 0:
                    value = _finish_fun([], fun_header, buf, end)
                    pos = end
                else:
                    total += count
                    if total > max_total:
                        raise LimitExceeded("max_total_terms", f"more than {max_total} terms", pos)
                    if len(stack) >= max_depth:
                        raise LimitExceeded("max_depth", f"nesting deeper than {max_depth}", pos)
                    stack.append((items, left, kind, frozen, extra))
                    if frozen == 2:
                        frozen = 0 if len(items) & 1 else 1
                    items = []
                    left = count
                    kind = _K_FUN
                    extra = fun_header
                    pos = end
                    continue
            else:
                value, pos = scalars[tag](buf, pos, opts)

            # Deliver the value to the innermost open container, closing finished ones.
            items.append(value)
            left -= 1
            while not left:
                if kind == _K_TUPLE:
                    value = tuple(items)
                elif kind == _K_LIST:
                    if buf[pos] != 106:  # not NIL_EXT: an improper list, read its tail
                        kind = _K_TAIL
                        left = 1
                        break
                    pos += 1
                    value = FrozenList(items) if frozen else items
                elif kind == _K_MAP:
                    value = _finish_map(items, frozen, extra)
                elif kind == _K_TAIL:
                    value = _finish_list(items, frozen, extra)
                elif kind == _K_FUN:
                    value = _finish_fun(items, extra, buf, pos)
                else:  # _K_ROOT: value is the whole term
                    return value, pos
                items, left, kind, frozen, extra = stack.pop()
                items.append(value)
                left -= 1
    except (IndexError, struct.error):
        raise TruncatedError(
            f"truncated input: term at offset {pos} (tag {buf[pos] if pos < n else 'missing'}) is incomplete", pos
        ) from None


_GC_PAUSE_BYTES = 256 * 1024
"""Inputs at least this large are decoded with the cyclic garbage collector paused: a
decoded term holds no cycles (nothing for it to find), yet building a million containers
would run it dozens of times over everything built so far (measured: 1M empty lists
decode in 150 ms instead of 360 ms)."""


def _decode_term_without_gc(buf: bytes, pos: int, opts: Options, max_terms: int) -> tuple[Any, int]:
    gc.disable()
    try:
        return decode_term(buf, pos, opts, max_terms)
    finally:
        gc.enable()


def _inflate(buf: bytes, pos: int, opts: Options) -> tuple[bytes, int]:
    """Inflate the compressed term at ``pos`` (the tag 80); return (body, end offset).

    One bounded decompress call: zlib produces at most ``declared + 1`` bytes (one more
    than declared proves the header wrong), so a zip bomb costs nothing. The input is
    first cut at the longest stream zlib writes for ``declared`` bytes (its
    ``compressBound``, plus slack), because zlib copies all input after the end of the
    stream into ``unused_data``: a small compressed term at the start of a large
    receive buffer must not copy the rest of the buffer. Only a valid but padded stream
    (empty deflate blocks, which Erlang never writes) needs a second call.
    """
    start = pos + 5
    if start > len(buf):
        raise _truncated("compressed term header", pos, 5, len(buf) - pos)
    declared = _u32(buf, pos + 1)[0]
    limit = opts.limits.max_decompressed_size
    if declared > limit:
        raise LimitExceeded("max_decompressed_size", f"compressed term declares {declared} bytes, maximum {limit}", pos)
    stop = start + declared + (declared >> 12) + (declared >> 14) + (declared >> 25) + 64
    if stop > len(buf):
        stop = len(buf)
    # A small input is cheaper to copy than to wrap in a memoryview.
    data = buf[start:stop] if stop - start <= 2048 else memoryview(buf)[start:stop]
    inflater = zlib.decompressobj()
    try:
        body = inflater.decompress(data, declared + 1)
        if not inflater.eof and len(body) <= declared and stop < len(buf):
            body += inflater.decompress(memoryview(buf)[stop:], declared + 1 - len(body))
            stop = len(buf)
    except zlib.error as exc:
        raise DecodeError(f"compressed term is not a valid zlib stream: {exc}", pos) from None
    if len(body) > declared:
        raise DecodeError(f"compressed term inflates to more than its declared {declared} bytes", pos)
    if not inflater.eof:
        if len(body) < declared:
            raise TruncatedError(
                f"truncated input: compressed term ends after {len(body)} of {declared} declared bytes", pos
            )
        raise TruncatedError("truncated input: zlib stream of the compressed term is incomplete", pos)
    if len(body) != declared:
        raise DecodeError(f"compressed term inflates to {len(body)} bytes, but declares {declared}", pos)
    return body, stop - len(inflater.unused_data)


def decode_versioned(buf: bytes, pos: int, opts: Options, version: bool = True) -> tuple[Any, int]:
    """Decode the term at ``pos`` (starting with the 131 version byte if ``version``)."""
    if version:
        if pos >= len(buf):
            raise TruncatedError("truncated input: empty, expected version byte 131", pos)
        if buf[pos] != T.VERSION:
            raise DecodeError(f"expected version byte 131, got {buf[pos]}", pos)
        pos += 1
        if pos < len(buf) and buf[pos] == T.COMPRESSED:
            body, end = _inflate(buf, pos, opts)
            limits = opts.limits
            budget = limits.compressed_terms_allowance + limits.max_terms_per_compressed_byte * (end - pos)
            try:
                if budget < limits.max_total_terms:
                    value, used = decode_term(body, 0, opts, budget)
                else:
                    value, used = decode_term(body, 0, opts)
            except LimitExceeded as exc:
                if exc.limit == "max_total_terms" and budget < limits.max_total_terms:
                    raise LimitExceeded(
                        "max_terms_per_compressed_byte",
                        f"compressed term of {end - pos} bytes holds more than {budget} terms "
                        f"({limits.compressed_terms_allowance} + {limits.max_terms_per_compressed_byte} per compressed byte); "
                        "send it uncompressed or raise the limit",
                        pos,
                    ) from None
                raise _rebase(exc, pos) from None
            except TruncatedError as exc:
                # Inside a complete zlib stream, missing bytes are corruption, not truncation.
                raise DecodeError(f"compressed term body: {exc.reason} at offset {exc.offset} of the decompressed data", pos) from None
            except DecodeError as exc:
                raise _rebase(exc, pos) from None
            if used != len(body):
                raise DecodeError(f"compressed term body has {len(body) - used} bytes after the term", pos)
            return value, end
    return decode_term(buf, pos, opts)


def _rebase(exc: DecodeError, pos: int) -> DecodeError:
    """The same error, located at the compressed term, with the inner offset in the text."""
    message = f"{exc.reason} at offset {exc.offset} of the decompressed data of the compressed term"
    if isinstance(exc, LimitExceeded):
        new: DecodeError = LimitExceeded(exc.limit, message.split(": ", 1)[-1], pos)
    else:
        new = type(exc)(message, pos)
    return new
