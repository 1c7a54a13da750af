"""ErlangMap payloads (keys distinct in Erlang, equal in Python) through a connection."""

from __future__ import annotations

import pytest
from protocol_testlib import A, LegacyEndpoint, Pair, make_conn, ours_pair

from pyfabric.etf import ErlangMap, encode
from pyfabric.protocol import FEATURES, FeatureNotSupported, MessageReceived


def _pair() -> Pair:
    pair = ours_pair({"features": FEATURES}, {"features": FEATURES, "allowed": {"echo"}})
    pair.take("client")
    pair.take("server")
    return pair


def test_erlang_map_travels_both_ways() -> None:
    pair = _pair()
    me = pair.client.pids.new()
    other = pair.client.pids.new()
    value = ErlangMap([((1,), A("a")), ((1.0,), A("b")), (1, (me, other)), (1.0, [other])])
    pair.client.send_message(A("echo"), (me, value))
    pair.pump()
    msg = pair.take("server")[-1]
    assert isinstance(msg, MessageReceived)
    proxy, received = msg.payload
    assert type(received) is ErlangMap
    assert received[(1,)] == A("a") and received[(1.0,)] == A("b")
    assert received[1][0] == proxy and received[1.0][0] == received[1][1]
    pair.server.send_message(proxy, (proxy, received))
    pair.pump()
    (back,) = pair.take("client")
    assert back == MessageReceived(me, (me, value))


def test_original_peer_refuses_an_erlang_map_and_stays_usable() -> None:
    original = LegacyEndpoint("server")
    client = make_conn("client", allow_legacy_auth=True)
    pair = Pair(client, original)
    client.start()
    pair.pump()
    me = client.pids.new()
    with pytest.raises(FeatureNotSupported):
        client.send_message(A("simple_server"), (me, ErlangMap([(1, 2), (1.0, 3)])))
    assert client.data_to_send() == b""
    client.send_message(A("simple_server"), (me, A("fine")))
    pair.pump()
    assert original.received[-1][2][1][1] == A("fine")
    assert encode(ErlangMap([(1, 2)])) == encode({1: 2})
