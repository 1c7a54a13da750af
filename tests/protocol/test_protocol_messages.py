"""Messages, payload rewriting, feature gating, DEAD, links, whereis, heartbeats and
error frames between connected cores (ours<->ours and ours<->original)."""

from __future__ import annotations

import pytest
from protocol_testlib import (
    CHALLENGE_02,
    SRV,
    VECTORS,
    A,
    LegacyEndpoint,
    Pair,
    fixed_random,
    frame,
    make_conn,
    ours_pair,
    split_frames,
)

from pyfabric.etf import BitString, ExportFun, ImproperList, Port, Reference, decode, encode
from pyfabric.protocol import (
    FEATURES,
    ConnectionClosed,
    ExitSignalReceived,
    FeatureNotSupported,
    FrameDropped,
    HeartbeatAcked,
    HeartbeatReceived,
    LinkRequested,
    LocalProtocolError,
    MessageReceived,
    PeerError,
    ProxyCreated,
    ProxyDied,
    UnlinkRequested,
    WhereisReplied,
    WhereisRequested,
)

ALLOWED = {"echo", "svc"}


def pair_with(features=FEATURES, **kw):
    pair = ours_pair({"features": features, **kw}, {"features": features, "allowed": ALLOWED, **kw})
    pair.take("client")
    pair.take("server")
    return pair


def send_and_receive(pair, payload, dest=A("echo")):
    me = pair.client.pids.new()
    pair.client.send_message(dest, (me, payload))
    pair.pump()
    events = pair.take("server")
    msg = events[-1]
    assert isinstance(msg, MessageReceived), events
    return me, msg, events


FUN = decode(VECTORS[32], safe=False)[2][1][1][2]  # a real erl_eval closure from the original


RICH = [
    0,
    -1,
    1 << 200,
    2.5,
    A("ok"),
    b"bin",
    "text",
    "h\u00e9llo w\u00f6rld \u2603",
    [],
    [1, [2, [3, ()]]],
    (),
    ((), ((),)),
    ImproperList((1, (2, 3)), A("tail")),
    Reference(SRV, 5, (1, 2, 3)),
    [True, False, None],
]
EXTENDED_ONLY = [
    {A("k"): (1, 2), b"b": [A("x")], (1, 2): {3: 4}},
    BitString(b"\xf0", 4),
    Port(SRV, 77, 3),
    ExportFun(A("lists"), A("map"), 2),
    FUN,
]


@pytest.mark.parametrize("value", RICH + EXTENDED_ONLY, ids=repr)
def test_round_trip_extended(value):
    pair = pair_with()
    me, msg, events = send_and_receive(pair, value)
    proxy = msg.payload[0]
    assert isinstance(events[0], ProxyCreated) and events[0].pid == proxy
    expected = value
    if type(value) is str and not value.isascii():
        expected = [ord(ch) for ch in value]  # not Latin-1: an Erlang list of code points
    if value is RICH[-1]:
        expected = [A("true"), A("false"), A("undefined")]
    assert msg.payload[1] == expected
    # Echo back: our proxy becomes {pl, Id} and arrives as the original pid.
    pair.server.send_message(proxy, (proxy, msg.payload[1]))
    pair.pump()
    (back,) = pair.take("client")
    assert back == MessageReceived(me, (me, expected))


@pytest.mark.parametrize("value", EXTENDED_ONLY, ids=repr)
def test_legacy_peer_refuses_extended_values_and_stays_usable(value):
    original = LegacyEndpoint("server")
    client = make_conn("client", allow_legacy_auth=True)
    pair = Pair(client, original)
    client.start()
    pair.pump()
    me = client.pids.new()
    with pytest.raises(LocalProtocolError) as info:
        client.send_message(A("simple_server"), (me, [1, value]))
    assert info.value.code == "bad_payload"
    assert isinstance(info.value, FeatureNotSupported)
    assert client.data_to_send() == b""
    assert client.session.exports == {}  # the export of `me` was rolled back
    client.send_message(A("simple_server"), (me, A("fine")))
    pair.pump()
    assert original.received[-1] == (A("m"), A("simple_server"), (A("t"), ((A("pr"), 1), A("fine"))))


@pytest.mark.parametrize("feature, value", list(zip(["maps", "bitstrings", "ports", "funs", "funs"], EXTENDED_ONLY)))
def test_unagreed_feature_value_is_refused_locally(feature, value):
    pair = pair_with(FEATURES - {feature})
    with pytest.raises(FeatureNotSupported) as info:
        pair.client.send_message(A("echo"), value)
    assert info.value.feature == feature
    assert pair.client.data_to_send() == b""


def test_unagreed_feature_value_from_the_wire_is_bad_payload():
    pair = pair_with(FEATURES - {"maps"})
    raw = encode((A("m"), A("echo"), {1: 2}), minor_version=1)
    pair.server.receive_data(frame(raw))
    (dropped,) = pair.server.events()
    assert dropped.code == "bad_payload"
    data = pair.server.data_to_send()
    code, message = decode(split_frames(data)[0])[1:]
    assert code == b"bad_payload"
    pair.client.receive_data(data)
    (err,) = pair.client.events()
    assert isinstance(err, PeerError) and err.code == "bad_payload"
    assert pair.client.data_to_send() == b""  # never answer an error frame


def test_unencodable_python_value():
    pair = pair_with()
    with pytest.raises(LocalProtocolError) as info:
        pair.client.send_message(A("echo"), {1, 2})
    assert info.value.code == "bad_payload"


def test_send_to_non_proxy_pid_is_local_error():
    pair = pair_with()
    with pytest.raises(LocalProtocolError) as info:
        pair.client.send_message(pair.client.pids.new(), 1)
    assert info.value.code == "unknown_id"


def test_name_node_dest_and_policy_extended():
    pair = pair_with()
    pair.client.send_message((A("echo"), A("elsewhere@host")), 1)
    pair.client.send_message(A("rex"), 2)
    pair.client.send_message((A("fabric_admin"), SRV), 3)
    pair.client.send_message(A("pyfabric_x"), 4)
    pair.client.send_message(A("unknown_name"), 5)
    pair.pump()
    events = pair.take("server")
    assert events[0] == MessageReceived(A("echo"), 1, A("elsewhere@host"))
    assert [e.code for e in events[1:]] == ["not_allowed"] * 4
    errors = pair.take("client")
    assert [e.code for e in errors] == ["not_allowed"] * 4


def test_dead_both_ways_extended_keeps_noproc():
    pair = pair_with()
    me, msg, _ = send_and_receive(pair, 1)
    proxy = msg.payload[0]
    pair.client.process_exited(me, A("noproc"))
    pair.pump()
    assert pair.take("server") == [ProxyDied(proxy, 1, A("noproc"))]
    with pytest.raises(LocalProtocolError):
        pair.server.send_message(proxy, 1)  # a dead proxy is no longer in the tables
    # A server-side export dies with a structured reason: delivered raw.
    proxy_me = pair.client.pids.new()
    pair.client.send_message(A("echo"), proxy_me)
    pair.pump()
    (created, _) = pair.take("server")
    local = pair.server.pids.new()
    pair.server.send_message(created.pid, local)
    pair.server.process_exited(local, (A("badarith"), [(A("m"), A("f"), 1, [])]))
    pair.pump()
    created, _, died = pair.take("client")
    assert died == ProxyDied(created.pid, 1, (A("badarith"), [(A("m"), A("f"), 1, [])]))


def test_dead_for_pid_shipped_dead_extended():
    pair = pair_with()
    me, msg, _ = send_and_receive(pair, 1)
    ghost = pair.server.pids.dead_pid(0)
    pair.server.send_message(msg.payload[0], ghost)
    pair.pump()
    created, delivered, died = pair.take("client")
    assert delivered.payload == created.pid
    assert died == ProxyDied(created.pid, 1, A("noproc"))


def test_link_unlink_exit2():
    pair = pair_with()
    me, msg, _ = send_and_receive(pair, 1)
    server_proxy_for_me = msg.payload[0]
    local = pair.server.pids.new()
    pair.server.send_message(server_proxy_for_me, local)
    pair.pump()
    created, _ = pair.take("client")
    client_proxy = created.pid
    pair.client.link(me, client_proxy)
    pair.client.unlink(me, client_proxy)
    pair.client.exit_signal(me, client_proxy, (A("shutdown"), me))
    pair.pump()
    events = pair.take("server")
    assert events == [
        LinkRequested(server_proxy_for_me, local),
        UnlinkRequested(server_proxy_for_me, local),
        ExitSignalReceived(server_proxy_for_me, local, (A("shutdown"), server_proxy_for_me)),
    ]
    # B ended: link is ignored (its DEAD is on the way).
    pair.server.process_exited(local, A("normal"))
    pair.client.link(me, client_proxy)
    pair.pump()
    assert pair.take("server") == []
    assert pair.take("client") == [ProxyDied(client_proxy, 1, A("normal"))]


def test_link_needs_feature():
    pair = pair_with(FEATURES - {"link"})
    me, msg, _ = send_and_receive(pair, 1)
    with pytest.raises(FeatureNotSupported):
        pair.server.link(pair.server.pids.new(), msg.payload[0])


def test_whereis_round_trip_and_policy():
    pair = pair_with()
    svc = pair.server.pids.new()
    r1 = pair.client.whereis("svc")
    r2 = pair.client.whereis(A("rex"))
    r3 = pair.client.whereis("not_allowed_name")
    pair.pump()
    (req,) = pair.take("server")
    assert req == WhereisRequested(r1, A("svc"))
    pair.server.reply_whereis(r1, svc)
    pair.pump()
    events = pair.take("client")
    replies = {e.req_id: e for e in events if isinstance(e, WhereisReplied)}
    assert replies[r2].pid is None and replies[r3].pid is None
    created = [e for e in events if isinstance(e, ProxyCreated)][0]
    assert replies[r1].pid == created.pid
    # The proxy addresses the exported process.
    pair.client.send_message(created.pid, A("hi"))
    pair.pump()
    assert pair.take("server") == [MessageReceived(svc, A("hi"))]
    with pytest.raises(LocalProtocolError):
        pair.server.reply_whereis(r1, svc)  # already answered


def test_whereis_unregistered_reply_none():
    pair = pair_with()
    r = pair.client.whereis("echo")
    pair.pump()
    pair.take("server")
    pair.server.reply_whereis(r, None)
    pair.pump()
    assert pair.take("client") == [WhereisReplied(r, None)]


def test_whereis_not_supported_by_legacy_peer():
    original = LegacyEndpoint("server")
    client = make_conn("client", allow_legacy_auth=True)
    pair = Pair(client, original)
    client.start()
    pair.pump()
    with pytest.raises(FeatureNotSupported) as info:
        client.whereis("x")
    assert "not supported by this peer" in str(info.value)
    with pytest.raises(FeatureNotSupported):
        client.heartbeat()


def test_heartbeat():
    pair = pair_with()
    n = pair.client.heartbeat()
    pair.pump()
    assert pair.take("server") == [HeartbeatReceived(n)]
    assert pair.take("client") == [HeartbeatAcked(n)]


def test_extended_frame_not_agreed_is_unknown_frame():
    pair = pair_with(FEATURES - {"heartbeat"})
    pair.server.receive_data(frame(encode((A("heartbeat"), 1), minor_version=1)))
    (dropped,) = pair.server.events()
    assert dropped.code == "unknown_frame"


def test_error_frame_only_with_error_feature():
    pair = pair_with(FEATURES - {"error"})
    pair.server.receive_data(frame(VECTORS[44]))
    (dropped,) = pair.server.events()
    assert dropped.code == "unknown_frame"
    assert pair.server.data_to_send() == b""


def test_error_budget_closes_with_too_many_errors():
    pair = pair_with()
    s = pair.server
    good = frame(encode((A("m"), A("echo"), 1), minor_version=1))
    s.receive_data(frame(VECTORS[44]) * 20 + good * 5)
    events = s.events()
    assert sum(isinstance(e, FrameDropped) for e in events) == 20
    assert s.state == "established"
    s.receive_data(frame(VECTORS[44]))
    events = s.events()
    assert isinstance(events[-1], ConnectionClosed) and events[-1].code == "too_many_errors"
    frames = [decode(f) for f in split_frames(s.data_to_send())]
    assert frames[-1][1] == b"too_many_errors"


def test_error_budget_window_slides():
    pair = pair_with(max_errors=2, error_window=10)
    s = pair.server
    good = frame(encode((A("m"), A("echo"), 1), minor_version=1))
    for _ in range(5):
        s.receive_data(frame(VECTORS[44]) * 2 + good * 10)
        s.events()
    assert s.state == "established"
    s.receive_data(frame(VECTORS[44]) * 3)
    assert isinstance(s.events()[-1], ConnectionClosed)


def test_connection_lost_without_session_kills_proxies():
    pair = pair_with(FEATURES - {"session"})
    me, msg, _ = send_and_receive(pair, 1)
    pair.server.connection_lost()
    events = pair.server.events()
    assert events == [ProxyDied(msg.payload[0], 1, A("noconnection")), ConnectionClosed(None, "connection lost", None)]
    pair.server.connection_lost()  # idempotent
    assert pair.server.events() == []


def test_legacy_original_sends_to_our_server_end_to_end():
    original = LegacyEndpoint("client")
    server = make_conn("server", allow_legacy_auth=True, allowed={"echo"}, random_bytes=fixed_random(bytes.fromhex(CHALLENGE_02)))
    pair = Pair(original, server)
    original.start()
    pair.pump()
    pair.take("server")
    original.send_term((A("m"), A("echo"), (A("t"), ((A("pr"), 1), (A("t"), (A("hi"), [1, (A("t"), ())]))))), compressed=True)
    pair.pump()
    created, msg = pair.take("server")
    assert msg.payload == (created.pid, (A("hi"), [1, ()]))
    server.send_message(created.pid, {1: 2} if False else (A("ok"),))
    pair.pump()
    assert original.received[-1] == (A("m"), 1, (A("t"), (A("ok"),)))
    # A map sent by a (buggy) peer is dropped, no error frame to an original peer.
    original.send_term((A("m"), A("echo"), {A("a"): 1}))
    pair.pump()
    (dropped,) = pair.take("server")
    assert dropped.code == "bad_payload"
    assert server.data_to_send() == b""


def test_identity_survives_death_extended():
    """docs/protocol.md 4.3: ended exports and dead proxies keep their identity both ways."""
    pair = pair_with()
    me, msg, _ = send_and_receive(pair, 1)
    proxy = msg.payload[0]
    pair.client.process_exited(me, A("gone"))
    pair.pump()
    assert pair.take("server") == [ProxyDied(proxy, 1, A("gone"))]
    # Our ended process shipped again keeps its id: the peer sees its same (dead) proxy,
    # and the DEAD sent again changes nothing there.
    pair.client.send_message(A("echo"), me)
    pair.pump()
    assert pair.take("server") == [MessageReceived(A("echo"), proxy)]
    # The peer ships the dead proxy back (to a proxy of ours it holds): we get our own
    # pid, not a substitute, and no new id was issued for it.
    target = pair.client.pids.new()
    pair.client.send_message(A("echo"), target)
    pair.pump()
    (created, _) = pair.take("server")
    pair.server.send_message(created.pid, proxy)
    pair.pump()
    assert pair.take("client") == [MessageReceived(target, me)]
    assert pair.client.session.next_export_id == 3


def test_ended_export_shipped_again_to_a_legacy_peer_gets_a_new_id():
    """An original peer does not remember dead proxies: it gets a new id and a DEAD noproc."""
    ours = make_conn("server", allowed=ALLOWED, allow_legacy_auth=True)
    legacy = LegacyEndpoint("client")
    pair = Pair(legacy, ours)
    legacy.start()
    pair.pump()
    pair.take("server")
    pair.take("client")
    mine = ours.pids.new()
    legacy.send_term((A("m"), A("echo"), (A("t"), ((A("pr"), 1), A("hi")))))
    pair.pump()
    (created, _msg) = pair.take("server")
    ours.send_message(created.pid, mine)
    ours.process_exited(mine, A("normal"))
    ours.pids.dead.add(mine)
    ours.send_message(created.pid, mine)
    frames = [decode(f) for f in split_frames(ours.data_to_send())]
    assert [f[0] for f in frames] == [A("m"), A("DEAD"), A("m"), A("DEAD")]
    assert frames[0][2] == (A("pr"), 1) and frames[1] == (A("DEAD"), (A("pr"), 1), A("normal"))
    assert frames[2][2] == (A("pr"), 2) and frames[3] == (A("DEAD"), (A("pr"), 2), A("noproc"))
