"""The 53 recorded vectors: decode them, replay the legacy conversation through our
core in both roles, and re-encode every deterministic frame byte for byte."""

from __future__ import annotations

import pytest
from protocol_testlib import (
    CHALLENGE_02,
    CLI,
    SRV,
    VECTOR_NAMES,
    VECTORS,
    A,
    PidFactory,
    fixed_random,
    frame,
    make_conn,
    split_frames,
)

from pyfabric.etf import DecodeError, ImproperList, Pid, Reference, decode
from pyfabric.protocol import (
    AuthFailed,
    ConnectionClosed,
    DeadPidSubstituted,
    FrameDropped,
    HandshakeComplete,
    MessageReceived,
    ProxyCreated,
    ProxyDied,
)
from pyfabric.protocol._handshake import legacy_response

GARBAGE = {42, 45}


def test_all_53_vectors_present():
    assert sorted(VECTORS) == list(range(1, 54))


@pytest.mark.parametrize("n", sorted(VECTORS), ids=lambda n: VECTOR_NAMES[n])
def test_vector_decodes(n):
    data = VECTORS[n]
    if n in GARBAGE:
        with pytest.raises(DecodeError):
            decode(data, safe=False)
        return
    term = decode(data, safe=False)
    assert type(term) is tuple


def test_md5_response_of_vectors_02_03():
    assert legacy_response(CHALLENGE_02, b"secret") == "c645360649534f0afea7feb3ea3c7bfd"
    assert decode(VECTORS[3])[1] == "c645360649534f0afea7feb3ea3c7bfd"
    assert decode(VECTORS[5])[1] != decode(VECTORS[3])[1]  # vector 05 came from another session


def legacy_server(**kw):
    kw.setdefault("allowed", {"simple_server", "private_proc"} - {"private_proc"})
    kw.setdefault("allow_legacy_auth", True)
    kw.setdefault("random_bytes", fixed_random(bytes.fromhex(CHALLENGE_02)))
    return make_conn("server", **kw)


def established_server(**kw):
    server = legacy_server(**kw)
    server.receive_data(frame(VECTORS[1]))
    assert server.events() == []
    assert server.data_to_send() == frame(VECTORS[2])
    server.receive_data(frame(VECTORS[3]))
    (done,) = server.events()
    assert isinstance(done, HandshakeComplete) and done.mode == "legacy"
    assert server.data_to_send() == frame(VECTORS[4])
    return server


def test_server_replays_handshake_byte_exact():
    established_server()


def test_server_wrong_secret_gets_vector_06_and_closes():
    server = legacy_server()
    server.receive_data(frame(VECTORS[1]))
    server.events()
    server.data_to_send()
    server.receive_data(frame(VECTORS[5]))
    events = server.events()
    assert isinstance(events[0], AuthFailed) and isinstance(events[1], ConnectionClosed)
    assert events[1].code == "auth_failed"
    assert server.data_to_send() == frame(VECTORS[6])
    assert server.state == "closed"


def established_client(**kw):
    kw.setdefault("allow_legacy_auth", True)
    client = make_conn("client", **kw)
    client.start()
    client.data_to_send()  # our (extended) hello: an original server ignores its Name
    client.receive_data(frame(VECTORS[2]))
    assert client.events() == []
    assert client.data_to_send() == frame(VECTORS[3])
    client.receive_data(frame(VECTORS[4]))
    (done,) = client.events()
    assert isinstance(done, HandshakeComplete) and done.mode == "legacy"
    return client


def test_client_replays_response_byte_exact():
    established_client()


def test_client_gets_auth_failed_vector_06():
    client = make_conn("client", allow_legacy_auth=True)
    client.start()
    client.receive_data(frame(VECTORS[2]) + frame(VECTORS[6]))
    events = client.events()
    assert isinstance(events[0], AuthFailed)
    assert events[-1] == ConnectionClosed("auth_failed", events[-1].message, events[-1].error)


def payload_of(n):
    return decode(VECTORS[n])[2]


class ClientReplay:
    """The client half of the recorded conversation (vectors 07-22, 27-31)."""

    def __init__(self):
        self.pids = PidFactory(CLI)
        self.conn = established_client(pids=self.pids)
        self.me = self.pids.new()


def test_client_reencodes_messages_byte_exact():
    r = ClientReplay()
    c = r.conn
    rich = decode(VECTORS[7])[2][1][1][1]  # {payload, ...} as on the wire
    ref_bin = rich[7][1]
    ref = decode(ref_bin)
    assert type(ref) is Reference
    payload = (
        A("payload"), "abababa", b"\x01\x02\x03", 3.5, 1 << 70, -(1 << 70),
        (A("nested"), (A("deeper"), [1, (A("x"),)], [])), ref, -42, 300, A("atom_x"), [], b"",
        1.0e-300, ImproperList((1, 2), A("improper")),
    )
    c.send_message(A("simple_server"), (r.me, payload))
    assert c.data_to_send() == frame(VECTORS[7])

    c.receive_data(frame(VECTORS[8]))
    created, msg = c.events()
    assert isinstance(created, ProxyCreated) and created.remote_id == 1
    server_proxy = created.pid
    assert msg == MessageReceived(r.me, (A("pong"), server_proxy, payload))

    c.send_message(A("simple_server"), just := A("just_an_atom"))
    assert c.data_to_send() == frame(VECTORS[9]) and just

    zeros = bytes(10240)
    c.send_message(A("simple_server"), (r.me, zeros))
    assert c.data_to_send() == frame(VECTORS[10])
    c.receive_data(frame(VECTORS[11]))
    assert c.events() == [MessageReceived(r.me, (A("pong"), server_proxy, zeros))]

    rand = decode(VECTORS[12])[2][1][1]
    c.send_message(A("simple_server"), (r.me, rand))
    assert c.data_to_send() == frame(VECTORS[12])  # incompressible: stays plain
    c.receive_data(frame(VECTORS[13]))
    assert c.events() == [MessageReceived(r.me, (A("pong"), server_proxy, rand))]

    c.send_message(server_proxy, (r.me, A("again")))
    assert c.data_to_send() == frame(VECTORS[14])
    c.receive_data(frame(VECTORS[15]))
    assert c.events() == [MessageReceived(r.me, (A("pong"), server_proxy, A("again")))]

    watcher = r.pids.new()
    c.send_message(A("simple_server"), (r.me, (A("watch"), watcher)))
    assert c.data_to_send() == frame(VECTORS[16])
    c.receive_data(frame(VECTORS[17]))
    assert c.events() == [MessageReceived(r.me, (A("pong"), server_proxy, (A("watch"), watcher)))]

    c.process_exited(watcher, A("normal"))
    assert c.data_to_send() == frame(VECTORS[18])
    c.process_exited(watcher, A("normal"))  # not exported any more: nothing
    assert c.data_to_send() == b""

    # Exports 3..5 then their deaths (vectors 19-21).
    workers = [r.pids.new() for _ in range(3)]
    for w in workers:
        c.send_message(A("simple_server"), w)
    c.data_to_send()
    reasons = [decode(VECTORS[n])[2] for n in (19, 20, 21)]
    for w, reason, n in zip(workers, reasons, (19, 20, 21)):
        c.process_exited(w, reason)
        assert c.data_to_send() == frame(VECTORS[n]), n

    # A pid that was already dead when shipped: DEAD noproc right after the m frame.
    dead = r.pids.dead_pid(0)
    c.send_message(A("simple_server"), dead)
    m_frame, dead_frame = split_frames(c.data_to_send())
    assert decode(m_frame)[2] == (A("pr"), 6)
    assert dead_frame == VECTORS[22]

    # Sending to names: the sender does not filter (the receiver does).
    c.send_message(A("private_proc"), (r.me, A("direct")))
    assert c.data_to_send() == frame(VECTORS[27])
    c.send_message((A("private_proc"), SRV), (r.me, A("bypass")))
    assert c.data_to_send() == frame(VECTORS[28])
    ref29 = decode(decode(VECTORS[29])[2][1][1][1][1][1])
    c.send_message(
        (A("rex"), SRV),
        (A("$gen_call"), (r.me, ref29), (A("call"), A("os"), A("getpid"), [], A("user"))),
    )
    assert c.data_to_send() == frame(VECTORS[29])
    c.receive_data(frame(VECTORS[30]))
    assert c.events() == [MessageReceived(r.me, (ref29, "18443"))]
    c.send_message(A("fabric_rpc"), (r.me, A("to_nobody")))
    assert c.data_to_send() == frame(VECTORS[31])


def test_client_receives_server_deaths_and_r_proxy():
    r = ClientReplay()
    c = r.conn
    c.send_message(A("simple_server"), (r.me, A("x")))
    c.data_to_send()
    c.receive_data(frame(VECTORS[23]))  # {shipped, {pr,2}, '$return'} to our id 1
    created, msg = c.events()
    assert created.remote_id == 2 and msg.payload == (A("shipped"), created.pid, A("$return"))
    c.receive_data(frame(VECTORS[24]))
    assert c.events() == [ProxyDied(created.pid, 2, A("normal"))]
    c.receive_data(frame(VECTORS[24]))  # again: unknown id, ignored
    assert c.events() == []
    c.receive_data(frame(VECTORS[25]) + frame(VECTORS[26]))  # ids 4, 5 never seen
    assert c.events() == []
    c.receive_data(frame(VECTORS[38]))  # m to our id 5: unknown
    (dropped,) = c.events()
    assert isinstance(dropped, FrameDropped) and dropped.code == "unknown_id"
    c.receive_data(frame(VECTORS[33]))  # {foo, bar}
    (dropped,) = c.events()
    assert dropped.code == "unknown_frame"
    assert c.state == "established"
    c.receive_data(frame(VECTORS[53]))  # DEAD noproc for an unknown id: ignored
    assert c.events() == []


def test_server_replays_conversation_byte_exact():
    pids = PidFactory(SRV)
    s = established_server(pids=pids)
    simple_server = pids.new()

    s.receive_data(frame(VECTORS[7]))
    created, msg = s.events()
    client_pid = created.pid
    assert msg.dest == A("simple_server") and msg.payload[0] == client_pid
    s.send_message(client_pid, (A("pong"), simple_server, msg.payload[1]))
    assert s.data_to_send() == frame(VECTORS[8])

    for incoming, reply in ((10, 11), (12, 13), (34, 35)):
        s.receive_data(frame(VECTORS[incoming]))
        (msg,) = s.events()
        s.send_message(msg.payload[0], (A("pong"), simple_server, msg.payload[1]))
        assert s.data_to_send() == frame(VECTORS[reply]), reply

    s.receive_data(frame(VECTORS[14]))  # m to id 1 = simple_server
    (msg,) = s.events()
    assert msg.dest == simple_server and msg.payload == (client_pid, A("again"))
    s.send_message(client_pid, (A("pong"), simple_server, A("again")))
    assert s.data_to_send() == frame(VECTORS[15])

    s.receive_data(frame(VECTORS[16]))
    created, msg = s.events()
    watcher_proxy = created.pid
    assert created.remote_id == 2 and msg.payload == (client_pid, (A("watch"), watcher_proxy))
    s.send_message(client_pid, (A("pong"), simple_server, (A("watch"), watcher_proxy)))
    assert s.data_to_send() == frame(VECTORS[17])  # our proxy goes back as {pl, 2}

    s.receive_data(frame(VECTORS[18]))
    assert s.events() == [ProxyDied(watcher_proxy, 2, A("normal"))]

    shipped = pids.new()
    s.send_message(client_pid, (A("shipped"), shipped, A("$return")))
    assert s.data_to_send() == frame(VECTORS[23])
    s.process_exited(shipped, A("normal"))
    assert s.data_to_send() == frame(VECTORS[24])
    extra = [pids.new() for _ in range(3)]  # ids 3, 4, 5
    for p in extra:
        s.send_message(client_pid, p)
    s.data_to_send()
    s.process_exited(extra[1], decode(VECTORS[25])[2])
    assert s.data_to_send() == frame(VECTORS[25])
    s.process_exited(extra[2], decode(VECTORS[26])[2])
    assert s.data_to_send() == frame(VECTORS[26])

    ref_payload = decode(VECTORS[30])[2][1][0][1]
    s.send_message(client_pid, (decode(ref_payload), "18443"))
    assert s.data_to_send() == frame(VECTORS[30])


def test_server_r_frame_proxy_and_reply_to_it():
    pids = PidFactory(SRV)
    s = established_server(pids=pids)
    simple_server = pids.new()
    s.receive_data(frame(VECTORS[36]))
    (created,) = s.events()
    assert created.remote_id == 5
    s.receive_data(frame(VECTORS[37]))
    (msg,) = s.events()
    assert msg.payload == (created.pid, A("via_r_frame_proxy"))
    s.send_message(created.pid, (A("pong"), simple_server, A("via_r_frame_proxy")))
    assert s.data_to_send() == frame(VECTORS[38])
    s.receive_data(frame(VECTORS[39]))  # DEAD noproc from a legacy peer -> normal
    assert s.events() == [ProxyDied(created.pid, 5, A("normal"))]


def test_server_substitutes_unknown_pl_and_reencodes_52_53():
    pids = PidFactory(SRV)
    s = established_server(pids=pids)
    simple_server = pids.new()
    s.receive_data(frame(VECTORS[51]))
    created, substituted, msg = s.events()
    assert isinstance(created, ProxyCreated)
    assert isinstance(substituted, DeadPidSubstituted) and substituted.local_id == 777
    assert msg.payload == (created.pid, substituted.pid)
    assert not pids.is_alive(substituted.pid)
    s.send_message(created.pid, (A("pong"), simple_server, substituted.pid))
    assert s.data_to_send() == frame(VECTORS[52]) + frame(VECTORS[53])


@pytest.mark.parametrize(
    "n, code",
    [
        (27, "not_allowed"),
        (28, "not_allowed"),
        (29, "not_allowed"),
        (31, "not_allowed"),
        (32, "bad_term"),
        (44, "unknown_frame"),
        (45, "bad_term"),
        (46, "unknown_id"),
        (47, "bad_payload"),
        (48, "bad_payload"),
        (49, "bad_payload"),
    ],
)
def test_server_drops_bad_frames_and_stays_up(n, code):
    s = established_server(allowed={"simple_server", "fabric_rpc"})
    s.receive_data(frame(VECTORS[n]))
    events = s.events()
    assert [type(e) for e in events] in ([FrameDropped], [ProxyCreated, FrameDropped])
    assert events[-1].code == code
    assert s.data_to_send() == b""  # never an error frame to a legacy peer
    assert s.state == "established"
    s.receive_data(frame(VECTORS[9]))  # still delivers
    assert [type(e) for e in s.events()] == [MessageReceived]


def test_name_node_bypass_28_30_never_reaches_a_process():
    """Vectors 28-29: {Name, Node} goes through the same policy as a plain name."""
    s = established_server(allowed={"simple_server"})
    for n in (27, 28, 29):
        s.receive_data(frame(VECTORS[n]))
    events = s.events()
    assert not any(isinstance(e, MessageReceived) for e in events)
    # Even if the user lists rex, a system name stays closed unless forced.
    s = established_server(allowed={"rex", "private_proc"})
    s.receive_data(frame(VECTORS[29]) + frame(VECTORS[28]))
    events = s.events()
    delivered = [e for e in events if isinstance(e, MessageReceived)]
    assert [e.dest for e in delivered] == [A("private_proc")]
    assert delivered[0].node == SRV
    s = established_server(allowed={"rex"}, force_allowed={"rex"})
    s.receive_data(frame(VECTORS[29]))
    assert any(isinstance(e, MessageReceived) and e.dest == A("rex") for e in s.events())


@pytest.mark.parametrize("n", [40, 41, 42, 43, 44, 45, 3, 7])
def test_bad_first_frames_close_with_auth_failed(n):
    s = legacy_server()
    s.receive_data(frame(VECTORS[n]))
    events = s.events()
    assert isinstance(events[-1], ConnectionClosed) and events[-1].code == "auth_failed"
    assert s.data_to_send() == b""  # the client is not waiting for {auth, _} yet


def test_short_response_43_gets_auth_failed():
    s = legacy_server()
    s.receive_data(frame(VECTORS[1]))
    s.events()
    s.data_to_send()
    s.receive_data(frame(VECTORS[43]))
    events = s.events()
    assert isinstance(events[0], AuthFailed)
    assert s.data_to_send() == frame(VECTORS[6])


def test_injected_unknown_frame_33_at_client():
    c = established_client()
    c.receive_data(frame(VECTORS[33]))
    (dropped,) = c.events()
    assert dropped.code == "unknown_frame" and c.state == "established"


def test_client_dead_noproc_from_legacy_becomes_normal():
    r = ClientReplay()
    c = r.conn
    c.send_message(A("simple_server"), r.me)
    c.data_to_send()
    c.receive_data(frame(VECTORS[23]))
    created, _ = c.events()
    assert created.remote_id == 2
    c.receive_data(frame(VECTORS[53]))  # {'DEAD', {pr, 2}, noproc}
    assert c.events() == [ProxyDied(created.pid, 2, A("normal"))]


def test_pid_type_is_the_codec_pid():
    assert isinstance(PidFactory(CLI).new(), Pid)
