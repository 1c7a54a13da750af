"""Hypothesis strategies for Python values that pyfabric.etf can encode, and an
Erlang-equality normaliser (shared by tests/etf and the interop tests)."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import strategies as st

from pyfabric.etf import (
    Atom,
    BitString,
    ErlangMap,
    ExportFun,
    FrozenDict,
    FrozenList,
    Fun,
    ImproperList,
    Pid,
    Port,
    Reference,
)

_TEXT_CHARS = st.characters(blacklist_categories=("Cs",))

atom_names = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=12),
    st.text(alphabet=_TEXT_CHARS, max_size=12),
    st.text(alphabet=_TEXT_CHARS, min_size=200, max_size=255),
)
atoms = atom_names.map(Atom)
# Not "nonode@nohost": Erlang validates (and may rewrite) ids naming its own node.
node_atoms = st.sampled_from(["a@b", "srv@vm", "n\u00e9@h\u00f6st", "\u2603@x"]).map(Atom)
u32 = st.integers(0, 2**32 - 1)

integers = st.one_of(
    st.integers(0, 255),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**80), 2**80),
    st.integers(-(2**3000), 2**3000),
)
floats = st.floats(allow_nan=False, allow_infinity=False)
bitstrings = st.builds(BitString, st.binary(min_size=1, max_size=20), st.integers(1, 7))
pids = st.builds(Pid, node_atoms, u32, u32, u32)
ports = st.builds(Port, node_atoms, st.integers(0, 2**64 - 1), u32)
references = st.builds(Reference, node_atoms, u32, st.lists(u32, min_size=1, max_size=5).map(tuple))
export_funs = st.builds(ExportFun, atoms, atoms, st.integers(0, 255))
text = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=20),
    st.text(alphabet=_TEXT_CHARS, max_size=20),
)

leaves = st.one_of(
    integers,
    floats,
    atoms,
    st.booleans(),
    st.none(),
    text,
    st.binary(max_size=40),
    bitstrings,
    pids,
    ports,
    references,
    export_funs,
)

# Map keys that cannot be equal in Erlang while distinct in Python (or vice versa).
hashable_leaves = st.one_of(integers, atoms.filter(lambda a: a.name not in ("true", "false", "undefined")), st.binary(max_size=10), text.filter(bool), pids, references)
map_keys = st.recursive(hashable_leaves, lambda inner: st.tuples(inner, inner), max_leaves=4)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=6).map(tuple),
        st.lists(children, max_size=6),
        st.dictionaries(map_keys, children, max_size=6),
        st.builds(
            ImproperList,
            st.lists(children, min_size=1, max_size=4).map(tuple),
            st.one_of(integers, atoms, st.binary(max_size=4), floats, st.tuples(children)),
        ),
    )


terms = st.recursive(leaves, _containers, max_leaves=25)


def norm(value: Any) -> Any:
    """A hashable canonical form under which Erlang-equal values compare equal.

    Erlang has no strings and no booleans: ``"ab"``, ``[97, 98]`` and
    ``FrozenList([97, 98])`` are the same term, ``True`` is the atom ``true``, ``None``
    is ``undefined``.
    """
    t = type(value)
    if t is bool:
        return Atom("true" if value else "false")
    if value is None:
        return Atom("undefined")
    if t is int:
        return ("i", value)
    if t is float:
        return ("f", struct.pack(">d", value))
    if t is str:
        return ("L", tuple(("i", ord(c)) for c in value))
    if t in (list, FrozenList):
        return ("L", tuple(norm(v) for v in value))
    if t is tuple:
        return ("T", tuple(norm(v) for v in value))
    if t in (dict, FrozenDict):
        return ("M", frozenset((norm(k), norm(v)) for k, v in value.items()))
    if t in (bytes, bytearray, memoryview):
        return ("B", bytes(value))
    if t is BitString:
        return ("B", value.data) if value.bits == 8 else ("BS", value.data, value.bits)
    if t is ImproperList:
        tail = norm(value.tail)
        heads = tuple(norm(v) for v in value.elements)
        if type(tail) is tuple and tail[0] == "L":
            return ("L", heads + tail[1])
        return ("I", heads, tail)
    if t is Fun:
        return ("F", value.module, value.index, value.uniq, value.arity, value.old_index, value.old_uniq, value.pid, norm(value.free_vars))
    if t in (Atom, Pid, Port, Reference, ExportFun):
        return value
    raise TypeError(f"norm: unexpected {t}")


def _colliding_keys(i: int) -> list[Any]:
    """Pairs of keys distinct in Erlang but equal in Python, built around the integer ``i``."""
    return [
        [i, float(i)],
        [(i,), (float(i),)],
        [FrozenList([i]), FrozenList([float(i)])],
        [FrozenDict({i: Atom("a")}), FrozenDict({float(i): Atom("a")})],
        [(i, FrozenList([i, 1])), (float(i), FrozenList([i, 1.0]))],
    ][i % 5]


@st.composite
def colliding_maps(draw: st.DrawFn) -> ErlangMap:
    """ErlangMaps whose keys a dict cannot hold (1 and 1.0, {1} and {1.0}, ...), in any order."""
    ints = draw(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=40, unique=True))
    keys = draw(st.permutations([k for i in ints for k in _colliding_keys(i)]))
    values = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.binary(max_size=4),
                       st.lists(st.integers(0, 300), max_size=3))
    return ErlangMap((k, draw(values)) for k in keys)
