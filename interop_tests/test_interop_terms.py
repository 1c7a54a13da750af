"""Random terms through a real Erlang process and back, both ways, compared byte-exactly.

Python client -> Erlang server's ``echo`` (asyncio and blocking clients), and Python server ->
an ``echo`` on the Erlang client's node. Terms are hypothesis-generated (tests/etf's
strategies) plus real pids: our own processes and the echo's proxy, which must come back as
the very same pids. What comes back is compared under Erlang equality (``norm``: a ``str``
goes out as a charlist and comes back as a ``str`` when it fits a Latin-1 STRING_EXT, as a
``list`` of code points otherwise; ``True``/``None`` come back as atoms; docs/terms.md) *and*
byte for byte after re-encoding, up to map key order (which Erlang chooses).
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from interop_support import HOST, ROOT, SECRET, WAIT, Harness, erl, erl_session  # noqa: F401

import pyfabric
from pyfabric import ANY, Atom, BitString, ImproperList, Pid, Reference, etf
from pyfabric.etf import FrozenDict, FrozenList

_spec = importlib.util.spec_from_file_location("etf_strategies", ROOT / "tests" / "etf" / "etf_strategies.py")
assert _spec and _spec.loader
strategies = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(strategies)
norm = strategies.norm

SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


def terms_with(pids: list[Pid]) -> st.SearchStrategy[Any]:
    """tests/etf's leaves and containers, with the given live pids as the only pids.

    (Pids of processes that are not alive come back as the same pid too, through the
    session's graves: test_interop_links.py checks that case on its own.)"""
    s = strategies
    live = st.sampled_from(pids)
    leaves = st.one_of(s.integers, s.floats, s.atoms, st.booleans(), st.none(), s.text, st.binary(max_size=40),
                       s.bitstrings, live, s.ports, s.references, s.export_funs)
    key_leaves = st.one_of(s.integers, s.atoms.filter(lambda a: a.name not in ("true", "false", "undefined")),
                           st.binary(max_size=10), s.text.filter(bool), live, s.references)
    keys = st.recursive(key_leaves, lambda inner: st.tuples(inner, inner), max_leaves=4)

    def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.lists(children, max_size=6).map(tuple),
            st.lists(children, max_size=6),
            st.dictionaries(keys, children, max_size=6),
            st.builds(ImproperList, st.lists(children, min_size=1, max_size=4).map(tuple),
                      st.one_of(s.integers, s.atoms, st.binary(max_size=4), s.floats, st.tuples(children))),
        )

    return st.recursive(leaves, containers, max_leaves=25)


def canonical(value: Any, key: bool = False) -> Any:
    """``value`` with every map's items sorted by their key's encoding (Erlang picks the
    order of the maps it sends), so that Erlang-identical terms encode identically."""
    t = type(value)
    if t is tuple:
        return tuple(canonical(v, key) for v in value)
    if t is list or t is FrozenList:
        items = [canonical(v, key) for v in value]
        return FrozenList(items) if key else items
    if t is ImproperList:
        return ImproperList(tuple(canonical(v, key) for v in value.elements), canonical(value.tail, key))
    if t is dict or t is FrozenDict:
        items = [(canonical(k, True), canonical(v, key)) for k, v in value.items()]
        items.sort(key=lambda kv: etf.encode(kv[0]))
        return FrozenDict(items) if key else dict(items)
    return value


def assert_same_term(sent: Any, got: Any) -> None:
    assert norm(got) == norm(sent)
    assert etf.encode(canonical(got)) == etf.encode(canonical(sent))


# -- Python client -> Erlang server's echo --------------------------------------------------


@pytest.fixture(scope="module")
def erl_echo(erl: Harness) -> int:
    erl.cmd("{start_demo, [echo]}")
    _server, port = erl.start_server(["echo"])
    return port


@pytest.fixture(scope="module")
def blocking_echo(erl_echo: int) -> Iterator[tuple[Any, Any, Pid]]:
    client = pyfabric.connect(HOST, erl_echo, SECRET)
    try:
        box = client.mailbox()
        proxy = client.whereis("echo")
        assert proxy is not None
        yield client, box, proxy
    finally:
        client.close()


@settings(max_examples=100, **SETTINGS)
@given(data=st.data())
def test_random_terms_through_erlang_echo_blocking(blocking_echo: tuple[Any, Any, Pid], data: st.DataObject) -> None:
    """Blocking client: hypothesis terms (with our pid and the echo proxy inside) sent to Erlang's echo come back identical."""
    client, box, proxy = blocking_echo
    term = data.draw(terms_with([box.pid, proxy]))
    client.send(proxy, (box.pid, term))
    sender, got = box.receive((ANY, ANY), timeout=WAIT)
    assert sender == proxy
    assert_same_term(term, got)


@pytest.fixture(scope="module")
def async_echo(erl_echo: int) -> Iterator[tuple[asyncio.AbstractEventLoop, Any, Any, Pid]]:
    """An aconnect client on a loop this thread drives (one ``run_until_complete`` per example)."""
    loop = asyncio.new_event_loop()
    client = None
    try:
        client = loop.run_until_complete(pyfabric.aconnect(HOST, erl_echo, SECRET))
        box = client.mailbox()
        proxy = loop.run_until_complete(client.whereis("echo"))
        assert proxy is not None
        yield loop, client, box, proxy
    finally:
        if client is not None:
            loop.run_until_complete(client.close())
        loop.close()


@settings(max_examples=50, **SETTINGS)
@given(data=st.data())
def test_random_terms_through_erlang_echo_async(async_echo: tuple[Any, Any, Any, Pid], data: st.DataObject) -> None:
    """aconnect client: hypothesis terms sent to Erlang's echo come back identical (pids and proxies as the same pids)."""
    loop, client, box, proxy = async_echo
    term = data.draw(terms_with([box.pid, proxy]))

    async def roundtrip() -> tuple[Pid, Any]:
        client.send(proxy, (box.pid, term))
        return await box.receive((ANY, ANY), timeout=WAIT)

    sender, got = loop.run_until_complete(roundtrip())
    assert sender == proxy
    assert_same_term(term, got)


def test_documented_normalisations_through_erlang(blocking_echo: tuple[Any, Any, Pid]) -> None:
    """Edge terms through Erlang: bignums, -0.0, {}, improper lists, bitstrings, refs, and the documented str/list/bool changes."""
    client, box, proxy = blocking_echo
    ref = Reference(Atom("other@host"), 3, (1, 2, 3))
    cases: list[tuple[Any, Any]] = [
        (2**3000 + 1, 2**3000 + 1),
        (-(2**64), -(2**64)),
        (-0.0, -0.0),
        (1e308, 1e308),
        ((), ()),
        (((((),),),), ((((),),),)),
        (ImproperList((1, "a"), Atom("tail")), ImproperList((1, "a"), Atom("tail"))),
        (BitString(b"\xff\x80", 3), BitString(b"\xff\x80", 3)),
        (b"", b""),
        (ref, ref),
        ({(box.pid, proxy): [proxy], Atom("k"): {}}, {(box.pid, proxy): [proxy], Atom("k"): {}}),
        # Erlang has no strings or booleans (docs/terms.md):
        ([1, 2], "\x01\x02"),
        ("", []),
        ("caf\u00e9", "caf\u00e9"),
        ("\u2603x", [0x2603, ord("x")]),
        (True, Atom("true")),
        (None, Atom("undefined")),
    ]
    for sent, expected in cases:
        client.send(proxy, (box.pid, sent))
        sender, got = box.receive((ANY, ANY), timeout=WAIT)
        assert sender == proxy
        assert got == expected and type(got) is type(expected), (sent, got)
    # The reference travelled through Erlang and is still usable as a map key / equal value.
    client.send(proxy, (box.pid, {ref: 1}))
    assert box.receive(timeout=WAIT) == (proxy, {ref: 1})


# -- Python server -> an echo on the Erlang client's node ----------------------------------


@pytest.fixture(scope="module")
def erlang_client_echo(erl: Harness) -> Iterator[tuple[Any, Any, Pid]]:
    """A Python server whose ``registrar`` mailbox receives the pid of an ``echo`` living on
    the Erlang client's node: the server can then send terms to that echo and get them back."""
    server = pyfabric.start_server(HOST, 0, SECRET, allowed=["registrar"])
    try:
        registrar = server.mailbox("registrar")
        erl.cmd("{start_demo, [echo]}")
        conn = erl.connect(server.port, max_new_atoms="1000000")
        found = erl.whereis(conn, "registrar")
        assert found is not None
        erl.eval(f"maps:get({found[0]}, get(handles)) ! {{whereis(echo), hello}}, ok")
        echo_proxy, hello = registrar.receive(timeout=WAIT)
        assert hello == Atom("hello") and isinstance(echo_proxy, Pid)
        box = server.mailbox()
        server.registrar, server.registrar_handle = registrar, found[0]  # for the next test
        yield server, box, echo_proxy
        erl.cmd(f"{{close, {conn}}}")
    finally:
        server.close()


@settings(max_examples=70, **SETTINGS)
@given(data=st.data())
def test_random_terms_through_erlang_client_echo(erlang_client_echo: tuple[Any, Any, Pid], data: st.DataObject) -> None:
    """Python server: hypothesis terms sent to an echo on the Erlang client's node come back identical."""
    server, box, echo_proxy = erlang_client_echo
    term = data.draw(terms_with([box.pid, echo_proxy]))
    box.send(echo_proxy, (box.pid, term))
    sender, got = box.receive((ANY, ANY), timeout=WAIT)
    assert sender == echo_proxy
    assert_same_term(term, got)


def test_erlang_sees_python_terms_as_erlang_terms(erl: Harness, erlang_client_echo: tuple[Any, Any, Pid]) -> None:
    """A Python term arrives in Erlang as the expected Erlang term: charlists, unwrapped tuples (marker look-alikes too), maps, bitstrings, a proxy pid."""
    server, box, _echo_proxy = erlang_client_echo
    erl.cmd("{register, seen, collector}")
    try:
        # Hand the collector's pid to the Python side through the registrar proxy.
        erl.eval(f"maps:get({server.registrar_handle}, get(handles)) ! {{whereis(seen), hello}}, ok")
        seen_proxy, hello = server.registrar.receive(timeout=WAIT)
        assert hello == Atom("hello")
        term = (
            (Atom("t"), (1,)),  # looks like a rewriting marker: must arrive as plain user data
            (Atom("pr"), 1),
            "abc",
            [1, (2,)],
            b"\x00\x01",
            {Atom("k"): 2.5},
            -12345678901234567890,
            "\u2603",
            True,
            None,
            BitString(b"\xa0", 3),
            ImproperList((1,), 2),
            box.pid,
        )
        box.send(seen_proxy, term)
        events = erl.events(1)
    finally:
        erl.eval("exit(whereis(seen), kill), ok")
    expected = ('[{collector,seen,{{t,{1}},{pr,1},"abc",[1,{2}],<<0,1>>,#{k => 2.5},'
                '-12345678901234567890,[9731],true,undefined,<<5:3>>,[1|2],PID}}]')
    pid = re.search(r"<\d+\.\d+\.\d+>(?=}}\]$)", events)
    assert pid, events
    assert events.replace(pid.group(0), "PID") == expected
