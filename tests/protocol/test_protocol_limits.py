"""Per-connection table limits: ``max_proxies`` (received frames) and ``max_exports`` (our
commands). Hitting one is a documented drop (``limit``) or a LocalProtocolError, never
unbounded tables, and the connection stays usable."""

from __future__ import annotations

import pytest
from protocol_testlib import A, frame, make_conn, ours_pair

from pyfabric.etf import encode
from pyfabric.protocol import (
    DEFAULT_MAX_EXPORTS,
    DEFAULT_MAX_PROXIES,
    FrameDropped,
    LocalProtocolError,
    MessageReceived,
    PeerError,
    ProxyCreated,
    ProxyDied,
    WhereisRequested,
)

PR = A("pr")


def established(server_kw=None, client_kw=None):
    server_kw = {"allowed": {"echo"}, **(server_kw or {})}
    pair = ours_pair(client_kw=client_kw, server_kw=server_kw)
    pair.take("client")
    pair.take("server")
    return pair


def test_defaults_are_named_and_sane():
    assert DEFAULT_MAX_PROXIES == 100_000
    assert DEFAULT_MAX_EXPORTS == 100_000
    conn = make_conn("server")
    assert (conn.max_proxies, conn.max_exports) == (DEFAULT_MAX_PROXIES, DEFAULT_MAX_EXPORTS)
    with pytest.raises(ValueError):
        make_conn("server", max_proxies=0)


def test_proxy_beyond_the_limit_drops_the_frame_with_limit():
    pair = established(server_kw={"max_proxies": 3})
    pids = [pair.client.pids.new() for _ in range(5)]
    pair.client.send_message(A("echo"), pids[:3])  # exactly at the limit: delivered
    pair.client.send_message(A("echo"), pids[3])  # one more: dropped
    pair.pump()
    events = pair.take("server")
    assert [type(e) for e in events] == [ProxyCreated] * 3 + [MessageReceived, FrameDropped]
    assert events[-1].code == "limit"
    assert len(pair.server.session.proxies) == 3
    (error,) = pair.take("client")
    assert isinstance(error, PeerError) and error.code == "limit"
    # Known proxies still travel; a DEAD releases one, and a new proxy fits again.
    pair.client.send_message(A("echo"), pids[0])
    pair.client.process_exited(pids[1], A("normal"))
    pair.client.send_message(A("echo"), pids[3])
    pair.pump()
    events = pair.take("server")
    assert [type(e) for e in events] == [MessageReceived, ProxyDied, ProxyCreated, MessageReceived]
    assert len(pair.server.session.proxies) == 3


def test_proxy_limit_applies_to_every_frame_that_names_a_process():
    pair = established(server_kw={"max_proxies": 1})
    pair.client.send_message(A("echo"), pair.client.pids.new())
    pair.pump()
    pair.take("server")
    pair.take("client")
    # {r, Token, Name, Id} and link frames create proxies too: raw frames from the peer.
    pair.server.receive_data(frame(encode((A("r"), 1, A("x"), 77), minor_version=1)))
    pair.server.receive_data(frame(encode((A("link"), 78, 1), minor_version=1)))
    events = pair.server.events()
    assert [getattr(e, "code", None) for e in events] == ["limit", "limit"]
    assert len(pair.server.session.proxies) == 1


def test_flood_of_new_ids_ends_with_too_many_errors_and_bounded_tables():
    pair = established(server_kw={"max_proxies": 10, "max_errors": 5})
    for ident in range(1, 200):
        pair.server.receive_data(frame(encode((A("m"), A("echo"), (PR, ident)), minor_version=1)))
    events = pair.server.events()
    assert len(pair.server.session.proxies) <= 10
    assert events[-1].code == "too_many_errors"
    assert pair.server.state == "closed"


def test_export_beyond_the_limit_raises_and_sends_nothing():
    pair = established(client_kw={"max_exports": 2})
    client = pair.client
    a, b, c = (client.pids.new() for _ in range(3))
    client.send_message(A("echo"), [a, b])
    pair.pump()
    pair.take("server")
    with pytest.raises(LocalProtocolError) as info:
        client.send_message(A("echo"), (a, c))
    assert info.value.code == "limit"
    assert client.data_to_send() == b""
    assert set(client.session.export_ids) == {a, b}
    # Already exported pids still go; an ended process frees its slot.
    client.send_message(A("echo"), (a, b))
    client.process_exited(a, A("normal"))
    client.send_message(A("echo"), c)
    pair.pump()
    events = pair.take("server")
    assert [type(e) for e in events] == [MessageReceived, ProxyDied, ProxyCreated, MessageReceived]
    assert set(client.session.export_ids) == {b, c}


def test_whereis_reply_beyond_the_export_limit_can_still_answer_undefined():
    pair = established(server_kw={"max_exports": 1})
    server = pair.server
    first, second = server.pids.new(), server.pids.new()
    r1 = pair.client.whereis("echo")
    r2 = pair.client.whereis("echo")
    pair.pump()
    req1, req2 = pair.take("server")
    assert isinstance(req1, WhereisRequested) and isinstance(req2, WhereisRequested)
    server.reply_whereis(req1.req_id, first)
    with pytest.raises(LocalProtocolError) as info:
        server.reply_whereis(req2.req_id, second)
    assert info.value.code == "limit"
    server.reply_whereis(req2.req_id, None)
    pair.pump()
    replies = [e for e in pair.take("client") if not isinstance(e, ProxyCreated)]
    assert [(e.req_id, e.pid is None) for e in replies] == [(r1, False), (r2, True)]
