"""The `link_exit` feature (docs/protocol.md 5.2) in the core: offered by default, the frame
both ways, received only when agreed, and never sent to a peer that did not agree (exit2
instead)."""

from __future__ import annotations

from protocol_testlib import A, ours_pair, split_frames

from pyfabric.etf import decode, encode
from pyfabric.protocol import (
    FEATURES,
    ExitSignalReceived,
    FrameDropped,
    LinkExitReceived,
    MessageReceived,
    ProxyCreated,
)

ALLOWED = {"echo"}


def linked_pair(client_features=FEATURES, server_features=FEATURES):
    """A pair where the client holds a proxy for a server process ``local`` and the server
    a proxy for the client's ``me``."""
    pair = ours_pair({"features": client_features}, {"features": server_features, "allowed": ALLOWED})
    pair.take("client")
    pair.take("server")
    me = pair.client.pids.new()
    pair.client.send_message(A("echo"), me)
    pair.pump()
    msg = [e for e in pair.take("server") if isinstance(e, MessageReceived)][-1]
    local = pair.server.pids.new()
    pair.server.send_message(msg.payload, local)
    pair.pump()
    created = [e for e in pair.take("client") if isinstance(e, ProxyCreated)][-1]
    return pair, me, created.pid, msg.payload, local


def test_link_exit_is_offered_and_agreed_by_default() -> None:
    assert "link_exit" in FEATURES
    pair, *_ = linked_pair()
    assert "link_exit" in pair.client.features
    assert "link_exit" in pair.server.features


def test_link_exit_frame_both_ways() -> None:
    pair, me, client_proxy, server_proxy_for_me, local = linked_pair()
    pair.client.link_exit(me, client_proxy, A("kill"))
    data = pair.client.data_to_send()
    assert [decode(f)[0] for f in split_frames(data)] == [A("link_exit")]
    pair.server.receive_data(data)
    assert pair.server.events() == [LinkExitReceived(server_proxy_for_me, local, A("kill"))]
    # the reason is rewritten like a payload: a pid in it arrives as the receiver's proxy
    pair.server.link_exit(local, server_proxy_for_me, (A("why"), local))
    pair.pump()
    (ev,) = pair.take("client")
    assert ev == LinkExitReceived(client_proxy, me, (A("why"), client_proxy))


def test_link_exit_to_a_peer_without_the_feature_goes_as_exit2() -> None:
    pair, me, client_proxy, server_proxy_for_me, local = linked_pair(server_features=FEATURES - {"link_exit"})
    assert "link_exit" not in pair.client.features
    pair.client.link_exit(me, client_proxy, A("kill"))
    data = pair.client.data_to_send()
    assert [decode(f)[0] for f in split_frames(data)] == [A("exit2")]
    pair.server.receive_data(data)
    assert pair.server.events() == [ExitSignalReceived(server_proxy_for_me, local, A("kill"))]


def test_link_exit_received_without_agreement_is_dropped() -> None:
    pair, me, client_proxy, _server_proxy, _local = linked_pair(client_features=FEATURES - {"link_exit"})
    # A peer that breaks the rule: the frame is unknown_frame for a receiver that did not agree.
    frame = encode((A("link_exit"), 1, 1, A("kill")))
    pair.client.receive_data(len(frame).to_bytes(4, "big") + frame)
    (ev,) = pair.client.events()
    assert isinstance(ev, FrameDropped) and ev.code == "unknown_frame"


def test_link_exit_to_an_ended_process_is_ignored() -> None:
    pair, me, client_proxy, _server_proxy, local = linked_pair()
    pair.server.process_exited(local, A("normal"))  # its DEAD crosses the link_exit
    pair.client.link_exit(me, client_proxy, A("kill"))
    pair.pump()
    assert pair.take("server") == []
