"""The fused m path (pyfabric/protocol/_fastpath.py): it produces the frames, counts and
deliveries of the general path, and leaves everything unusual to it."""

from __future__ import annotations

import pytest
from protocol_testlib import A, ours_pair, split_frames

from pyfabric.etf import DecodeError, DecodeLimits, decode, decode_from, decoder_from, encode
from pyfabric.protocol import FrameDropped, MessageReceived, ProxyCreated
from pyfabric.protocol._framing import FrameWriter


def _with_proxy(**server_kw):
    """A pair where the client holds a proxy of a server process; returns (pair, proxy, that process)."""
    pair = ours_pair(client_kw={"allowed": ["inbox"]}, server_kw=server_kw)
    local = pair.server.pids.new()
    pair.server.send_message(A("inbox"), (A("hello"), local))
    pair.pump()
    (ev,) = [e for e in pair.take("client") if isinstance(e, MessageReceived)]
    return pair, ev.payload[1], local


def _counts(conn):
    s = conn.session
    c = s.credit
    return (s.outbox.sent, s.outbox.nbytes, c.out_count, c.out_bytes, dict(c.out_dest))


@pytest.mark.parametrize("payload", [7, b"bin", (1, [2.5, "x"], {"k": A("v")}), None, True])
def test_send_m_writes_what_send_message_writes(payload):
    fast, proxy_a, _ = _with_proxy()
    slow, proxy_b, _ = _with_proxy()
    assert fast.client.send_m(proxy_a, payload) is True
    slow.client.send_message(proxy_b, payload)
    assert fast.client.data_to_send() == slow.client.data_to_send()
    assert _counts(fast.client) == _counts(slow.client)
    assert fast.client.session.outbox.frames[-1][1] == (proxy_a, payload, 0)  # the 11.7 note


def test_send_m_exports_a_local_pid_like_send_message():
    fast, proxy, _ = _with_proxy()
    mine = fast.client.pids.new()
    assert fast.client.send_m(proxy, (A("from"), mine))
    fast.pump()
    (ev,) = [e for e in fast.take("server") if isinstance(e, MessageReceived)]
    assert ev.payload[0] == A("from")
    assert fast.client.session.export_ids.get(mine) is not None


def test_send_m_leaves_the_unusual_to_the_general_path():
    pair, proxy, _ = _with_proxy()
    client = pair.client
    assert client.send_m(client.pids.new(), 1) is False  # not a proxy of this connection
    assert client.send_m(proxy, object()) is False  # cannot be encoded: send_message raises
    assert client.session.outbox.sent == 0 and client.data_to_send() == b""
    credit = client.session.credit
    credit.out_count = credit.out_window  # no credit left
    assert client.send_m(proxy, 1) is False
    client.close()
    assert client.send_m(proxy, 1) is False


def test_deliver_hook_gets_what_the_event_would_carry():
    hooked, proxy_a, local_a = _with_proxy()
    plain, proxy_b, local_b = _with_proxy()
    got = []
    hooked.server.deliver = lambda *args: got.append(args)
    hooked.client.send_message(proxy_a, (1, 2))
    plain.client.send_message(proxy_b, (1, 2))
    hooked.pump()
    plain.pump()
    assert [e for e in hooked.take("server") if isinstance(e, MessageReceived)] == []
    (ev,) = [e for e in plain.take("server") if isinstance(e, MessageReceived)]
    assert got == [(local_a, (1, 2), got[0][2])]
    assert ev.dest == local_b and ev.payload == (1, 2) and got[0][2] == ev.credit
    assert hooked.server.session.credit.in_count == plain.server.session.credit.in_count == 1


def test_deliver_hook_keeps_new_proxies_as_events_in_order():
    pair, proxy, _ = _with_proxy()
    got = []
    pair.server.deliver = lambda *args: got.append(args)
    pair.client.send_message(proxy, pair.client.pids.new())  # a new pid: a proxy on the server
    pair.pump()
    events = pair.take("server")
    kinds = [type(e) for e in events if isinstance(e, ProxyCreated | MessageReceived)]
    assert kinds == [ProxyCreated, MessageReceived] and got == []


def test_deliver_hook_refusals_are_the_general_paths():
    pair = ours_pair(server_kw={"allowed": ["open"]})
    got = []
    pair.server.deliver = lambda *args: got.append(args)
    pair.client.send_message(A("closed"), 1)
    pair.client.send_message(A("open"), 2)
    pair.pump()
    dropped = [e for e in pair.take("server") if isinstance(e, FrameDropped)]
    assert [e.code for e in dropped] == ["not_allowed"]
    assert got == [(A("open"), 2, got[0][2])]


def test_frame_writer_pieces_are_the_joined_bytes():
    w = FrameWriter()
    for f in (b"a", b"", b"x" * 70_000):
        w.write(f)
    assert len(w) == 3 * 4 + 70_001
    pieces = w.take_pieces()
    assert len(w) == 0 and w.take_pieces() == [] and w.take() == b""
    assert split_frames(b"".join(pieces)) == [b"a", b"", b"x" * 70_000]


def test_decoder_from_is_decode_from():
    limits = DecodeLimits(max_binary_size=8)
    at = decoder_from(limits=limits)
    data = b"junk" + encode((A("m"), 1, [b"abc"]), minor_version=1) + b"tail"
    assert at(data, 4) == decode_from(data, 4, limits=limits)
    assert at(bytearray(data), 4) == decode_from(data, 4, limits=limits)
    big = encode(b"x" * 9)
    with pytest.raises(DecodeError):
        at(big, 0)
    assert decode(big) == b"x" * 9
