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

    The defaults are for network input of a message-passing protocol: generous for
    real messages, small enough that a hostile peer cannot make one decode call use
    more than a few hundred MiB or more than about a second of CPU.
    """

    max_input_size: int = 64 * _MiB
    """Largest encoded term (bytes, compressed form as received). Bounds everything else."""

    max_depth: int = 1000
    """Deepest container nesting. Python compares and prints terms recursively, so a
    term deeper than the interpreter's recursion limit (1000) is a trap for the caller
    even though the decoder itself never recurses."""

    max_container_len: int = 16 * 1024 * 1024
    """Most elements in one tuple, list or map (map: key/value pairs)."""

    max_total_terms: int = 16 * 1024 * 1024
    """Most terms (of any kind) in one decoded value: each costs a Python object or at
    least an 8-byte reference, so this bounds memory use for inputs of 1-byte terms."""

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
    max_bignum_bytes=16 * _MiB,
    max_atom_length=ERLANG_MAX_ATOM_CHARS,
    max_binary_size=2**32,
    max_decompressed_size=1024 * _MiB,
)
"""Used when ``safe=False`` and no limits are given: trusted input, but still finite so
that a corrupt stream fails with DecodeError instead of exhausting memory."""
