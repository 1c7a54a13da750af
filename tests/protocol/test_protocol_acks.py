"""The `acks` feature, sans-IO (docs/protocol.md section 11): negotiation, counts, acks, the
bounded outbox, cuts at every point of an exchange and the replay, not_resumable, and the
report of what a session ends with."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_testlib import A, Pair, make_conn, split_frames

from pyfabric.etf import decode, encode
from pyfabric.protocol import (
    FEATURES,
    ConnectionClosed,
    FrameDropped,
    HandshakeComplete,
    MessageReceived,
    MessagesUndelivered,
    UndeliveredMessage,
)

SCALE = max(1, int(os.environ.get("FUZZ_SECONDS", "20")) // 20)
NO_ACKS = FEATURES - {"acks"}


def frame(term) -> bytes:
    data = encode(term, minor_version=1)
    return len(data).to_bytes(4, "big") + data


class World:
    """A client and a server of ours that exchange numbered messages by name ("sink" on
    the server, "csink" on the client) and may be cut and resumed at any byte."""

    def __init__(self, **kw) -> None:
        self.kw = kw
        self.store: dict[bytes, object] = {}
        self.client = make_conn("client", allowed={"csink"}, **kw)
        self.server = make_conn("server", allowed={"sink"}, find_session=self.store.get, **kw)
        self.at_server: list[int] = []
        self.at_client: list[int] = []
        self.sent_c = 0
        self.sent_s = 0
        self.events: dict[str, list] = {"client": [], "server": []}
        self.client.start()
        self.move_all()

    def collect(self) -> None:
        for name, conn, got in (("server", self.server, self.at_server), ("client", self.client, self.at_client)):
            for ev in conn.events():
                self.events[name].append(ev)
                if isinstance(ev, MessageReceived):
                    got.append(ev.payload)
                elif isinstance(ev, HandshakeComplete) and name == "client":
                    self.done = ev

    def send(self, from_client: int, from_server: int) -> None:
        for _ in range(from_client):
            self.client.send_message(A("sink"), self.sent_c)
            self.sent_c += 1
        for _ in range(from_server):
            self.server.send_message(A("csink"), self.sent_s)
            self.sent_s += 1

    def move(self, c_bytes: int | None, s_bytes: int | None) -> tuple[bytes, bytes]:
        """Deliver at most that many bytes each way (None: all); returns what was left."""
        c_out = self.client.data_to_send()
        s_out = self.server.data_to_send()
        c_keep = c_out if c_bytes is None else c_out[:c_bytes]
        s_keep = s_out if s_bytes is None else s_out[:s_bytes]
        self.server.receive_data(c_keep)
        self.client.receive_data(s_keep)
        self.collect()
        return c_out[len(c_keep) :], s_out[len(s_keep) :]

    def move_all(self) -> None:
        while True:
            c_left, s_left = self.move(None, None)
            if not (self.client.pending_output() or self.server.pending_output()):
                return

    def cut(self) -> None:
        """The connection drops: both sides notice, the client resumes."""
        self.client.data_to_send()
        self.server.data_to_send()
        self.client.connection_lost()
        self.server.connection_lost()
        self.collect()
        self.store[self.server.session.id] = self.server.session
        self.client = make_conn("client", allowed={"csink"}, session=self.client.session, pids=self.client.pids, **self.kw)
        self.server = make_conn(
            "server", allowed={"sink"}, find_session=self.store.get, pids=self.server.pids, **self.kw
        )
        self.client.start()
        self.move_all()
        for conn in (self.client, self.server):
            if conn.state == "established":
                conn.send_deferred()
        self.move_all()

    def settle(self) -> None:
        """Deliver everything and exchange the final acks (as the ack_delay timer would)."""
        self.move_all()
        self.client.send_ack()
        self.server.send_ack()
        self.move_all()


def test_acks_is_agreed_between_our_peers_only_with_session():
    world = World()
    assert "acks" in world.client.features and "acks" in world.server.features
    assert world.client.session.outbox is not None and world.server.session.outbox is not None
    # Without `session` neither side offers nor accepts it.
    pair = Pair(make_conn("client", features=FEATURES - {"session"}), make_conn("server"))
    pair.client.start()
    pair.pump()
    assert "acks" not in pair.client.features and pair.client.session.outbox is None
    pair = Pair(make_conn("client"), make_conn("server", features=FEATURES - {"session"}))
    pair.client.start()
    pair.pump()
    assert "acks" not in pair.server.features


def test_a_peer_that_does_not_offer_acks_sees_nothing_new():
    """An older server of ours (no `acks`): the Accept carries no new key, no ack frames."""
    client = make_conn("client")
    server = make_conn("server", features=NO_ACKS, allowed={"sink"})
    client.start()
    server.receive_data(client.data_to_send())
    server.events()
    client.receive_data(server.data_to_send())
    client.events()
    response = decode(split_frames(client.data_to_send())[0])
    accept = decode(response[2])
    assert set(accept) == {b"features", b"node", b"max_frame", b"heartbeat"}
    assert b"acks" not in accept[b"features"]
    server.receive_data(frame(response))
    server.events()
    client.receive_data(server.data_to_send())
    client.events()
    for i in range(200):
        client.send_message(A("sink"), i)
    server.receive_data(client.data_to_send())
    assert len([e for e in server.events() if isinstance(e, MessageReceived)]) == 200
    assert client.session.outbox is None and not client.ack_owed()
    assert server.data_to_send() == b""  # no ack frame


def test_accept_of_acks_without_session_fails_the_handshake():
    from pyfabric.protocol import _handshake as hs

    client = make_conn("client")
    server = make_conn("server")
    client.start()
    hello = client.data_to_send()
    server.receive_data(hello)
    server.events()
    challenge = server.data_to_send()
    accept_bin = encode({b"features": [b"acks"], b"node": b"c@h", b"max_frame": 1000, b"heartbeat": 0}, minor_version=1)
    mac = hs.client_mac(b"secret", split_frames(hello)[0], split_frames(challenge)[0], accept_bin)
    server.receive_data(frame((A("response"), mac, accept_bin)))
    events = server.events()
    assert [type(e).__name__ for e in events] == ["AuthFailed", "ConnectionClosed"]
    assert "session" in events[0].message


def test_acks_every_64_frames_and_on_request():
    world = World()
    world.send(200, 0)
    c_out = world.client.data_to_send()
    world.server.receive_data(c_out)
    world.collect()
    acks = [decode(f) for f in split_frames(world.server.data_to_send())]
    assert acks == [(A("ack"), 64), (A("ack"), 128), (A("ack"), 192)]
    assert world.server.ack_owed()
    world.server.send_ack()
    world.server.send_ack()  # does not advance: nothing
    assert [decode(f) for f in split_frames(world.server.data_to_send())] == [(A("ack"), 200)]
    assert not world.server.ack_owed()


def test_ack_frees_the_outbox_and_unsequenced_frames_do_not_count():
    world = World()
    world.send(10, 0)
    assert world.client.unacknowledged() == 10
    world.client.heartbeat()
    world.settle()
    assert world.client.unacknowledged() == 0
    assert world.server.session.outbox.received == 10  # the heartbeat is not counted


@pytest.mark.parametrize("n", ["x", 0, 11, 5])
def test_bad_ack_is_dropped(n):
    world = World()
    world.send(10, 0)
    world.move_all()
    world.server.send_ack()
    world.move_all()  # acked 10
    world.send(10, 0)
    world.client.data_to_send()
    ack = {"x": A("x"), 0: 0, 11: 10 + 11, 5: 5}[n]  # not an int, not above 10, above Sent 20
    world.client.receive_data(frame((A("ack"), ack)))
    (dropped,) = world.client.events()
    assert isinstance(dropped, FrameDropped) and dropped.code == "bad_ack"
    assert world.client.unacknowledged() == 10


def test_a_full_outbox_makes_commands_wait_in_order():
    world = World(outbox_frames=4)
    world.send(10, 0)
    assert world.client.unacknowledged() == 4 and world.client.waiting() == 6
    world.move_all()
    assert world.at_server == [0, 1, 2, 3]
    world.server.send_ack()
    world.move_all()
    world.server.send_ack()
    world.move_all()
    world.server.send_ack()
    world.move_all()
    assert world.at_server == list(range(10)) and world.client.waiting() == 0


def test_outbox_bytes_bound_admits_one_frame_when_empty():
    world = World(outbox_bytes=10)
    world.send(3, 0)
    assert world.client.unacknowledged() == 1 and world.client.waiting() == 2


def test_frames_of_a_protocol_side_are_always_admitted():
    world = World(outbox_frames=1)
    me = world.client.pids.new()
    world.client.send_message(A("sink"), me)  # exports `me`
    world.client.send_message(A("sink"), 1)  # waits
    world.client.process_exited(me, A("bye"))  # a DEAD is admitted to the full outbox
    assert world.client.unacknowledged() == 2 and world.client.waiting() == 1


def scripted(world: World) -> None:
    world.send(3, 2)
    world.client.heartbeat()
    world.send(2, 3)


def test_cut_at_every_byte_of_a_scripted_exchange_loses_and_repeats_nothing():
    probe = World(ack_every=2)
    scripted(probe)
    c_len = len(probe.client.data_to_send())
    s_len = len(probe.server.data_to_send())
    for direction in ("c2s", "s2c"):
        for k in range((c_len if direction == "c2s" else s_len) + 1):
            world = World(ack_every=2)
            scripted(world)
            world.move(k if direction == "c2s" else None, k if direction == "s2c" else None)
            world.cut()
            assert world.done.resumed, (direction, k)
            world.send(1, 1)
            world.settle()
            assert world.at_server == list(range(6)), (direction, k, world.at_server)
            assert world.at_client == list(range(6)), (direction, k, world.at_client)
            assert world.client.unacknowledged() == world.server.unacknowledged() == 0


step = st.tuples(
    st.integers(0, 40), st.integers(0, 40), st.floats(0, 1), st.floats(0, 1), st.booleans(), st.booleans()
)


@settings(max_examples=100 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=12), st.integers(1, 80), st.integers(1, 64))
def test_fuzz_random_cuts_lose_duplicate_and_reorder_nothing(steps, ack_every, outbox_frames):
    world = World(ack_every=ack_every, outbox_frames=outbox_frames)
    for n_c, n_s, frac_c, frac_s, cut, ack in steps:
        world.send(n_c, n_s)
        c_len, s_len = world.client.pending_output(), world.server.pending_output()
        c_left, s_left = world.move(int(c_len * frac_c), int(s_len * frac_s))
        if not cut:  # the rest of the stream follows (only a cut loses bytes)
            world.server.receive_data(c_left)
            world.client.receive_data(s_left)
            world.collect()
        if ack:
            world.client.send_ack()
            world.server.send_ack()
        if cut:
            world.cut()
            assert world.done.resumed
        else:
            world.move_all()
    world.settle()
    for _ in range(world.sent_c + world.sent_s + 10):  # waiting commands go out as acks free the outbox
        # (with outbox_frames below ack_every, only the ack_delay timer, here settle(), frees it)
        if not (world.client.waiting() or world.server.waiting()):
            break
        world.settle()
    assert world.at_server == list(range(world.sent_c))
    assert world.at_client == list(range(world.sent_s))
    assert not [e for side in world.events.values() for e in side if isinstance(e, (FrameDropped, MessagesUndelivered))]


def test_server_count_out_of_range_is_not_resumable_for_the_client():
    world = World()
    world.send(3, 0)
    world.move_all()
    world.client.connection_lost()
    world.server.connection_lost()
    world.collect()
    world.server.session.outbox.received = 7  # claims frames the client never sent
    world.store[world.server.session.id] = world.server.session
    client = make_conn("client", allowed={"csink"}, session=world.client.session, pids=world.client.pids)
    server = make_conn("server", allowed={"sink"}, find_session=world.store.get, pids=world.server.pids)
    pair = Pair(client, server)
    client.start()
    pair.pump()
    c_events = pair.take("client")
    report = [e for e in c_events if isinstance(e, MessagesUndelivered)]
    assert report == [
        MessagesUndelivered(
            "not_resumable",
            world.server.session.id,
            server.node_name,
            tuple(UndeliveredMessage(A("sink"), i, False, "unconfirmed") for i in range(3)),
        )
    ]
    assert isinstance(c_events[-1], ConnectionClosed) and c_events[-1].code == "not_resumable"
    assert client.session.id is None  # the next connection will not ask for it
    s_events = pair.take("server")
    assert [e.code for e in s_events if type(e).__name__ == "PeerError"] == ["not_resumable"]


def test_client_count_out_of_range_is_refused_by_the_server():
    world = World()
    world.send(0, 2)
    world.move_all()
    world.client.connection_lost()
    world.server.connection_lost()
    world.collect()
    world.client.session.outbox.received = 9  # claims frames the server never sent
    world.store[world.server.session.id] = world.server.session
    old_id = world.server.session.id
    client = make_conn("client", allowed={"csink"}, session=world.client.session, pids=world.client.pids)
    server = make_conn("server", allowed={"sink"}, find_session=world.store.get, pids=world.server.pids)
    pair = Pair(client, server)
    client.start()
    pair.pump()
    (s_done,) = [e for e in pair.take("server") if isinstance(e, HandshakeComplete)]
    assert not s_done.resumed and s_done.resume_refused == "not_resumable" and s_done.refused_session_id == old_id
    c_events = pair.take("client")
    done = [e for e in c_events if isinstance(e, HandshakeComplete)][0]
    assert not done.resumed and done.resume_refused == "not_resumable"


def test_unknown_session_reports_unconfirmed_and_unsent_messages():
    world = World()
    world.send(2, 0)
    world.client.data_to_send()  # written, lost in the cut
    world.client.connection_lost()
    world.collect()
    world.client.session.defer(__import__("pyfabric.protocol", fromlist=["SendMessage"]).SendMessage(A("sink"), 99))
    client = make_conn("client", allowed={"csink"}, session=world.client.session, pids=world.client.pids)
    server = make_conn("server", allowed={"sink"}, find_session={}.get)
    pair = Pair(client, server)
    client.start()
    pair.pump()
    (report,) = [e for e in pair.take("client") if isinstance(e, MessagesUndelivered)]
    assert report.reason == "session_expired"
    assert report.messages == (
        UndeliveredMessage(A("sink"), 0, False, "unconfirmed"),
        UndeliveredMessage(A("sink"), 1, False, "unconfirmed"),
        UndeliveredMessage(A("sink"), 99, False, "unsent"),
    )
    client.send_deferred()
    pair.pump()
    assert [e for e in pair.take("server") if isinstance(e, MessageReceived)] == []  # never sent again


def test_dead_while_disconnected_is_replayed_once_not_resent():
    world = World()
    me = world.client.pids.new()
    world.client.send_message(A("sink"), me)
    world.move_all()
    world.client.process_exited(me, A("bye"))
    world.move_all()
    died = [e for e in world.events["server"] if type(e).__name__ == "ProxyDied"]
    assert len(died) == 1
    world.cut()
    world.settle()
    assert len([e for e in world.events["server"] if type(e).__name__ == "ProxyDied"]) == 1


def test_a_client_that_does_not_accept_acks_sees_nothing_new():
    """An older client of ours (no `acks`) at our server: Info keys as in version 1 (also
    when its resume is refused), no ack frames, no outbox on either side."""
    for resume in (None, b"\x01" * 16):
        client = make_conn("client", features=NO_ACKS, allowed={"csink"})
        if resume is not None:
            from pyfabric.protocol import Session

            client = make_conn("client", features=NO_ACKS, allowed={"csink"}, session=Session(resume))
        server = make_conn("server", allowed={"sink"}, find_session={}.get)
        client.start()
        server.receive_data(client.data_to_send())
        server.events()
        client.receive_data(server.data_to_send())
        client.events()
        server.receive_data(client.data_to_send())
        server.events()
        auth = decode(split_frames(server.data_to_send())[0])
        assert set(decode(auth[3])) == {b"session", b"resumed"}
        client.receive_data(frame(auth))
        client.events()
        assert "acks" not in server.features and server.session.outbox is None
        for i in range(200):
            client.send_message(A("sink"), i)
            server.send_message(A("csink"), i)
        server.receive_data(client.data_to_send())
        assert len([e for e in server.events() if isinstance(e, MessageReceived)]) == 200
        server.send_ack()
        s_out = server.data_to_send()
        assert [decode(f)[0] for f in split_frames(s_out)] == [A("m")] * 200  # no ack among them
        client.receive_data(s_out)
        assert len([e for e in client.events() if isinstance(e, MessageReceived)]) == 200
        client.send_ack()
        assert client.data_to_send() == b""
