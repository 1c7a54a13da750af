"""ConnectionConfig: one frozen, validated record of a connection's options (issue 10)."""

from __future__ import annotations

import dataclasses

import pytest
from protocol_testlib import A, PidFactory, fixed_random, make_conn, split_frames

from pyfabric.protocol import FEATURES, Connection, ConnectionConfig, NamePolicy, RemoteProtocolError
from pyfabric.protocol._established import FRAMES, classify


def test_build_normalises_and_is_frozen():
    config = ConnectionConfig.build("secret", allowed={"echo"}, max_frame=1000)
    assert config.secret == b"secret" and config.features == FEATURES and config.max_frame == 1000
    assert isinstance(config.allowed, NamePolicy) and config.allowed("echo") and not config.allowed("other")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_frame = 5  # type: ignore[misc]
    assert config.replace(max_frame=5).max_frame == 5 and config.max_frame == 1000


@pytest.mark.parametrize(
    "options, error, text",
    [
        ({"max_frmae": 1}, TypeError, "max_frmae"),
        ({"features": {"route_undelivered"}}, ValueError, "route_undelivered"),
        ({"max_frame": 0}, ValueError, "max_frame"),
        ({"max_exports": 0}, ValueError, "max_exports"),
        ({"heartbeat_interval": -1}, ValueError, "heartbeat_interval"),
    ],
)
def test_build_rejects_bad_options_by_name(options, error, text):
    with pytest.raises(error, match=text):
        ConnectionConfig.build("secret", **options)
    with pytest.raises(ValueError, match="secret"):
        ConnectionConfig.build("")


def test_config_and_keywords_build_the_same_connection():
    def handshake(**kw):
        pids = PidFactory(A("cli@vm"))
        conn = Connection(
            "client", node_name="cli@vm", new_proxy_pid=pids.proxy, random_bytes=fixed_random(b"\x01" * 32), **kw
        )
        conn.start()
        return split_frames(conn.data_to_send())

    by_keywords = handshake(secret=b"s", features={"whereis"}, max_frame=4096)
    by_config = handshake(config=ConnectionConfig.build(b"s", features={"whereis"}, max_frame=4096))
    assert by_keywords == by_config
    with pytest.raises(TypeError):
        handshake(secret=b"s", config=ConnectionConfig.build(b"s"))


def test_one_table_describes_every_established_frame():
    # Legacy frames need no feature; every extended one names a feature of version 1.
    assert {tag.name for tag, spec in FRAMES.items() if spec.feature is None} == {"m", "DEAD", "r"}
    assert {spec.feature for spec in FRAMES.values()} - {None} <= FEATURES
    for tag, spec in FRAMES.items():
        assert spec.tag == tag and callable(spec.handler)
        term = (tag,) + (0,) * (spec.arity - 1)
        assert classify(term, FEATURES) is spec
        with pytest.raises(RemoteProtocolError, match="unknown|elements"):
            classify(term + (0,), FEATURES)
        if spec.feature is not None:
            with pytest.raises(RemoteProtocolError, match="not agreed"):
                classify(term, frozenset())


def test_received_frame_of_a_feature_not_agreed_is_dropped():
    from protocol_testlib import ours_pair

    from pyfabric.etf import encode
    from pyfabric.protocol import FrameDropped

    pair = ours_pair(server_kw={"features": {"whereis"}})
    pair.take("server")
    pair.server.receive_data(len(b := encode((A("heartbeat"), 1), minor_version=1)).to_bytes(4, "big") + b)
    (event,) = pair.server.events()
    assert isinstance(event, FrameDropped) and "'heartbeat' was not agreed" in event.detail


def test_connection_exposes_its_config():
    conn = make_conn("server", max_proxies=7)
    assert conn.config.max_proxies == 7 == conn.max_proxies
