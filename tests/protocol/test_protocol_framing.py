"""{packet,4} framing: whole, byte by byte, trailing data; frame size limits both ways;
and the state table."""

from __future__ import annotations

import random
import struct

import pytest
from protocol_testlib import CHALLENGE_02, VECTORS, A, fixed_random, frame, make_conn, ours_pair, split_frames

from pyfabric.etf import decode, encode
from pyfabric.protocol import (
    FEATURES,
    AuthFailed,
    ConnectionClosed,
    FrameDropped,
    LocalProtocolError,
    MessageReceived,
)
from pyfabric.protocol._state import TRANSITIONS

CONVERSATION = [1, 3, 7, 9, 10, 12, 14, 16, 18, 27, 28, 29, 31, 32, 34, 36, 37, 39, 44, 45, 46, 47, 48, 49, 50, 51]


def server(**kw):
    return make_conn(
        "server", allowed={"simple_server"}, allow_legacy_auth=True, random_bytes=fixed_random(bytes.fromhex(CHALLENGE_02)), **kw
    )


def normalise(events):
    # Proxy pids differ between runs only by the factory; compare by type and code.
    return [(type(e).__name__, getattr(e, "code", None)) for e in events]


def feed(conn, stream, chunk):
    events = []
    for i in range(0, len(stream), chunk):
        conn.receive_data(stream[i : i + chunk])
        events.extend(conn.events())
    return events


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1000, 1 << 30])
def test_stream_in_any_chunking_gives_the_same_events(chunk):
    stream = b"".join(frame(VECTORS[n]) for n in CONVERSATION)
    reference = server()
    expected = feed(reference, stream, 1 << 30)
    conn = server()
    got = feed(conn, stream, chunk)
    assert normalise(got) == normalise(expected)
    assert len([e for e in got if isinstance(e, MessageReceived)]) == 8


def test_trailing_partial_frame_waits():
    conn = server()
    stream = frame(VECTORS[1]) + frame(VECTORS[3]) + frame(VECTORS[9])[:10]
    conn.receive_data(stream)
    assert [type(e).__name__ for e in conn.events()] == ["HandshakeComplete"]
    conn.receive_data(frame(VECTORS[9])[10:])
    assert [type(e).__name__ for e in conn.events()] == ["MessageReceived"]


def test_bytes_after_the_term_inside_a_frame_is_bad_term():
    conn = server()
    conn.receive_data(frame(VECTORS[1]) + frame(VECTORS[3]))
    conn.events()
    conn.receive_data(frame(VECTORS[9] + b"junk"))  # zero-copy path (bytes)
    assert conn.events()[0].code == "bad_term"
    conn.receive_data(frame(VECTORS[9] + b"junk")[:5])
    conn.receive_data(bytearray(frame(VECTORS[9] + b"junk")[5:]))  # buffered path
    assert conn.events()[0].code == "bad_term"
    conn.receive_data(memoryview(frame(VECTORS[9])))
    assert isinstance(conn.events()[0], MessageReceived)


def test_empty_frame_is_bad_term():
    conn = server()
    conn.receive_data(frame(VECTORS[1]) + frame(VECTORS[3]) + frame(b""))
    assert conn.events()[-1].code == "bad_term"


def test_oversize_header_before_auth_closes_from_the_header_alone():
    conn = server()
    conn.receive_data(struct.pack(">I", 16 * 1024 + 1))
    events = conn.events()
    assert isinstance(events[0], AuthFailed)
    assert isinstance(events[-1], ConnectionClosed) and events[-1].code == "frame_too_large"
    conn.receive_data(b"x" * 100)  # ignored after the close
    assert conn.events() == []


def test_handshake_frame_at_the_limit_is_read():
    conn = make_conn("server", max_handshake_frame=len(VECTORS[1]))
    conn.receive_data(frame(VECTORS[1]))
    assert conn.events() == [] and conn.state == "await_response"


def test_oversize_header_after_auth_legacy_closes_silently():
    conn = server(max_frame=1000)
    conn.receive_data(frame(VECTORS[1]) + frame(VECTORS[3]))
    conn.events()
    conn.data_to_send()
    conn.receive_data(struct.pack(">I", 1001))
    events = conn.events()
    assert events[-1].code == "frame_too_large"
    assert conn.data_to_send() == b""


def test_oversize_header_after_auth_extended_error_frame_then_close():
    pair = ours_pair(server_kw={"max_frame": 1000})
    pair.take("server")
    pair.server.receive_data(struct.pack(">I", 1001))
    events = pair.server.events()
    assert events[-1].code == "frame_too_large"
    (err,) = split_frames(pair.server.data_to_send())
    assert decode(err)[:2] == (A("error"), b"frame_too_large")


def test_sender_refuses_frame_over_the_peer_limit_and_stays_usable():
    pair = ours_pair(server_kw={"max_frame": 1000, "allowed": {"echo"}})
    pair.take("client")
    me = pair.client.pids.new()
    with pytest.raises(LocalProtocolError) as info:
        pair.client.send_message(A("echo"), (me, random.Random(1).randbytes(2000)))
    assert info.value.code == "frame_too_large"
    assert pair.client.data_to_send() == b"" and pair.client.session.exports == {}
    pair.client.send_message(A("echo"), (me, b"small"))
    pair.pump()
    assert isinstance(pair.take("server")[-1], MessageReceived)
    assert pair.client.session.exports == {1: me}


def test_legacy_peer_limit_is_our_default():
    conn = make_conn("client", allow_legacy_auth=True)
    conn.start()
    conn.receive_data(frame(VECTORS[2]) + frame(VECTORS[4]))
    done = conn.events()[0]
    assert done.peer_max_frame == 64 * 1024 * 1024


def test_receive_buffer_compacts():
    conn = server()
    conn.receive_data(frame(VECTORS[1]) + frame(VECTORS[3]))
    conn.events()
    payload = frame(VECTORS[9])
    big = payload * 5000
    for i in range(0, len(big), 4093):  # misaligned chunks force the bytearray path
        conn.receive_data(big[i : i + 4093])
        conn.events()
    assert conn.buffered_input() < 200 * 1024


# -- state table ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, args",
    [
        ("send_message", (A("x"), 1)),
        ("whereis", ("x",)),
        ("heartbeat", ()),
        ("link", (None, None)),
        ("reply_whereis", (1, None)),
    ],
)
def test_commands_before_established_raise_naming_role_state_event(command, args):
    conn = make_conn("client")
    with pytest.raises(LocalProtocolError) as info:
        getattr(conn, command)(*args)
    assert info.value.code == "illegal_state"
    text = str(info.value)
    assert "role=client" in text and "state=idle" in text and repr(command) in text


def test_start_is_client_only_and_once():
    with pytest.raises(LocalProtocolError, match="role=server"):
        make_conn("server").start()
    conn = make_conn("client")
    conn.start()
    with pytest.raises(LocalProtocolError, match="state=await_challenge"):
        conn.start()


def test_after_close_only_close_and_process_exited():
    pair = ours_pair()
    pair.client.close()
    events = pair.client.events()
    assert events[-1] == ConnectionClosed(None, "closed locally", None)
    pair.client.close()
    pair.client.process_exited(pair.client.pids.new(), A("normal"))
    with pytest.raises(LocalProtocolError, match="state=closed"):
        pair.client.send_message(A("x"), 1)


def test_every_state_can_close_and_report_deaths():
    for role, table in TRANSITIONS.items():
        for state, row in table.items():
            for needed in ("close", "connection_lost", "fail", "process_exited"):
                assert needed in row, (role, state, needed)
            for event, target in row.items():
                assert target is None or target in table, (role, state, event)


def test_unknown_role_and_feature_rejected():
    with pytest.raises(ValueError):
        make_conn("proxy")
    with pytest.raises(ValueError):
        make_conn("client", features={"route_undelivered"})


def test_frames_dropped_do_not_reply_to_legacy():
    conn = server()
    conn.receive_data(frame(VECTORS[1]) + frame(VECTORS[3]))
    conn.events()
    conn.data_to_send()
    conn.receive_data(frame(encode((A("whereis"), 1, b"x"), minor_version=1)))
    (dropped,) = conn.events()
    assert isinstance(dropped, FrameDropped) and dropped.code == "unknown_frame"
    assert conn.data_to_send() == b""
    assert FEATURES


def test_frame_ready_says_whether_next_frame_has_something_to_say():
    """``FrameReader.frame_ready(limit)``: True once a whole frame is buffered, or as soon as
    a length over ``limit`` is (next_frame raises then, it does not wait for the bytes)."""
    from pyfabric.protocol._framing import FrameReader

    reader = FrameReader()
    assert not reader.frame_ready(100)
    reader.feed(b"\x00\x00")
    assert not reader.frame_ready(100)
    reader.feed(b"\x00\x03ab")
    assert not reader.frame_ready(100)
    reader.feed(b"c\x00\x00\x00")
    assert reader.frame_ready(100)
    assert reader.next_frame(100) is not None and not reader.frame_ready(100)
    reader.feed(b"\xff")  # a length of 255 announced: over a limit of 100
    assert reader.frame_ready(100) and not reader.frame_ready(1000)


def test_has_events_is_false_only_for_bytes_that_complete_no_frame():
    from pyfabric.protocol import NEED_DATA

    pair = ours_pair(server_kw={"allowed": ["inbox"]})
    assert not pair.server.has_events()
    pair.client.send_message(A("inbox"), b"x" * 1000)
    data = pair.client.data_to_send()
    pair.server.receive_data(data[:600])
    assert not pair.server.has_events() and pair.server.next_event() is NEED_DATA
    pair.server.receive_data(data[600:])
    assert pair.server.has_events()
    assert pair.server.next_event() is not NEED_DATA
    pair.server.close()
    assert pair.server.has_events()  # ConnectionClosed waits
    pair.server.events()
    assert not pair.server.has_events()
