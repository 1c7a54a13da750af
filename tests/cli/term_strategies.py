"""Hypothesis strategies for terms that have Erlang literal syntax (what
``pyfabric.etf.parse`` can produce and ``erl_parse:parse_term/1`` can read): no pids,
ports, references or local funs. Shared by tests/cli and interop_tests/test_etf_text_interop.py."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from pyfabric.etf import Atom, BitString, ExportFun, FrozenDict, FrozenList, ImproperList

_NO_SURROGATES = st.characters(blacklist_categories=("Cs",))

atom_names = st.one_of(
    st.sampled_from(["ok", "", "hello world", "after", "maybe", "else", "Hello", "a@b", "_x", "é", "ß", "\u2603", "a'b", "a\\b", "\n", "true", "fun"]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=8),
    st.text(alphabet=_NO_SURROGATES, max_size=8),
)
atoms = atom_names.map(Atom)
integers = st.one_of(st.integers(-300, 300), st.integers(-(2**64), 2**64), st.integers(-(2**400), 2**400))
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.0, 0.1, 1.0e10, 1.0e-5, 5e-324, 1.7976931348623157e308, 1000.0, 100.0, 123456789.0]),
)
text = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=12),
    st.text(alphabet=_NO_SURROGATES, max_size=12),
)
binaries = st.one_of(
    st.binary(max_size=12),
    text.map(lambda s: s.encode("utf-8")),
)
bitstrings = st.builds(BitString, st.binary(min_size=1, max_size=6), st.integers(1, 7))
export_funs = st.builds(ExportFun, atoms, atoms, st.integers(0, 255))

leaves = st.one_of(integers, floats, atoms, text, binaries, bitstrings, export_funs, st.booleans(), st.none())
# Keys that are never equal in Python while distinct in Erlang (no floats: 1 == 1.0).
key_leaves = st.one_of(st.integers(-1000, 1000), atoms.filter(lambda a: a.name not in ("true", "false", "undefined")), st.binary(max_size=6), text.filter(bool))
map_keys = st.recursive(key_leaves, lambda inner: st.tuples(inner, inner), max_leaves=3)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=5).map(tuple),
        st.lists(children, max_size=5),
        st.dictionaries(map_keys, children, max_size=5),
        st.builds(
            ImproperList,
            st.lists(children, min_size=1, max_size=3).map(tuple),
            children.filter(lambda t: not isinstance(t, (list, str, ImproperList, FrozenList))),
        ),
    )


terms = st.recursive(leaves, _containers, max_leaves=25)
_ = FrozenDict  # re-exported for tests that build keys by hand
