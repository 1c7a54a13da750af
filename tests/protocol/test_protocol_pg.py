"""The `pg` feature in the core, client side (docs/protocol.md 18): negotiation (a pyfabric
server never offers it), the request frames, the answers with their members as pids, bad
answers, frames of the wrong direction. The server side is erlang_peer's; here the scripted
server of test_protocol_global.py offers `pg` to the client."""

from __future__ import annotations

from typing import Any

import pytest
from protocol_testlib import CLI, LegacyEndpoint, Pair, frame, make_conn, split_frames
from test_protocol_global import GlobalServer, plain

from pyfabric.etf import Atom, Pid, decode
from pyfabric.protocol import FeatureNotSupported, FrameDropped, GroupReplied, LocalProtocolError, ProxyCreated

A = Atom
FEATURES = ("whereis", "link", "error", "pg")


def connected(**kw: Any) -> GlobalServer:
    server = GlobalServer(make_conn("client", **kw), FEATURES)
    assert server.established and "pg" in server.client.features
    return server


def test_a_pyfabric_server_never_offers_pg() -> None:
    client, server = make_conn("client"), make_conn("server")
    client.start()
    server.receive_data(client.data_to_send())
    server.events()
    _tag, _nonce, offer = decode(split_frames(server.data_to_send())[0])
    assert b"pg" not in offer[b"features"]
    assert "pg" in server.config.features  # the default set has it: the offer leaves it out


def test_a_client_accepts_pg_when_offered_and_only_then() -> None:
    server = connected()
    assert b"pg" in server.accept[b"features"]
    without = GlobalServer(make_conn("client"), ("whereis", "link", "error", "global"))
    assert "pg" not in without.client.features
    me = Pid(CLI, 1, 0, 1)
    for call in (lambda: without.client.pg_join("g", me), lambda: without.client.pg_leave("g", me),
                 lambda: without.client.pg_members("g")):  # fmt: skip
        with pytest.raises(FeatureNotSupported):
            call()
    assert without.received() == []


def test_join_leave_members_frames_and_answers() -> None:
    server = connected()
    me = Pid(CLI, 40, 0, 1)
    join = server.client.pg_join("workers", me)
    assert server.received() == [(A("pg_join"), join, b"workers", 1)]  # me exported as id 1
    # the same ReqId space as whereis and global (18.2)
    other = server.client.whereis("x")
    members = server.client.pg_members(b"workers")
    leave = server.client.pg_leave(A("workers"), me)
    assert leave is not None and join < other < members < leave
    assert server.received() == [
        (A("whereis"), other, b"x"),
        (A("pg_members"), members, b"workers"),
        (A("pg_leave"), leave, b"workers", 1),
    ]
    assert server.send((A("pg_reply"), join, A("ok"))) == [GroupReplied(join, None, None)]
    events = server.send((A("pg_reply"), members, (A("ok"), [(A("pl"), 1), (A("pr"), 7)])))
    proxies = [e.pid for e in events if isinstance(e, ProxyCreated)]
    assert len(proxies) == 1
    assert [e for e in events if isinstance(e, GroupReplied)] == [GroupReplied(members, (me, proxies[0]), None)]
    assert server.send((A("pg_reply"), leave, (A("error"), b"not_member"))) == [GroupReplied(leave, None, "not_member")]


def test_an_empty_group_and_a_known_proxy() -> None:
    server = connected(allowed=["echo"])
    events = server.send((A("m"), A("echo"), (A("pr"), 5)))
    proxy = next(e.pid for e in events if isinstance(e, ProxyCreated))
    req = server.client.pg_members("g")
    server.received()
    assert server.send((A("pg_reply"), req, (A("ok"), [(A("pr"), 5)]))) == [GroupReplied(req, (proxy,), None)]
    req = server.client.pg_members("g")
    assert server.send((A("pg_reply"), req, (A("ok"), []))) == [GroupReplied(req, (), None)]


def test_leave_of_a_process_never_exported_sends_nothing() -> None:
    server = connected()
    assert server.client.pg_leave("g", Pid(CLI, 41, 0, 1)) is None
    assert server.received() == []


@pytest.mark.parametrize("code", ["not_allowed", "limit", "noproc", "not_member", "some_later_code"])
def test_error_codes_are_passed_on(code: str) -> None:
    server = connected()
    req = server.client.pg_join("g", Pid(CLI, 42, 0, 1))
    server.received()
    assert server.send((A("pg_reply"), req, (A("error"), code.encode()))) == [GroupReplied(req, None, code)]


@pytest.mark.parametrize("group", ["", "x" * 256, "\u00e9" * 128, b"", 12])
def test_a_group_out_of_size_or_type_sends_nothing(group: Any) -> None:
    server = connected()
    for call in (lambda: server.client.pg_join(group, Pid(CLI, 43, 0, 1)), lambda: server.client.pg_members(group)):
        with pytest.raises(LocalProtocolError) as info:
            call()
        assert info.value.code == "bad_payload"
    assert server.received() == []


def test_a_proxy_cannot_join() -> None:
    server = connected(allowed=["echo"])
    events = server.send((A("m"), A("echo"), (A("pr"), 5)))
    proxy = next(e.pid for e in events if isinstance(e, ProxyCreated))
    with pytest.raises(LocalProtocolError) as info:
        server.client.pg_join("g", proxy)
    assert info.value.code == "bad_payload"
    assert server.received() == []


@pytest.mark.parametrize(
    "reply",
    [
        (A("pg_reply"), 99, A("ok")),  # no such request
        (A("pg_reply"), A("one"), A("ok")),
        (A("pg_reply"), 1, A("yes")),  # bad Result
        (A("pg_reply"), 1, (A("ok"), (A("pr"), 3))),  # Members not a list
        (A("pg_reply"), 1, (A("ok"), [(A("pr"), 0)])),
        (A("pg_reply"), 1, (A("ok"), [(A("t"), (1, 2))])),
        (A("pg_reply"), 1, (A("ok"), [3])),
        (A("pg_reply"), 1, (A("error"), "limit")),
        (A("pg_reply"), 1, (A("error"), b"")),
        (A("pg_reply"), 1),  # bad arity
        (A("pg_join"), 1, b"g", 1),  # a server's frames: never valid at a pyfabric peer
        (A("pg_leave"), 1, b"g", 1),
        (A("pg_members"), 1, b"g"),
    ],
)
def test_bad_answers_and_wrong_direction_frames_are_unknown_frame(reply: tuple[Any, ...]) -> None:
    server = connected()
    req = server.client.pg_members("g")
    assert req == 1
    server.received()
    events = server.send(reply)
    assert [e.code for e in events if isinstance(e, FrameDropped)] == ["unknown_frame"]
    assert not any(isinstance(e, GroupReplied) for e in events)
    assert server.received()[0][:2] == (A("error"), b"unknown_frame")
    # the request is still pending: its real answer is taken
    assert server.send((A("pg_reply"), 1, (A("ok"), []))) == [GroupReplied(1, (), None)]


def test_pg_frames_at_a_pyfabric_server_are_unknown_frame() -> None:
    client, server = make_conn("client"), make_conn("server")
    client.start()
    for _ in range(3):
        server.receive_data(client.data_to_send())
        server.events()
        client.receive_data(server.data_to_send())
        client.events()
    assert "pg" not in server.features
    for term in [(A("pg_join"), 1, b"g", 1), (A("pg_members"), 2, b"g"), (A("pg_reply"), 3, A("ok"))]:
        server.receive_data(frame(plain(term)))
        assert [e.code for e in server.events() if isinstance(e, FrameDropped)] == ["unknown_frame"]


def test_an_original_server_never_receives_the_frames() -> None:
    original = LegacyEndpoint("server")
    client = make_conn("client", allow_legacy_auth=True)
    pair = Pair(client, original)
    client.start()
    pair.pump()
    assert original.state == "established" and client.features == frozenset()
    me = client.pids.new()  # type: ignore[attr-defined]
    with pytest.raises(FeatureNotSupported):
        client.pg_join("g", me)
    with pytest.raises(FeatureNotSupported):
        client.pg_members("g")
    assert client.data_to_send() == b""
