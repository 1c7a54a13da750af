"""The `route` feature in the core: negotiation, the node name check, the frames
(docs/protocol.md 16). The frames one connection exchanges are also in
conformance/cases/route.cases; routing itself is tests/transport/test_transport_route.py."""

from __future__ import annotations

from typing import Any

import pytest
from protocol_testlib import CLI, SRV, Pair, make_conn

from pyfabric.etf import Atom, decode
from pyfabric.protocol import (
    AuthFailed,
    ConnectionClosed,
    FeatureNotSupported,
    HandshakeComplete,
    LocalProtocolError,
    NodeNameInUse,
    RouteHooks,
    Session,
)
from pyfabric.protocol._handshake import server_mac

A = Atom


def hooks(*, heartbeat: int = 1000, claim: Any = None, lookup: Any = None) -> RouteHooks:
    return RouteHooks(
        heartbeat,
        claim or (lambda node, resumed: True),
        lookup or (lambda from_node, node: "unknown"),
    )


def routed_pair(client_kw: dict | None = None, route: RouteHooks | None = None) -> Pair:
    pair = Pair(make_conn("client", **(client_kw or {})), make_conn("server", route=route or hooks()))
    pair.client.start()
    pair.pump()
    return pair


def only(events: list[Any], kind: type) -> Any:
    (found,) = [e for e in events if isinstance(e, kind)]
    return found


def test_route_is_offered_only_by_a_routing_server() -> None:
    plain = Pair(make_conn("client"), make_conn("server"))
    plain.client.start()
    plain.pump()
    assert "route" not in plain.client.features
    pair = routed_pair()
    assert "route" in pair.client.features and "route" in pair.server.features


@pytest.mark.parametrize("ours, announced", [(0, 1000), (15000, 1000), (400, 400)])
def test_a_routing_client_heartbeats_at_most_every_route_heartbeat(ours: int, announced: int) -> None:
    pair = routed_pair({"heartbeat_interval": ours})
    assert only(pair.take("client"), HandshakeComplete).heartbeat == announced
    assert pair.server.peer_heartbeat == announced


def test_route_needs_heartbeat() -> None:
    features = ["whereis", "link", "error", "session", "route"]
    pair = routed_pair({"features": features})
    assert "route" not in pair.client.features and "heartbeat" not in pair.client.features


@pytest.mark.parametrize("name", ["nohost", "@host", "name@", "\u00e9" * 130 + "@h"])
def test_a_route_accept_with_a_node_name_not_name_at_host_fails_the_handshake(name: str) -> None:
    """16.1 (as erlang_peer): a routing client's node is name@host, at most 255 bytes; any
    other name fails the handshake with auth_failed at the server and its client."""
    client = make_conn("client", node=A(name))
    pair = Pair(client, make_conn("server", route=hooks()))
    pair.client.start()
    pair.pump()
    server_failure = only(pair.take("server"), AuthFailed)
    assert "name@host" in str(server_failure.error)
    assert isinstance(only(pair.take("client"), AuthFailed), AuthFailed)
    # Without route (a server that does not route) the node name is not checked.
    plain = Pair(make_conn("client", node=A("nohost")), make_conn("server"))
    plain.client.start()
    plain.pump()
    assert plain.server.state == "established"


def test_a_refused_node_name_is_a_verifiable_refusal() -> None:
    claims: list[tuple[Atom, Session | None]] = []

    def claim(node: Atom, resumed: Session | None) -> bool:
        claims.append((node, resumed))
        return False

    client = make_conn("client")
    server = make_conn("server", route=hooks(claim=claim))
    client.start()
    hello = client.data_to_send()
    server.receive_data(hello)
    server.events()
    challenge = server.data_to_send()
    client.receive_data(challenge)
    client.events()
    response = client.data_to_send()
    server.receive_data(response)
    server_events = server.events()
    auth = server.data_to_send()
    assert claims == [(CLI, None)]
    error = only(server_events, AuthFailed).error
    assert isinstance(error, NodeNameInUse) and error.code == "node_in_use"
    assert only(server_events, ConnectionClosed).code == "node_in_use"
    assert server.state == "closed"
    tag, result, mac, info_bin = decode(auth[4:])
    assert (tag, result) == (A("auth"), A("success"))
    assert decode(info_bin) == {b"resumed": A("false"), b"refused": b"node_in_use"}
    assert mac == server_mac(b"secret", hello[4:], challenge[4:], response[4:], info_bin)
    client.receive_data(auth)
    client_events = client.events()
    error = only(client_events, AuthFailed).error
    assert isinstance(error, NodeNameInUse) and CLI.name in str(error)
    assert client.state == "closed"


def test_a_forged_refusal_fails_as_a_bad_server_mac() -> None:
    client = make_conn("client")
    server = make_conn("server", route=hooks(claim=lambda node, resumed: False))
    client.start()
    server.receive_data(client.data_to_send())
    server.events()
    client.receive_data(server.data_to_send())
    client.events()
    server.receive_data(client.data_to_send())
    server.events()
    auth = bytearray(server.data_to_send())
    auth[-5] ^= 1  # inside the Mac
    client.receive_data(bytes(auth))
    error = only(client.events(), AuthFailed).error
    assert not isinstance(error, NodeNameInUse)


def test_the_server_resolves_name_node_destinations_through_its_hooks() -> None:
    asked: list[tuple[Any, Any]] = []

    def lookup(from_node: Atom | None, node: Atom) -> str:
        asked.append((from_node, node))
        return "route"

    pair = routed_pair(route=hooks(lookup=lookup))
    pair.take("server")
    pair.client.send_message((A("echo"), A("c2@host")), "hi")
    pair.pump()
    (routed,) = pair.take("server")
    assert (routed.name, routed.node, routed.payload) == (A("echo"), A("c2@host"), "hi")
    assert asked == [(CLI, A("c2@host"))]


def test_route_commands_need_the_feature_and_a_node_name() -> None:
    plain = Pair(make_conn("client"), make_conn("server"))
    plain.client.start()
    plain.pump()
    with pytest.raises(FeatureNotSupported):
        plain.client.request_nodes()
    with pytest.raises(FeatureNotSupported):
        plain.client.whereis_node("echo", "c2@host")
    pair = routed_pair()
    with pytest.raises(LocalProtocolError, match="name@host"):
        pair.client.whereis_node("echo", "no_host")
    with pytest.raises(LocalProtocolError, match="no pending nodes request"):
        pair.server.reply_nodes(5, [])
    assert pair.server.node_name == SRV
