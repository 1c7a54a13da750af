"""The `global` feature in the core, client side (docs/protocol.md 17): negotiation (a pyfabric
server never offers it), the request frames, the answers, bad answers, frames of the wrong
direction. The server side is erlang_peer's; here a scripted server (:class:`GlobalServer`,
the handshake of section 3 written out) offers `global` to the client."""

from __future__ import annotations

from typing import Any

import pytest
from protocol_testlib import CLI, SRV, LegacyEndpoint, Pair, frame, make_conn, split_frames

from pyfabric.etf import Atom, Pid, decode, encode
from pyfabric.protocol import (
    Connection,
    ConnectionClosed,
    FeatureNotSupported,
    FrameDropped,
    GlobalReplied,
    HandshakeComplete,
    LocalProtocolError,
    ProxyCreated,
)
from pyfabric.protocol._handshake import server_mac

A = Atom
SECRET = b"secret"


def plain(term: Any) -> bytes:
    return encode(term, minor_version=1)


class GlobalServer:
    """An erlang_peer-like server, scripted: it offers ``features``, authenticates the
    client, then lets a test read the client's frames and write frames to it."""

    def __init__(self, client: Connection, features: tuple[str, ...] = ("whereis", "link", "error", "global")) -> None:
        self.client = client
        client.start()
        hello = split_frames(client.data_to_send())[0]
        offer = {b"version": 1, b"features": [f.encode() for f in features], b"node": SRV.name.encode(),
                 b"max_frame": 1 << 20, b"heartbeat": 0}  # fmt: skip
        challenge = plain((A("challenge"), b"\x01" * 32, offer))
        client.receive_data(frame(challenge))
        assert client.events() == []  # the core handles received bytes as its events are read
        response = split_frames(client.data_to_send())[0]
        tag, _mac, accept_bin = decode(response)
        assert tag == A("response")
        self.accept = decode(accept_bin)
        info_bin = plain({b"resumed": A("false")})
        mac = server_mac(SECRET, hello, challenge, response, info_bin)
        client.receive_data(frame(plain((A("auth"), A("success"), mac, info_bin))))
        self.established = [e for e in client.events() if isinstance(e, HandshakeComplete)]

    def received(self) -> list[Any]:
        return [decode(f) for f in split_frames(self.client.data_to_send())]

    def send(self, term: Any) -> list[Any]:
        self.client.receive_data(frame(plain(term)))
        return self.client.events()


def connected(**kw: Any) -> GlobalServer:
    server = GlobalServer(make_conn("client", **kw))
    assert server.established and "global" in server.client.features
    return server


def test_a_pyfabric_server_never_offers_global() -> None:
    client, server = make_conn("client"), make_conn("server")
    client.start()
    server.receive_data(client.data_to_send())
    server.events()
    _tag, _nonce, offer = decode(split_frames(server.data_to_send())[0])
    assert b"global" not in offer[b"features"]
    assert "global" in server.config.features  # the default set has it: the offer leaves it out


def test_a_client_accepts_global_when_offered_and_only_then() -> None:
    server = connected()
    assert b"global" in server.accept[b"features"]
    without = GlobalServer(make_conn("client"), ("whereis", "link", "error"))
    assert "global" not in without.client.features
    with pytest.raises(FeatureNotSupported):
        without.client.register_global("name", Pid(CLI, 1, 0, 1))
    with pytest.raises(FeatureNotSupported):
        without.client.unregister_global("name")


def test_a_client_that_does_not_want_global_does_not_accept_it() -> None:
    server = GlobalServer(make_conn("client", features=["whereis", "link", "error"]))
    assert b"global" not in server.accept[b"features"] and "global" not in server.client.features


def test_register_and_unregister_frames_and_answers() -> None:
    server = connected()
    me = Pid(CLI, 40, 0, 1)
    first = server.client.register_global("py_echo", me)
    frames = server.received()
    assert frames == [(A("register_global"), first, b"py_echo", 1)]  # me exported as id 1, as for a link
    # the same space as whereis (17.2)
    other = server.client.whereis("x")
    second = server.client.unregister_global(A("py_echo"))
    assert first < other < second
    assert server.received() == [(A("whereis"), other, b"x"), (A("unregister_global"), second, b"py_echo")]
    assert server.send((A("global_reply"), first, A("ok"))) == [GlobalReplied(first, None)]
    assert server.send((A("global_reply"), second, (A("error"), b"not_registered"))) == [GlobalReplied(second, "not_registered")]
    # the export is the one a message would use: the pid ships as {pr, 1} again
    third = server.client.register_global("py_echo2", me)
    assert server.received() == [(A("register_global"), third, b"py_echo2", 1)]
    assert server.send((A("global_reply"), third, (A("error"), b"in_use"))) == [GlobalReplied(third, "in_use")]


@pytest.mark.parametrize("code", ["in_use", "not_allowed", "limit", "noproc", "some_later_code"])
def test_error_codes_are_passed_on(code: str) -> None:
    server = connected()
    req = server.client.register_global("n", Pid(CLI, 41, 0, 1))
    server.received()
    assert server.send((A("global_reply"), req, (A("error"), code.encode()))) == [GlobalReplied(req, code)]


@pytest.mark.parametrize("name", ["", "x" * 256, "\u00e9" * 128])
def test_a_name_out_of_size_sends_nothing(name: str) -> None:
    server = connected()
    with pytest.raises(LocalProtocolError) as info:
        server.client.register_global(name, Pid(CLI, 42, 0, 1))
    assert info.value.code == "bad_payload"
    with pytest.raises(LocalProtocolError):
        server.client.unregister_global(name)
    assert server.received() == []


def test_a_proxy_cannot_be_registered() -> None:
    server = connected(allowed=["echo"])
    events = server.send((A("m"), A("echo"), (A("pr"), 5)))
    proxy = next(e.pid for e in events if isinstance(e, ProxyCreated))
    with pytest.raises(LocalProtocolError) as info:
        server.client.register_global("n", proxy)
    assert info.value.code == "bad_payload"
    assert server.received() == []


@pytest.mark.parametrize(
    "reply",
    [
        (A("global_reply"), 99, A("ok")),  # no such request
        (A("global_reply"), 0, A("ok")),
        (A("global_reply"), A("one"), A("ok")),
        (A("global_reply"), 1, A("yes")),  # bad Result
        (A("global_reply"), 1, (A("error"), "in_use")),
        (A("global_reply"), 1, (A("error"), b"")),
        (A("global_reply"), 1, (A("error"), b"in_use", 1)),
        (A("global_reply"), 1),  # bad arity
        (A("register_global"), 1, b"n", 1),  # a server's frame: never valid at a pyfabric peer
        (A("unregister_global"), 1, b"n"),
    ],
)
def test_bad_answers_and_wrong_direction_frames_are_unknown_frame(reply: tuple[Any, ...]) -> None:
    server = connected()
    req = server.client.register_global("n", Pid(CLI, 43, 0, 1))
    assert req == 1
    server.received()
    events = server.send(reply)
    dropped = [e for e in events if isinstance(e, FrameDropped)]
    assert [e.code for e in dropped] == ["unknown_frame"]
    assert not any(isinstance(e, GlobalReplied) for e in events)
    assert server.received()[0][:2] == (A("error"), b"unknown_frame")
    # the request is still pending: its real answer is taken
    assert server.send((A("global_reply"), 1, A("ok"))) == [GlobalReplied(1, None)]


def test_global_frames_at_a_pyfabric_server_are_unknown_frame() -> None:
    """A client of ours never sends them to a server that did not offer `global`, and a
    pyfabric server never does; if some peer sends them anyway they are dropped."""
    client, server = make_conn("client"), make_conn("server")
    client.start()
    for _ in range(3):
        server.receive_data(client.data_to_send())
        server.events()
        client.receive_data(server.data_to_send())
        client.events()
    assert "global" not in server.features
    for term in [(A("register_global"), 1, b"n", 1), (A("unregister_global"), 2, b"n"), (A("global_reply"), 3, A("ok"))]:
        server.receive_data(frame(plain(term)))
        assert [e.code for e in server.events() if isinstance(e, FrameDropped)] == ["unknown_frame"]


def test_requests_pending_when_the_connection_ends_are_void() -> None:
    server = connected()
    server.client.register_global("n", Pid(CLI, 44, 0, 1))
    server.client.connection_lost()
    assert any(isinstance(e, ConnectionClosed) for e in server.client.events())


def test_an_original_server_never_receives_the_frames() -> None:
    original = LegacyEndpoint("server")
    client = make_conn("client", allow_legacy_auth=True)
    pair = Pair(client, original)
    client.start()
    pair.pump()
    assert original.state == "established" and client.features == frozenset()
    me = client.pids.new()  # type: ignore[attr-defined]
    with pytest.raises(FeatureNotSupported):
        client.register_global("n", me)
    with pytest.raises(FeatureNotSupported):
        client.unregister_global("n")
    assert client.data_to_send() == b""
    pair.pump()
    assert not any(isinstance(t, tuple) and t[:1] in ((A("register_global"),), (A("unregister_global"),)) for t in original.received)
