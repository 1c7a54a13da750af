"""The C backend (``implementation == "c"``): the extension ``_speedups`` wired to the Python one.

Importing this module imports the compiled extension (ImportError if it was not built)
and hands it, once, the objects of the pure-Python backend it shares: the value classes,
the atom and pid caches, and the functions it defers to. The C code decodes and encodes
the common terms itself; for the rest it calls those functions, by tag or by type, never
on failure alone (the list is in ``_speedups.c``'s header comment and docs/terms.md).
When the C decoder meets malformed input or a limit it stops and runs the Python
decoder on the same arguments, so every error is the reference implementation's.

The three entry points have the signatures of their Python counterparts.
"""

from __future__ import annotations

from typing import Any

from . import _decode, _encode
from ._erlang_map import ErlangMap
from ._speedups import decode_term, decode_versioned, setup
from ._speedups import encode as _c_encode
from ._types import Atom, FrozenDict, FrozenList, ImproperList, Pid, Reference

__all__ = ["decode_term", "decode_versioned", "encode"]

setup(
    {
        "Atom": Atom,
        "Pid": Pid,
        "Reference": Reference,
        "FrozenList": FrozenList,
        "FrozenDict": FrozenDict,
        "ErlangMap": ErlangMap,
        "ImproperList": ImproperList,
        "atoms": _decode._ATOMS,
        "pids": _decode._PIDS,
        "true": _decode._TRUE,
        "false": _decode._FALSE,
        "undefined": _decode._UNDEFINED,
        "read_atom": _decode._read_atom,
        "new_pid": _decode._d_new_pid,
        "reference": _decode._d_reference,
        "scalars": _decode._SCALARS,
        "finish_list": _decode._finish_list,
        "finish_map": _decode._finish_map,
        "decode_term": _decode.decode_term,
        "decode_versioned": _decode.decode_versioned,
        "inflate": _decode._inflate,
        "atom_ext": _encode._atom_ext,
        "bignum": _encode._bignum,
        "leaf_encoders": _encode._LEAF_ENCODERS,
    }
)

_encode_options = _encode.encode_options
_compress = _encode.compress
_py_encode = _encode.encode


def encode(term: Any, compressed: bool | int = False, minor_version: int = 2) -> bytes:
    """:func:`pyfabric.etf.encode` with the C encoder (the Python one for what it leaves)."""
    if compressed is False and type(minor_version) is int and 0 < minor_version < 3:
        level = 0  # the common options: nothing to check
    else:
        level = _encode_options(compressed, minor_version)
    data = _c_encode(term, minor_version)
    if data is None:
        return _py_encode(term, compressed, minor_version)
    return _compress(data, level) if level else data
