"""Garbage from the network only ever produces our events (h11's fuzz rule): random
bytes, mutated vectors and structured nonsense terms, in every state and mode."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_testlib import CHALLENGE_02, VECTORS, A, fixed_random, frame, make_conn, ours_pair

from pyfabric.etf import Pid, encode
from pyfabric.protocol import NEED_DATA, ConnectionClosed, Event
from pyfabric.protocol._connection import INTERNAL_ERROR

SCALE = max(1, int(os.environ.get("FUZZ_SECONDS", "20")) // 20)
FUZZ = settings(
    max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def legacy_server():
    conn = make_conn(
        "server", allowed={"simple_server"}, allow_legacy_auth=True, random_bytes=fixed_random(bytes.fromhex(CHALLENGE_02))
    )
    conn.receive_data(frame(VECTORS[1]) + frame(VECTORS[3]))
    conn.events()
    conn.data_to_send()
    return conn


def extended(side):
    pair = ours_pair(server_kw={"allowed": {"echo"}})
    pair.take("client")
    pair.take("server")
    return getattr(pair, side)


FACTORIES = {
    "legacy_server": legacy_server,
    "ext_server": lambda: extended("server"),
    "ext_client": lambda: extended("client"),
    "fresh_server": lambda: make_conn("server", allow_legacy_auth=True),
    "fresh_client": lambda: (lambda c: (c.start(), c)[1])(make_conn("client", allow_legacy_auth=True)),
}


def check_only_events(conn, data, chunk=None):
    """Feed ``data``; every outcome must be one of our events; nothing may raise."""
    chunks = [data] if not chunk else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    seen = []
    for piece in chunks:
        conn.receive_data(piece)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            assert isinstance(event, Event), event
            assert INTERNAL_ERROR not in str(getattr(event, "error", "")), event
            seen.append(event)
        conn.data_to_send()
    closed = [i for i, e in enumerate(seen) if isinstance(e, ConnectionClosed)]
    if closed:
        assert closed == [len(seen) - 1]
        assert conn.state == "closed"
    return seen


@FUZZ
@given(kind=st.sampled_from(sorted(FACTORIES)), data=st.binary(max_size=300), chunk=st.sampled_from([None, 1, 5]))
def test_random_bytes(kind, data, chunk):
    check_only_events(FACTORIES[kind](), data, chunk)


@FUZZ
@given(kind=st.sampled_from(sorted(FACTORIES)), payloads=st.lists(st.binary(max_size=80), max_size=6))
def test_random_frames(kind, payloads):
    check_only_events(FACTORIES[kind](), b"".join(frame(b"\x83" + p) for p in payloads))


@st.composite
def mutated_vector(draw):
    data = bytearray(VECTORS[draw(st.sampled_from(sorted(VECTORS)))])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 16))]
    return bytes(data)


@FUZZ
@given(kind=st.sampled_from(sorted(FACTORIES)), frames=st.lists(mutated_vector(), min_size=1, max_size=5))
def test_mutated_vectors(kind, frames):
    check_only_events(FACTORIES[kind](), b"".join(frame(f) for f in frames))


MARKERS = ["m", "t", "pr", "pl", "r", "po", "f", "DEAD", "whereis", "whereis_reply", "link", "unlink", "exit2",
           "heartbeat", "heartbeat_ack", "error", "hello", "challenge", "response", "auth", "success", "failed",
           "undefined", "noproc", "echo", "rex", "true", "false"]
leaves = st.one_of(
    st.integers(-3, 1000),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(MARKERS).map(A),
    st.binary(max_size=20),
    st.text(max_size=8),
    st.just(Pid(A("x@y"), 1, 2, 3)),
)
terms = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.tuples(st.sampled_from(MARKERS).map(A), inner),
        st.tuples(st.sampled_from(MARKERS).map(A), inner, inner),
        st.dictionaries(st.integers(0, 5), inner, max_size=3),
    ),
    max_leaves=20,
)


@FUZZ
@given(kind=st.sampled_from(sorted(FACTORIES)), items=st.lists(terms, min_size=1, max_size=5), compressed=st.booleans())
def test_structured_nonsense_terms(kind, items, compressed):
    data = b"".join(frame(encode(t, minor_version=1, compressed=compressed)) for t in items)
    check_only_events(FACTORIES[kind](), data)


def test_deep_nesting_is_a_drop_not_a_crash():
    conn = extended("server")
    deep = A("x")
    for _ in range(2000):
        deep = (A("t"), (deep,))
    check_only_events(conn, frame(encode((A("m"), A("echo"), deep), minor_version=1)))
    deep_list = []
    for _ in range(480):
        deep_list = [deep_list]
    events = check_only_events(conn, frame(encode((A("m"), A("echo"), deep_list), minor_version=1)))
    assert events and conn.state == "established"


def test_zip_bomb_is_bounded():
    conn = make_conn("server", allow_legacy_auth=True, max_frame=1 << 16)
    conn.receive_data(frame(VECTORS[1]))
    conn.events()
    import zlib

    body = encode((A("m"), A("echo"), bytes(10 << 20)), minor_version=1)[1:]
    bomb = b"\x83P" + len(body).to_bytes(4, "big") + zlib.compress(body, 9)
    check_only_events(conn, frame(bomb))
