"""The `credit` feature and confirmed sends, sans-IO (docs/protocol.md 11.8, 12, 13.4, 14.2):
negotiation of the windows, the sender's counts per connection and per destination, the
pending queue in issue order per destination, grants, violations, resumes with credit
state, and mc / mc_result."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_testlib import A, Pair, make_conn, split_frames

from pyfabric.etf import decode, encode
from pyfabric.protocol import (
    FEATURES,
    ConnectionConfig,
    FeatureNotSupported,
    FrameDropped,
    HandshakeComplete,
    MessageReceived,
    MessagesUndelivered,
    SendResult,
)
from pyfabric.protocol import _handshake as hs

SCALE = max(1, int(os.environ.get("FUZZ_SECONDS", "20")) // 20)


def frame(term) -> bytes:
    data = encode(term, minor_version=1)
    return len(data).to_bytes(4, "big") + data


class World:
    """A client and a server of ours; each side's runtime delivers by name and returns
    credit unless the name is in ``slow`` (its mailbox over ``mailbox_high``)."""

    def __init__(self, client_kw: dict | None = None, server_kw: dict | None = None, **kw) -> None:
        self.ckw = {**kw, **(client_kw or {})}
        self.skw = {**kw, **(server_kw or {})}
        self.store: dict[bytes, object] = {}
        self.client = make_conn("client", allowed={"c1", "c2"}, **self.ckw)
        self.server = make_conn("server", allowed={"s1", "s2", "s3"}, find_session=self.store.get, **self.skw)
        self.got: dict[str, list] = {"client": [], "server": []}
        self.events: dict[str, list] = {"client": [], "server": []}
        self.slow: dict[str, set] = {"client": set(), "server": set()}
        self.answer: dict[str, str | None] = {}  # name -> code a confirmed send to it gets
        self.client.start()
        self.move_all()

    def conn(self, side: str):
        return self.client if side == "client" else self.server

    def collect(self) -> None:
        for side in ("server", "client"):
            conn = self.conn(side)
            for ev in conn.events():
                self.events[side].append(ev)
                if isinstance(ev, MessageReceived):
                    code = self.answer.get(ev.dest.name)
                    if code is None:
                        self.got[side].append((ev.dest.name, ev.payload))
                        conn.credit_delivered(ev.credit, ev.dest, ev.dest.name not in self.slow[side])
                    else:
                        conn.credit_returned(ev.credit)
                    conn.send_result(ev.ref, code)
                elif isinstance(ev, HandshakeComplete) and side == "client":
                    self.done = ev

    def move_all(self) -> None:
        for _ in range(1000):
            c_out = self.client.data_to_send()
            s_out = self.server.data_to_send()
            if not c_out and not s_out:
                return
            self.server.receive_data(c_out)
            self.client.receive_data(s_out)
            self.collect()
        raise AssertionError("no quiescence")

    def timers(self) -> None:
        """What the transport's ack_delay / grant_delay timers do."""
        for conn in (self.client, self.server):
            conn.send_ack()
            conn.send_grant()
        self.move_all()

    def release(self, side: str, name: str) -> None:
        """``name``'s mailbox drained below mailbox_high: the recheck returns its credit."""
        self.slow[side].discard(name)
        self.conn(side).recheck_owed(lambda mailbox: mailbox.name not in self.slow[side])
        self.move_all()

    def cut(self, c_bytes: int | None = 0, s_bytes: int | None = 0) -> None:
        """Deliver at most that many of the bytes in flight, drop the connection, resume."""
        c_out = self.client.data_to_send()
        s_out = self.server.data_to_send()
        self.server.receive_data(c_out if c_bytes is None else c_out[:c_bytes])
        self.client.receive_data(s_out if s_bytes is None else s_out[:s_bytes])
        self.collect()
        self.client.connection_lost()
        self.server.connection_lost()
        self.collect()
        self.store[self.server.session.id] = self.server.session
        self.client = make_conn("client", allowed={"c1", "c2"}, session=self.client.session, pids=self.client.pids, **self.ckw)
        self.server = make_conn("server", allowed={"s1", "s2", "s3"}, find_session=self.store.get, pids=self.server.pids, **self.skw)
        self.client.start()
        self.move_all()
        for conn in (self.client, self.server):
            if conn.state == "established":
                conn.send_deferred()
        self.move_all()

    def dropped(self, side: str) -> list[str]:
        return [e.code for e in self.events[side] if isinstance(e, FrameDropped)]


def written(conn) -> list:
    return [decode(f) for f in split_frames(conn.data_to_send())]


# -- negotiation (12.1) -------------------------------------------------------------------


def test_credit_is_agreed_with_the_windows_of_each_side():
    world = World(client_kw={"credit_dest": 7, "credit_window": 70}, server_kw={"credit_bytes": 5000})
    assert "credit" in world.client.features and "credit" in world.server.features
    c, s = world.client.session.credit, world.server.session.credit
    # Each side sends within what the other announced.
    assert (c.out_window, c.out_bytes_max, c.out_dest_max) == (16384, 5000, 1024)
    assert (s.out_window, s.out_bytes_max, s.out_dest_max) == (70, 16 << 20, 7)
    assert (c.in_window, c.in_dest_max) == (70, 7)


def test_credit_needs_acks_and_a_peer_without_it_sees_no_key():
    pair = Pair(make_conn("client", features=FEATURES - {"acks"}), make_conn("server"))
    pair.client.start()
    pair.pump()
    assert "credit" not in pair.client.features and pair.client.session.credit is None
    assert "credit" not in pair.server.features and pair.server.session.credit is None
    # A server without credit offers no window keys.
    server = make_conn("server", features=FEATURES - {"credit"})
    client = make_conn("client")
    client.start()
    server.receive_data(client.data_to_send())
    server.events()
    offer = decode(split_frames(server.data_to_send())[0])[2]
    assert not {b"credit_window", b"credit_bytes", b"credit_dest"} & set(offer)


def _accept_frame(client, server, accept):
    client.start()
    hello = client.data_to_send()
    server.receive_data(hello)
    server.events()
    challenge = server.data_to_send()
    accept_bin = encode(accept, minor_version=1)
    mac = hs.client_mac(b"secret", split_frames(hello)[0], split_frames(challenge)[0], accept_bin)
    server.receive_data(frame((A("response"), mac, accept_bin)))
    return server.events()


@pytest.mark.parametrize(
    "windows",
    [{}, {b"credit_window": 0, b"credit_bytes": 1, b"credit_dest": 1}, {b"credit_window": 4, b"credit_bytes": 9, b"credit_dest": 5},
     {b"credit_window": 4, b"credit_bytes": b"9", b"credit_dest": 1}],
)
def test_a_missing_or_bad_window_fails_the_handshake(windows):
    base = {b"features": [b"session", b"acks", b"credit"], b"node": b"c@h", b"max_frame": 1000, b"heartbeat": 0}
    events = _accept_frame(make_conn("client"), make_conn("server"), {**base, **windows})
    assert [type(e).__name__ for e in events] == ["AuthFailed", "ConnectionClosed"]
    assert "credit" in events[0].message


def test_credit_without_acks_in_an_accept_fails_the_handshake():
    accept = {b"features": [b"session", b"credit"], b"node": b"c@h", b"max_frame": 1000, b"heartbeat": 0,
              b"credit_window": 4, b"credit_bytes": 9, b"credit_dest": 1}
    events = _accept_frame(make_conn("client"), make_conn("server"), accept)
    assert [type(e).__name__ for e in events] == ["AuthFailed", "ConnectionClosed"]


def test_config_checks_the_windows():
    with pytest.raises(ValueError):
        ConnectionConfig.build(b"s", credit_dest=10, credit_window=5)
    with pytest.raises(ValueError):
        ConnectionConfig.build(b"s", credit_bytes=0)
    assert ConnectionConfig.build(b"s", credit_dest=5, credit_window=5).credit_dest == 5


# -- sender and receiver (12.2 - 12.4, 14.2) -----------------------------------------------


def test_example_14_2_a_slow_destination_waits_and_the_others_go_on():
    world = World(server_kw={"credit_dest": 2})
    world.slow["server"].add("s1")
    for msg in ("a", "b", "c", "d"):
        world.client.send_message("s1", A(msg))
    world.client.send_message("s2", A("x"))
    out = written(world.client)
    assert out == [(A("m"), A("s1"), A("a")), (A("m"), A("s1"), A("b")), (A("m"), A("s2"), A("x"))]
    assert world.client.waiting() == 2
    credit = world.client.session.credit
    assert credit.out_dest == {A("s1"): 2, A("s2"): 1} and credit.out_count == 3
    for f in out:
        world.server.receive_data(frame(f))
    world.collect()
    # x was returned; 1 is half of credit_dest (rounded up): a grant at once.
    grants = [f for f in written(world.server) if f[0] == A("credit")]
    size_x = len(encode((A("m"), A("s2"), A("x")), minor_version=1))
    assert grants == [(A("credit"), [(A("s2"), 1)], size_x)]
    world.client.receive_data(frame(grants[0]))
    world.collect()
    assert credit.out_dest == {A("s1"): 2} and world.client.waiting() == 2
    assert written(world.client) == []  # s1 has no credit yet
    world.release("server", "s1")
    assert world.got["server"] == [("s1", A("a")), ("s1", A("b")), ("s2", A("x")), ("s1", A("c")), ("s1", A("d"))]
    world.release("server", "s1")
    world.timers()
    assert world.client.waiting() == 0
    assert credit.out_count == credit.out_bytes == 0 and credit.out_dest == {}
    s = world.server.session.credit
    assert s.in_count == s.in_bytes == 0 and s.in_dest == {}


def test_the_message_window_holds_all_destinations_and_order_is_kept_per_destination():
    world = World(server_kw={"credit_window": 3, "credit_dest": 3})
    for dest in ("s1", "s1", "s2", "s3", "s2", "s1"):
        world.client.send_message(dest, A("m"))
    world.slow["server"].update({"s1", "s2", "s3"})
    world.move_all()
    assert len(world.got["server"]) == 3 and world.client.waiting() == 3
    for name in ("s1", "s2", "s3"):
        world.release("server", name)
    world.timers()
    assert [d for d, _ in world.got["server"]] == ["s1", "s1", "s2", "s3", "s2", "s1"]


def test_the_byte_window_lets_one_big_frame_go_alone():
    world = World(server_kw={"credit_bytes": 100})
    world.slow["server"].add("s1")
    world.client.send_message("s1", b"x" * 500)  # bigger than the window: alone
    world.client.send_message("s1", b"y")
    world.move_all()
    assert [p for _, p in world.got["server"]] == [b"x" * 500] and world.client.waiting() == 1
    world.release("server", "s1")
    world.timers()
    assert [p for _, p in world.got["server"]] == [b"x" * 500, b"y"]


def test_a_waiting_message_is_checked_when_sent_and_a_link_waits_behind_messages():
    from pyfabric.protocol import LocalProtocolError

    world = World(server_kw={"credit_dest": 1})
    world.slow["server"].add("s1")
    world.client.send_message("s1", 1)
    world.client.send_message("s1", 2)  # waits
    with pytest.raises(LocalProtocolError):
        world.client.send_message("s1", object())  # cannot be encoded: refused at once
    assert world.client.waiting() == 1
    world.move_all()
    world.release("server", "s1")
    world.timers()
    assert [p for _, p in world.got["server"]] == [1, 2]


def test_a_waiting_message_without_pids_is_encoded_once_and_one_with_a_pid_at_issue(monkeypatch):
    from pyfabric.protocol import _commands

    calls: list[object] = []

    def counting_encode(term, **kw):
        if term[0] == A("m"):
            calls.append(term[-1])
        return encode(term, **kw)

    monkeypatch.setattr(_commands, "encode", counting_encode)
    world = World(server_kw={"credit_dest": 1})
    world.slow["server"].add("s1")
    local = world.client.pids.new()
    world.client.send_message("s1", 1)  # goes at once
    world.client.send_message("s1", (A("n"), 2))  # waits: encoded once, kept
    world.client.send_message("s1", (A("from"), local))  # waits: checked now, encoded again when issued
    assert world.client.waiting() == 2 and len(calls) == 3
    assert local not in world.client.session.export_ids  # the check exported nothing
    world.move_all()
    world.release("server", "s1")
    world.timers()
    world.release("server", "s1")
    world.timers()
    payloads = [p for _, p in world.got["server"]]
    assert payloads[:2] == [1, (A("n"), 2)] and payloads[2][0] == A("from")
    assert local in world.client.session.export_ids  # exported by the frame that carried it
    assert len(calls) == 4  # 1, 2 once each; the pid's message at the check and at issue
    assert world.client.waiting() == 0


def test_a_returned_credit_for_undelivered_messages_comes_back_at_once():
    world = World(server_kw={"credit_dest": 1})
    world.answer["s1"] = "noproc"  # the runtime finds no such process
    for n in range(5):
        world.client.send_message("s1", n)
    world.move_all()
    world.timers()
    world.move_all()
    assert world.client.waiting() == 0 and world.client.session.credit.out_count == 0


def test_credit_exceeded_is_dropped_and_returned():
    world = World(server_kw={"credit_dest": 1})
    world.slow["server"].add("s1")
    world.client.send_message("s1", 1)
    world.move_all()
    # A broken sender ignores its window: a second frame to s1.
    world.server.receive_data(frame((A("m"), A("s1"), 2)))
    world.collect()
    assert world.dropped("server") == ["credit_exceeded"]
    assert world.got["server"] == [("s1", 1)]
    out = written(world.server)
    assert [f[:2] for f in out if f[0] == A("error")] == [(A("error"), b"credit_exceeded")]
    # Returned at once (1 is half of credit_dest 1, rounded up: the grant is due now).
    grant = [f for f in out if f[0] == A("credit")]
    assert grant == [(A("credit"), [(A("s1"), 1)], len(encode((A("m"), A("s1"), 2), minor_version=1)))]


@pytest.mark.parametrize(
    "term",
    [
        (A("credit"), [(A("s1"), 2)], 0),  # more than outstanding to s1
        (A("credit"), [], 10**6),  # more bytes than outstanding
        (A("credit"), A("bad"), 0),
        (A("credit"), [(A("s1"), 0)], 0),
        (A("credit"), [[1, 2]], 0),
    ],
)
def test_credit_overflow_is_clamped_and_reported(term):
    world = World()
    world.slow["server"].add("s1")
    world.client.send_message("s1", 1)
    world.move_all()
    world.client.receive_data(frame(term))
    world.collect()
    assert world.dropped("client") == ["credit_overflow"]
    credit = world.client.session.credit
    assert credit.out_count >= 0 and credit.out_bytes >= 0 and all(v > 0 for v in credit.out_dest.values())


def test_a_credit_frame_without_the_feature_is_unknown():
    world = World(features=FEATURES - {"credit"})
    world.client.receive_data(frame((A("credit"), [], 0)))
    world.collect()
    assert world.dropped("client") == ["unknown_frame"]


# -- across a resume (12.5) ---------------------------------------------------------------


def test_waiting_frames_and_returns_made_while_disconnected_survive_a_resume():
    world = World(server_kw={"credit_dest": 2})
    world.slow["server"].add("s1")
    for n in range(6):
        world.client.send_message("s1", n)
    world.move_all()
    assert world.client.waiting() == 4
    world.cut()
    assert world.done.resumed
    world.release("server", "s1")  # returns made while the new connection is up
    for _ in range(5):
        world.release("server", "s1")
        world.timers()
    assert [p for _, p in world.got["server"]] == list(range(6))


step = st.tuples(st.integers(0, 3), st.integers(0, 6), st.floats(0, 1), st.floats(0, 1), st.booleans(), st.booleans())


@settings(max_examples=60 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=10), st.integers(1, 4), st.integers(1, 40))
def test_fuzz_cuts_and_slow_mailboxes_lose_duplicate_and_reorder_nothing(steps, credit_dest, credit_bytes):
    world = World(server_kw={"credit_dest": credit_dest, "credit_window": credit_dest * 2, "credit_bytes": credit_bytes}, ack_every=3)
    sent: dict[str, list[int]] = {"s1": [], "s2": [], "s3": []}
    n = 0
    for dest_i, count, frac_c, frac_s, cut, slow in steps:
        dest = ("s1", "s2", "s3")[dest_i % 3]
        for _ in range(count):
            world.client.send_message(dest, n)
            sent[dest].append(n)
            n += 1
        (world.slow["server"].add if slow else world.slow["server"].discard)(dest)
        if cut:
            c_len, s_len = world.client.pending_output(), world.server.pending_output()
            world.cut(int(c_len * frac_c), int(s_len * frac_s))
            assert world.done.resumed
        else:
            world.move_all()
        world.release("server", ("s1", "s2", "s3")[(dest_i + 1) % 3])
        world.timers()
    world.slow["server"].clear()
    for _ in range(n + 10):
        world.release("server", "s1")
        world.timers()
        if not world.client.waiting():
            break
    got: dict[str, list[int]] = {"s1": [], "s2": [], "s3": []}
    for dest, payload in world.got["server"]:
        got[dest].append(payload)
    assert got == sent
    assert not [e for side in world.events.values() for e in side if isinstance(e, (FrameDropped, MessagesUndelivered))]
    credit = world.client.session.credit
    assert credit.out_count == 0 and credit.out_dest == {}


# -- confirmed sends (11.8) -----------------------------------------------------------------


def results(world, side="client") -> list:
    return [(e.ref, e.error) for e in world.events[side] if isinstance(e, SendResult)]


def test_confirmed_sends_are_answered_ok_or_with_a_code():
    world = World()
    world.answer["s2"] = "noproc"
    r1 = world.client.send_confirmed("s1", A("hi"))
    r2 = world.client.send_confirmed("s2", A("lost"))
    r3 = world.client.send_confirmed("nope", A("refused"))  # not allowed by the server's policy
    r4 = world.client.send_confirmed(A("s1"), 1)
    world.move_all()
    assert (r1, r2, r3, r4) == (1, 2, 3, 4)
    assert sorted(results(world)) == [(1, None), (2, "noproc"), (3, "not_allowed"), (4, None)]
    # A refused mc counts as a dropped frame, but its mc_result replaces the error frame.
    assert world.dropped("server") == ["not_allowed"]
    assert not [e for e in world.events["client"] if type(e).__name__ == "PeerError"]
    assert world.client.session.confirms == {}


def test_the_mc_frame_is_m_plus_a_ref():
    world = World()
    world.client.send_confirmed("s1", A("hi"))
    assert written(world.client) == [(A("mc"), 1, A("s1"), A("hi"))]


def test_confirmed_send_needs_acks():
    world = World(features=FEATURES - {"acks"})
    with pytest.raises(FeatureNotSupported):
        world.client.send_confirmed("s1", 1)
    assert world.client.data_to_send() == b""


@pytest.mark.parametrize(
    "term, code",
    [
        ((A("mc"), 0, A("s1"), 1), "unknown_frame"),
        ((A("mc"), A("x"), A("s1"), 1), "unknown_frame"),
        ((A("mc_result"), 99, A("ok")), "unknown_frame"),
    ],
)
def test_bad_confirmed_frames_are_unknown(term, code):
    world = World()
    world.server.receive_data(frame(term))
    world.collect()
    assert world.dropped("server") == [code]


def test_a_bad_result_is_unknown_and_the_send_stays_pending():
    world = World()
    world.client.send_confirmed("s1", 1)
    world.client.data_to_send()
    world.client.receive_data(frame((A("mc_result"), 1, A("maybe"))))
    world.collect()
    assert world.dropped("client") == ["unknown_frame"] and 1 in world.client.session.confirms


def test_results_survive_a_cut_and_an_ended_session_fails_the_waiting_ones():
    world = World()
    world.client.send_confirmed("s1", 1)
    world.cut(None, 0)  # the server delivered it; its result is lost in the cut
    assert world.done.resumed
    world.move_all()
    assert results(world) == [(1, None)]
    # Now a confirmed send whose session ends unanswered.
    world.client.send_confirmed("s1", 2)
    world.client.data_to_send()
    world.client.connection_lost()
    world.collect()
    report = world.client.session.undelivered("session_expired", None)
    assert report.confirms == (2,) and report.messages[0].confirmed and report.messages[0].state == "unconfirmed"


def test_max_confirms_makes_further_confirmed_sends_wait():
    world = World(client_kw={"max_confirms": 2})
    world.answer["s1"] = None
    for n in range(5):
        world.client.send_confirmed("s1", n)
    assert len(world.client.session.confirms) == 2 and world.client.waiting() == 3
    world.client.send_message("s2", A("plain"))  # other sends are not held back
    assert world.client.waiting() == 3
    assert decode(world.client.session.outbox.frames[-1][0]) == (A("m"), A("s2"), A("plain"))
    world.move_all()
    world.timers()
    assert sorted(results(world)) == [(n, None) for n in range(1, 6)]


# -- the pending queue (12.6, 11.4) ----------------------------------------------------------


@settings(max_examples=200 * SCALE, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.booleans()), max_size=60), st.sets(st.sampled_from("abcd")),
       st.integers(0, 10))
def test_pending_issues_in_order_per_destination_and_never_lets_a_blocked_one_through(adds, blocked, room):
    from pyfabric.protocol._pending import CONN, DEST, ISSUED, STOP, Pending

    queue = Pending()
    for n, (key, credited) in enumerate(adds):
        queue.add(key, (key, n, credited))
    issued: list[tuple[str, int, bool]] = []
    budget = {"room": room, "conn": 1}

    def attempt(command):
        key, _n, credited = command
        if budget["room"] == 0:
            return STOP
        if key in blocked:
            return DEST
        if budget["conn"] and credited and len(issued) % 3 == 2:
            return CONN  # a connection-wide limit for this kind only, this time
        budget["room"] -= 1
        issued.append(command)
        return ISSUED

    queue.pump(attempt)
    for key in "abcd":  # one destination's commands leave in issue order, never past a waiting one
        mine = [c[1] for c in adds_with_index(adds) if c[0] == key]
        out = [c[1] for c in issued if c[0] == key]
        assert out == mine[: len(out)]
        assert key not in blocked or not out
    assert len(issued) <= room
    assert len(queue) == len(adds) - len(issued)
    for key in blocked:
        queue.unblock(key)
    blocked.clear()
    budget.update(room=len(adds), conn=0)  # room and credit for everything now
    queue.pump(attempt)
    assert len(queue) == 0 and sorted(c[1] for c in issued) == list(range(len(adds)))
    for key in "abcd":
        assert [c[1] for c in issued if c[0] == key] == [n for k, n in adds_with_index(adds) if k == key]
    assert queue.take_all() == []


def adds_with_index(adds):
    return [(key, n) for n, (key, _c) in enumerate(adds)]


def test_admit_fitting_counts_only_a_frame_within_every_window_and_admit_counts_any():
    """``Credit.admit_fitting`` (the fused m path) is ``fits`` then ``admit`` in one step:
    nothing counted for a frame over a window; ``admit`` still counts it and says so."""
    from pyfabric.protocol._credit import Credit

    credit = Credit((3, 100, 2), (3, 100, 2))
    assert credit.admit_fitting(A("a"), 40) and credit.admit_fitting(A("a"), 40)
    counts = (credit.in_count, credit.in_bytes, dict(credit.in_dest))
    assert counts == (2, 80, {A("a"): 2})
    assert not credit.admit_fitting(A("a"), 1)  # credit_dest used up
    assert not credit.admit_fitting(A("b"), 30)  # the byte window
    assert (credit.in_count, credit.in_bytes, dict(credit.in_dest)) == counts
    assert credit.admit_fitting(A("b"), 20)
    assert not credit.admit_fitting(A("c"), 0)  # the message window
    assert credit.admit(A("c"), 5) is False  # counted anyway: credit_exceeded
    assert (credit.in_count, credit.in_bytes, credit.in_dest[A("c")]) == (4, 105, 1)
    fresh = Credit((3, 100, 2), (3, 100, 2))
    assert fresh.admit(A("a"), 500) is True  # a frame bigger than the byte window goes alone
    assert fresh.in_bytes == 500
