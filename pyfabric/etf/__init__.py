"""Erlang External Term Format (ETF) codec: ``term_to_binary`` / ``binary_to_term`` for Python.

Layering: this package is the bottom layer of pyfabric (no I/O, no imports from the rest
of pyfabric). This module only defines the public entry points as a thin dispatch to
the active backend and re-exports the public names; the work is done in private modules:

- ``_types``: value types (Atom, Pid, Reference, Port, ImproperList, BitString, Fun, ...)
- ``_errors``: the closed set of exceptions
- ``_limits``: :class:`DecodeLimits` and the default bounds
- ``_encode`` / ``_decode``: the pure-Python backend (``implementation == "python"``)
- ``_accel`` and the C extension ``_speedups``: the C backend (``implementation == "c"``)
- ``_convert``: text helpers (charlists and UTF-8 binaries)
- ``_erlang_map``: :class:`ErlangMap` and Erlang's exact equality (maps a dict cannot hold)

Backend: chosen once, at import. The C backend when its extension is importable (it is
built by the normal ``pip install``, optionally: an install without a compiler has only the
Python one), else the pure-Python backend. The environment variable ``PYFABRIC_ETF``
forces one: ``python`` the pure one, ``c`` the C one (an ImportError if it is missing).
Both give the same bytes, the same values and the same errors; :data:`implementation`
names the active one. See ``docs/terms.md`` for the full Erlang <-> Python mapping.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from . import _decode, _encode
from ._convert import binary_to_str, charlist_to_str, str_to_binary, str_to_charlist
from ._erlang_map import ErlangMap, erlang_equal
from ._errors import (
    DecodeError,
    EncodeError,
    ETFError,
    LimitExceeded,
    TruncatedError,
    UnsafeTermError,
    UnsupportedTermError,
)
from ._limits import DEFAULT_LIMITS, RELAXED_LIMITS, DecodeLimits
from ._text import ParseError, format, parse
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

__all__ = [
    "encode",
    "decode",
    "decode_from",
    "decoder_from",
    "implementation",
    "Atom",
    "Pid",
    "Port",
    "Reference",
    "ImproperList",
    "BitString",
    "Fun",
    "ExportFun",
    "FrozenList",
    "FrozenDict",
    "ErlangMap",
    "erlang_equal",
    "DecodeLimits",
    "DEFAULT_LIMITS",
    "RELAXED_LIMITS",
    "ETFError",
    "DecodeError",
    "TruncatedError",
    "LimitExceeded",
    "UnsafeTermError",
    "UnsupportedTermError",
    "EncodeError",
    "charlist_to_str",
    "str_to_charlist",
    "binary_to_str",
    "str_to_binary",
    "parse", "format", "ParseError",
]


def _select_backend() -> tuple[str, Any]:
    """The backend named by ``PYFABRIC_ETF`` (``c``, ``python``), else C if it was built."""
    wanted = os.environ.get("PYFABRIC_ETF", "")
    if wanted == "python":
        return "python", None
    if wanted not in ("", "c"):
        raise ImportError(f"PYFABRIC_ETF must be 'c' or 'python' (or unset), got {wanted!r}")
    try:
        from . import _accel
    except ImportError as exc:
        if wanted == "c":
            raise ImportError(
                "PYFABRIC_ETF=c but the C backend pyfabric.etf._speedups is not built "
                f"({exc}); reinstall with a C compiler and the Python headers"
            ) from exc
        return "python", None
    return "c", _accel


implementation, _accel_module = _select_backend()
"""Name of the active codec backend: ``"c"`` (the extension ``pyfabric.etf._speedups``) or
``"python"``. Selected once at import, never as a silent fallback: ``PYFABRIC_ETF=python``
forces the pure-Python backend, ``PYFABRIC_ETF=c`` the C one (ImportError if not built)."""
logging.getLogger(__name__).debug("ETF codec backend: %s", implementation)

# The active backend's entry points (each has the signature of the Python one).
_decode_term: Callable[..., tuple[Any, int]] = _decode.decode_term
_decode_versioned: Callable[..., tuple[Any, int]] = _decode.decode_versioned
_encode_fn: Callable[[Any, bool | int, int], bytes] = _encode.encode
if _accel_module is not None:
    _decode_term = _accel_module.decode_term
    _decode_versioned = _accel_module.decode_versioned
    _encode_fn = _accel_module.encode
del _accel_module

Buffer = bytes | bytearray | memoryview


def encode(term: Any, *, compressed: bool | int = False, minor_version: int = 2) -> bytes:
    """Encode ``term`` like Erlang's ``term_to_binary(Term, Options)`` (OTP 25).

    The result starts with the version byte 131. ``compressed=True`` is zlib level 6
    (Erlang's ``compressed``), an int 0..9 is that level (``{compressed, N}``); as in
    Erlang the compressed form (tag 80) is only used when it is smaller.
    ``minor_version`` 0 writes floats as FLOAT_EXT text, 1 writes NEW_FLOAT_EXT and
    Latin-1 atoms as ATOM_EXT, 2 (the default here, and in OTP 26+) writes all atoms as
    UTF-8. Note: OTP 25's own default is ``minor_version`` 1.

    Raises :class:`EncodeError` for values with no Erlang form (sets, arbitrary objects,
    ``inf``/``nan``), naming the type and where it is inside ``term``.
    """
    return _encode_fn(term, compressed, minor_version)


# (safe, id(limits), python_atoms, strings) -> (limits, Options). Keyed by the identity
# of ``limits``: hashing a DecodeLimits (a dataclass) costs more than a small decode.
# Each entry holds its ``limits`` object, so that id cannot be reused while cached.
_OPTIONS_CACHE: dict[tuple[Any, ...], tuple[Any, _decode.Options]] = {}


def _options(safe: bool, limits: DecodeLimits | None, python_atoms: bool, strings: str) -> _decode.Options:
    key = (safe, id(limits), python_atoms, strings)
    try:
        cached = _OPTIONS_CACHE.get(key)
    except TypeError:  # unhashable junk passed as an option: report it below
        cached = None
    if cached is not None and cached[0] is limits:
        return cached[1]
    opts = _make_options(safe, limits, python_atoms, strings)
    if len(_OPTIONS_CACHE) < 64:
        _OPTIONS_CACHE[key] = (limits, opts)
    return opts


def decoder_from(
    *, safe: bool = True, limits: DecodeLimits | None = None, python_atoms: bool = False, strings: str = "str"
) -> Callable[[Buffer, int], tuple[Any, int]]:
    """:func:`decode_from` with these options, checked once: ``decoder_from(limits=L)(buf,
    offset)`` is ``decode_from(buf, offset, limits=L)``, for a caller that decodes many
    terms with the same options (a connection decodes every frame it receives)."""
    opts = _options(safe, limits, python_atoms, strings)
    max_input = opts.limits.max_input_size
    versioned = _decode_versioned

    def decode_at(buf: Buffer, offset: int = 0) -> tuple[Any, int]:
        if type(buf) is bytes and type(offset) is int and 0 <= offset and len(buf) - offset <= max_input:
            return versioned(buf, offset, opts)
        return decode_from(buf, offset, safe=safe, limits=limits, python_atoms=python_atoms, strings=strings)

    return decode_at


def _make_options(safe: bool, limits: DecodeLimits | None, python_atoms: bool, strings: str) -> _decode.Options:
    if limits is None:
        limits = DEFAULT_LIMITS if safe else RELAXED_LIMITS
    elif not isinstance(limits, DecodeLimits):
        raise TypeError(f"limits must be a DecodeLimits, got {type(limits).__name__}")
    return _decode.Options(limits, bool(safe), bool(python_atoms), strings)


def _as_bytes(data: Buffer) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, memoryview):
        return data.tobytes()
    raise TypeError(f"expected bytes, bytearray or memoryview, got {type(data).__name__}")


def decode(
    data: Buffer,
    *,
    safe: bool = True,
    limits: DecodeLimits | None = None,
    python_atoms: bool = False,
    strings: str = "str",
) -> Any:
    """Decode exactly one whole term, like Erlang's ``binary_to_term/2``.

    ``data`` must start with the version byte 131 and contain nothing after the term.

    - ``safe`` (default True): reject funs (:class:`UnsafeTermError`) and apply
      :data:`DEFAULT_LIMITS`; ``safe=False`` accepts funs and uses the larger
      :data:`RELAXED_LIMITS`. Structural checks always apply.
    - ``limits``: explicit :class:`DecodeLimits` (used in both modes, including its
      ``atoms`` allow-list).
    - ``python_atoms``: decode ``true``/``false``/``undefined`` as True/False/None
      instead of :class:`Atom`.
    - ``strings``: ``"str"`` (default) decodes STRING_EXT to ``str``; ``"list"`` to a
      list of ints.

    Raises :class:`DecodeError` (or a subclass) with the offending offset.
    """
    buf = data if type(data) is bytes else _as_bytes(data)
    opts = _options(safe, limits, python_atoms, strings)
    if len(buf) > opts.max_input:
        raise LimitExceeded("max_input_size", f"input of {len(buf)} bytes, maximum {opts.max_input}", 0)
    if len(buf) > 1 and buf[0] == 131 and buf[1] != 80:  # the common case: 131, then the term
        value, end = _decode_term(buf, 1, opts)
    else:  # compressed, or invalid
        value, end = _decode_versioned(buf, 0, opts)
    if end != len(buf):
        raise DecodeError(f"{len(buf) - end} unexpected bytes after the term", end)
    return value


def decode_from(
    buf: Buffer,
    offset: int = 0,
    *,
    safe: bool = True,
    limits: DecodeLimits | None = None,
    python_atoms: bool = False,
    strings: str = "str",
    version: bool = True,
) -> tuple[Any, int]:
    """Decode one term starting at ``offset``; return ``(term, offset_after_it)``.

    The term starts with the version byte 131 unless ``version=False``, which decodes
    a bare term body (as found inside other encodings). Bytes after the term are left
    alone. Options are those of :func:`decode`. :class:`TruncatedError` means the
    buffer ends inside the term (more bytes may complete it). ``bytes`` input is
    decoded in place; other buffers are copied from ``offset`` first.
    """
    opts = _options(safe, limits, python_atoms, strings)
    if type(offset) is not int or offset < 0:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")
    max_input = opts.limits.max_input_size
    base = 0
    if type(buf) is bytes and len(buf) - offset <= max_input:
        data, pos = buf, offset
    else:
        view = memoryview(buf).cast("B") if not isinstance(buf, bytes) else memoryview(buf)
        if offset > len(view):
            raise ValueError(f"offset {offset} is beyond the end of the buffer ({len(view)} bytes)")
        data, pos, base = view[offset : offset + max_input].tobytes(), 0, offset
    cut = len(data) - pos >= max_input and (len(buf) - offset) > max_input
    try:
        value, end = _decode_versioned(data, pos, opts, version)
    except TruncatedError as exc:
        if cut:
            raise LimitExceeded("max_input_size", f"term is longer than {max_input} bytes", offset) from None
        if base:
            exc.offset += base
        raise
    except DecodeError as exc:
        if base:
            exc.offset += base
        raise
    return value, end + base
