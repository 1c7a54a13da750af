"""Decode bounds (:class:`DecodeLimits`): every policy limit the decoder enforces.

Each bound is checked *before* the memory it protects is allocated. Structural
checks (a declared length must fit in the bytes that remain) are not limits:
they always apply, whatever the limits say.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DecodeLimits", "DEFAULT_LIMITS", "RELAXED_LIMITS", "ERLANG_MAX_ATOM_CHARS"]

_MiB = 1024 * 1024

# Erlang atoms are at most 255 characters; binary_to_term rejects longer ones.
ERLANG_MAX_ATOM_CHARS = 255


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Named bounds applied while decoding untrusted bytes.

    The defaults are for network input of a message-passing protocol: generous for real
    messages, and small enough that one hostile input costs at most about 100 ms of CPU
    and about 150 MiB of memory on a current machine, whatever it holds. Bulk data is
    cheap (a binary of any size is one term and one copy); what costs is the number of
    terms, each a Python object built by the decoder and walked again by whoever uses
    the value. So the term count is bounded twice: in absolute terms
    (``max_total_terms``) and relative to the bytes that arrived
    (``max_terms_per_compressed_byte``; an uncompressed input has at most one term per
    byte by construction), so that a small frame can never be an expensive one.
    A message that needs more terms should carry its bulk as binaries, or the receiver
    can pass its own, larger limits.
    """

    max_input_size: int = 64 * _MiB
    """Largest encoded term (bytes, compressed form as received). Bounds everything else."""

    max_depth: int = 512
    """Deepest container nesting. The decoder never recurses, but the users of a value do:
    Python compares, hashes and prints terms recursively, and the encoder and pyfabric's
    payload rewriting recurse once per level, so a term deeper than about the interpreter's
    recursion limit (1000) is a trap for its receiver. 512 leaves room for the caller's own
    stack frames."""

    max_container_len: int = 512 * 1024
    """Most elements in one tuple, list or map (map: key/value pairs). Never more than
    ``max_total_terms`` in effect."""

    max_total_terms: int = 512 * 1024
    """Most terms (of any kind) in one decoded value. A scalar costs at least an 8-byte
    reference and about 0.1 µs to decode and walk again (measured end to end on a
    server: a million small integers, 100 ms), so this is about 50 ms of one message's
    budget."""

    max_containers: int = 64 * 1024
    """Most tuples, lists and maps (empty ones included) in one decoded value. A container
    is the expensive term: a new Python object (56+ bytes) to build, and a recursive call
    in every walk of the value, together about 1 µs per container on a server (measured:
    200 000 empty lists, 180 ms). 64 Ki of them are about 65 ms of one message's budget."""

    max_terms_per_compressed_byte: int = 16
    """For a compressed input (tag 80): most terms per byte of the compressed form, beyond
    the first ``compressed_terms_allowance``. zlib packs up to ~1000 bytes of repetitive
    data into one, so without this a 16 KB frame can hold 16 million empty lists; with it,
    the cost of a compressed input stays proportional to the bytes that arrived, like an
    uncompressed one's (at most one term per byte). Bytes themselves are not
    ratio-bounded: inflating is linear and cheap, and ``max_decompressed_size`` caps it."""

    compressed_terms_allowance: int = 64 * 1024
    """Terms a compressed input may always hold, whatever its size (see
    ``max_terms_per_compressed_byte``): a small, very repetitive message still decodes."""

    max_bignum_bytes: int = 4096
    """Longest integer magnitude in bytes (4096 bytes = 32768 bits; RSA-4096 fits).
    Python arithmetic on huge integers is slow, so a peer must not hand us one."""

    max_atom_length: int = ERLANG_MAX_ATOM_CHARS
    """Longest atom in characters; Erlang's own maximum is 255."""

    max_binary_size: int = 64 * _MiB
    """Largest binary or bitstring in bytes."""

    max_decompressed_size: int = 64 * _MiB
    """Largest declared (and actual) uncompressed size of a compressed term; checked
    before inflating and enforced while inflating, so a zip bomb costs nothing."""

    atoms: frozenset[str] | None = None
    """If set, only these atoms may appear (like Erlang's ``binary_to_term(B, [safe])``,
    which refuses atoms that do not exist yet); others raise UnsafeTermError."""

    def __post_init__(self) -> None:
        for name in (
            "max_input_size",
            "max_depth",
            "max_container_len",
            "max_total_terms",
            "max_containers",
            "max_terms_per_compressed_byte",
            "compressed_terms_allowance",
            "max_bignum_bytes",
            "max_atom_length",
            "max_binary_size",
            "max_decompressed_size",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"DecodeLimits.{name} must be a non-negative int, got {value!r}")
        if self.atoms is not None and not isinstance(self.atoms, frozenset):
            object.__setattr__(self, "atoms", frozenset(self.atoms))


DEFAULT_LIMITS = DecodeLimits()
"""Used when ``safe=True`` and no limits are given."""

RELAXED_LIMITS = DecodeLimits(
    max_input_size=2**32 + 16,
    max_depth=10_000,
    max_container_len=2**32,
    max_total_terms=2**31,
    max_containers=2**31,
    max_terms_per_compressed_byte=2**31,
    compressed_terms_allowance=2**31,
    max_bignum_bytes=16 * _MiB,
    max_atom_length=ERLANG_MAX_ATOM_CHARS,
    max_binary_size=2**32,
    max_decompressed_size=1024 * _MiB,
)
"""Used when ``safe=False`` and no limits are given: trusted input, but still finite so
that a corrupt stream fails with DecodeError instead of exhausting memory."""
