"""Handshakes in connected pairs: ours<->ours (extended), ours<->original (legacy
endpoint emulated byte-exact), refusal of MD5, MACs, tampering, timeouts."""

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

from pyfabric.etf import decode, encode
from pyfabric.protocol import (
    FEATURES,
    AuthenticationError,
    AuthFailed,
    ConnectionClosed,
    HandshakeComplete,
    LocalProtocolError,
)
from pyfabric.protocol._handshake import parse_ext_hello


def only(events, kind):
    found = [e for e in events if isinstance(e, kind)]
    assert len(found) == 1, events
    return found[0]


def test_extended_handshake_ours_to_ours():
    pair = ours_pair(
        {"features": FEATURES - {"funs"}, "heartbeat_interval": 5000, "max_frame": 1 << 20},
        {"features": FEATURES - {"ports"}, "heartbeat_interval": 7000, "max_frame": 1 << 21},
    )
    c = only(pair.take("client"), HandshakeComplete)
    s = only(pair.take("server"), HandshakeComplete)
    assert c.mode == s.mode == "extended" and c.version == s.version == 1
    # route: only a routing server offers it; global: only an erlang_peer server (17.1)
    assert c.features == s.features == FEATURES - {"funs", "ports", "route", "global", "pg"}
    assert c.peer_node == SRV and s.peer_node == A("cli@vm")
    assert c.peer_heartbeat == 7000 and s.peer_heartbeat == 5000
    assert c.peer_max_frame == 1 << 21 and s.peer_max_frame == 1 << 20
    assert c.session_id == s.session_id and len(c.session_id) == 16
    assert c.resumed is s.resumed is False
    assert pair.client.state == pair.server.state == "established"


def test_extended_frames_have_the_documented_shapes():
    client = make_conn("client", random_bytes=fixed_random(b"\x11" * 32))
    server = make_conn("server", random_bytes=fixed_random(b"\x22" * 32, b"\x33" * 16))
    client.start()
    hello = split_frames(client.data_to_send())[0]
    assert decode(hello) == (A("hello"), "fabric-ext:1:" + "11" * 32)
    assert hello[:4] == b"\x83h\x02d"  # plain term_to_binary/1, ATOM_EXT (minor_version 1)
    server.receive_data(frame(hello))
    assert server.events() == []
    challenge = split_frames(server.data_to_send())[0]
    tag, nonce, offer = decode(challenge)
    assert tag == A("challenge") and nonce == b"\x22" * 32
    assert offer[b"version"] == 1 and offer[b"node"] == b"srv@vm"
    # route: only with routing; global and pg: never by a pyfabric server (17.1, 18.1)
    assert set(offer[b"features"]) == {f.encode() for f in FEATURES - {"route", "global", "pg"}}
    client.receive_data(frame(challenge))
    client.events()
    response = split_frames(client.data_to_send())[0]
    tag, mac, accept_bin = decode(response)
    assert tag == A("response") and len(mac) == 32
    accept = decode(accept_bin)
    credit_keys = {b"credit_window", b"credit_bytes", b"credit_dest"}  # with `credit` (docs/protocol.md 12.1)
    assert set(accept) == {b"features", b"node", b"max_frame", b"heartbeat"} | credit_keys
    assert {k: accept[k] for k in credit_keys} == {b"credit_window": 16384, b"credit_bytes": 16 << 20, b"credit_dest": 1024}
    assert {k: offer[k] for k in credit_keys} == {b"credit_window": 16384, b"credit_bytes": 16 << 20, b"credit_dest": 1024}
    server.receive_data(frame(response))
    server.events()
    auth = split_frames(server.data_to_send())[0]
    tag, success, server_mac, info_bin = decode(auth)
    assert (tag, success) == (A("auth"), A("success"))
    assert decode(info_bin) == {b"session": b"\x33" * 16, b"resumed": A("false")}
    client.receive_data(frame(auth))
    assert isinstance(client.events()[0], HandshakeComplete)


@pytest.mark.parametrize(
    "name, version",
    [
        ("fabric-ext:1:" + "a" * 64, 1),
        ("fabric-ext:7:" + "0" * 64, 7),
        ("fabric-ext:0:" + "a" * 64, None),
        ("fabric-ext:1:" + "A" * 64, None),
        ("fabric-ext:1:" + "a" * 63, None),
        ("fabric-ext:1:" + "a" * 65, None),
        ("fabric-ext:x:" + "a" * 64, None),
        ("localhost", None),
        (b"fabric-ext:1:" + b"a" * 64, None),
        ([102, 97], None),
    ],
)
def test_hello_grammar(name, version):
    assert parse_ext_hello(name) == version


def test_newer_client_version_is_capped():
    server = make_conn("server")
    server.receive_data(frame(encode((A("hello"), "fabric-ext:9:" + "ab" * 32), minor_version=1)))
    server.events()
    _, _, offer = decode(split_frames(server.data_to_send())[0])
    assert offer[b"version"] == 1


def test_wrong_secret_extended():
    pair = ours_pair({"secret": b"nope"}, {})
    s_events = pair.take("server")
    c_events = pair.take("client")
    assert isinstance(s_events[0], AuthFailed) and "wrong secret" in s_events[0].message
    assert isinstance(c_events[0], AuthFailed)
    assert c_events[-1].code == s_events[-1].code == "auth_failed"
    assert pair.client.state == pair.server.state == "closed"


def test_server_that_cannot_prove_the_secret():
    client = make_conn("client")
    server = make_conn("server")
    client.start()
    server.receive_data(client.data_to_send())
    server.events()
    client.receive_data(server.data_to_send())
    client.events()
    server.receive_data(client.data_to_send())
    server.events()
    tag, ok, mac, info = decode(split_frames(server.data_to_send())[0])
    forged = encode((tag, ok, bytes(32), info), minor_version=1)
    client.receive_data(frame(forged))
    events = client.events()
    assert isinstance(events[0], AuthFailed)
    assert "could not prove it knows the secret" in events[0].message


def test_tampered_offer_is_detected_by_the_server():
    """A man in the middle removing features from the offer breaks the client MAC."""
    client = make_conn("client")
    server = make_conn("server")
    client.start()
    server.receive_data(client.data_to_send())
    server.events()
    tag, nonce, offer = decode(split_frames(server.data_to_send())[0])
    offer[b"features"] = [b"whereis"]
    client.receive_data(frame(encode((tag, nonce, offer), minor_version=1)))
    client.events()
    server.receive_data(client.data_to_send())
    events = server.events()
    assert isinstance(events[0], AuthFailed)
    assert split_frames(server.data_to_send()) == [VECTORS[6]]


def test_accepting_unoffered_feature_fails():
    client = make_conn("client")
    server = make_conn("server", features={"whereis"})
    client.start()
    hello_bytes = client.data_to_send()
    server.receive_data(hello_bytes)
    server.events()
    challenge_bytes = server.data_to_send()
    client.receive_data(challenge_bytes)
    client.events()
    assert client.features == {"whereis"}
    # A client that cheats: accept a feature that was not offered (with a valid MAC).
    from pyfabric.protocol._handshake import client_mac

    (hello,) = split_frames(hello_bytes)
    (challenge,) = split_frames(challenge_bytes)
    accept_bin = encode({b"features": [b"whereis", b"maps"], b"node": b"x@y", b"max_frame": 100, b"heartbeat": 0}, minor_version=1)
    mac = client_mac(b"secret", hello, challenge, accept_bin)
    server.receive_data(frame(encode((A("response"), mac, accept_bin), minor_version=1)))
    events = server.events()
    assert isinstance(events[0], AuthFailed) and "not offered" in events[0].message


# -- legacy interop ------------------------------------------------------------------


def legacy_pair_with_our_server(**server_kw):
    server_kw.setdefault("random_bytes", fixed_random(bytes.fromhex(CHALLENGE_02)))
    original = LegacyEndpoint("client")
    server = make_conn("server", **server_kw)
    pair = Pair(original, server)
    original.start()
    pair.pump()
    return pair, original, server


def test_original_client_our_server_legacy_allowed():
    pair, original, server = legacy_pair_with_our_server(allow_legacy_auth=True)
    assert original.state == "established"
    done = only(pair.take("server"), HandshakeComplete)
    assert done.mode == "legacy" and done.features == frozenset() and done.session_id is None


def test_original_client_refused_when_legacy_disabled(caplog):
    pair, original, server = legacy_pair_with_our_server()
    # It still got a challenge it understands, then {auth, failed}, then the close.
    assert original.received == [decode(VECTORS[2]), decode(VECTORS[6])]
    assert original.state == "closed"
    events = pair.take("server")
    assert isinstance(events[0], AuthFailed)
    assert "legacy client refused: MD5 authentication is disabled" in events[0].message
    assert "legacy client refused: MD5 authentication is disabled" in caplog.text
    assert server.state == "closed"


def test_original_client_wrong_secret():
    original = LegacyEndpoint("client", secret=b"WRONG")
    server = make_conn("server", allow_legacy_auth=True)
    pair = Pair(original, server)
    original.start()
    pair.pump()
    assert original.state == "closed"
    assert isinstance(pair.take("server")[0], AuthFailed)


def test_our_client_original_server_allowed():
    original = LegacyEndpoint("server")
    client = make_conn("client", allow_legacy_auth=True)
    pair = Pair(client, original)
    client.start()
    pair.pump()
    assert original.state == "established"
    done = only(pair.take("client"), HandshakeComplete)
    assert done.mode == "legacy"


def test_our_client_refuses_original_server_by_default():
    original = LegacyEndpoint("server")
    client = make_conn("client")
    pair = Pair(client, original)
    client.start()
    pair.pump()
    events = pair.take("client")
    assert isinstance(events[0], AuthFailed)
    assert isinstance(events[0].error, AuthenticationError)
    assert "original (MD5-only)" in events[0].message and "allow_legacy_auth=True" in events[0].message
    assert isinstance(events[-1], ConnectionClosed) and client.state == "closed"
    assert original.state == "await_response"  # we sent nothing more


def test_our_client_wrong_secret_with_original_server():
    original = LegacyEndpoint("server", secret=b"other")
    client = make_conn("client", allow_legacy_auth=True)
    pair = Pair(client, original)
    client.start()
    pair.pump()
    events = pair.take("client")
    assert isinstance(events[0], AuthFailed) and "refused" in events[0].message


def test_text_secret_is_utf8():
    pair = ours_pair({"secret": "sécret"}, {"secret": "sécret".encode()})
    assert pair.client.state == pair.server.state == "established"


# -- timeouts and illegal handshake frames -------------------------------------------


def test_handshake_timeout_server_waiting_for_response():
    server = make_conn("server")
    server.receive_data(frame(VECTORS[1]))
    server.events()
    server.data_to_send()
    server.handshake_timed_out()
    events = server.events()
    assert isinstance(events[0], AuthFailed) and "timed out" in events[0].message
    assert server.data_to_send() == frame(VECTORS[6])
    assert server.state == "closed"


def test_handshake_timeout_before_hello_sends_nothing():
    server = make_conn("server")
    server.handshake_timed_out()
    assert isinstance(server.events()[-1], ConnectionClosed)
    assert server.data_to_send() == b""


def test_handshake_timeout_when_established_is_illegal():
    pair = ours_pair()
    with pytest.raises(LocalProtocolError) as info:
        pair.server.handshake_timed_out()
    assert "role=server" in str(info.value) and "state=established" in str(info.value)


def test_client_gets_unexpected_frame():
    client = make_conn("client")
    client.start()
    client.receive_data(frame(VECTORS[4]))  # auth before challenge
    events = client.events()
    assert isinstance(events[0], AuthFailed) and client.state == "closed"


def test_extended_challenge_with_bad_offer():
    client = make_conn("client")
    client.start()
    client.receive_data(frame(encode((A("challenge"), b"x" * 32, {b"version": 5}), minor_version=1)))
    assert isinstance(client.events()[0], AuthFailed)
