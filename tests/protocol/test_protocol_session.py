"""Sessions: the id tables survive a lost connection and are resumed by a new one."""

from __future__ import annotations

import pytest
from protocol_testlib import A, Pair, make_conn

from pyfabric.protocol import (
    FEATURES,
    ConnectionClosed,
    HandshakeComplete,
    LocalProtocolError,
    MessageReceived,
    ProxyCreated,
    ProxyDied,
)

_features = FEATURES  # the DEAD-resend tests below run without `acks` (section 7 behaviour)


@pytest.fixture
def without_acks(monkeypatch):
    """Section 7 as an older peer of ours speaks it: sessions without `acks` (with `acks`
    the replay of section 11.5 replaces the DEAD resend: test_protocol_acks.py)."""
    monkeypatch.setattr(__import__(__name__), "_features", FEATURES - {"acks"})


def connect(client, server):
    pair = Pair(client, server)
    client.start()
    pair.pump()
    return pair


def setup_session():
    store = {}
    client = make_conn("client", features=_features)
    server = make_conn("server", allowed={"echo"}, find_session=store.get, features=_features)
    pair = connect(client, server)
    me = client.pids.new()
    client.send_message(A("echo"), me)
    pair.pump()
    events = pair.take("server")
    server_proxy_for_me = [e for e in events if isinstance(e, ProxyCreated)][0].pid
    local = server.pids.new()
    server.send_message(server_proxy_for_me, local)
    pair.pump()
    events = pair.take("client")
    client_proxy = [e for e in events if isinstance(e, ProxyCreated)][0].pid
    return store, pair, me, server_proxy_for_me, local, client_proxy


def test_resume_keeps_ids_and_flushes_pending_deaths():
    store, pair, me, server_proxy_for_me, local, client_proxy = setup_session()
    client, server = pair.client, pair.server
    server.connection_lost()
    client.connection_lost()
    # With a session nothing dies: only the close is reported.
    assert [type(e) for e in server.events()] == [ConnectionClosed]
    assert [type(e) for e in client.events()] == [ConnectionClosed]
    store[server.session.id] = server.session
    # `me` ends while we are disconnected: kept for after the resume.
    client.process_exited(me, A("bye"))
    with pytest.raises(LocalProtocolError):
        client.send_message(client_proxy, 1)

    client2 = make_conn("client", session=client.session, pids=client.pids)
    server2 = make_conn("server", allowed={"echo"}, find_session=store.get, pids=server.pids)
    pair2 = connect(client2, server2)
    (c_done,) = pair2.take("client")
    s_events = pair2.take("server")
    assert isinstance(c_done, HandshakeComplete) and c_done.resumed is True
    assert s_events[0].resumed is True and s_events[0].session_id == c_done.session_id
    assert s_events[1:] == [ProxyDied(server_proxy_for_me, 1, A("bye"))]
    # The client's proxy still addresses the same server process.
    client2.send_message(client_proxy, A("still_here"))
    pair2.pump()
    assert pair2.take("server") == [MessageReceived(local, A("still_here"))]


def test_resume_of_unknown_session_kills_old_proxies():
    store, pair, me, server_proxy_for_me, local, client_proxy = setup_session()
    pair.client.connection_lost()
    pair.client.events()
    client2 = make_conn("client", session=pair.client.session, pids=pair.client.pids)
    server2 = make_conn("server", find_session=store.get)  # the session was never stored
    pair2 = connect(client2, server2)
    events = pair2.take("client")
    assert events[0] == ProxyDied(client_proxy, 1, A("noconnection"))
    assert isinstance(events[1], HandshakeComplete) and events[1].resumed is False
    assert events[1].session_id != pair.client.session.id
    assert client2.session.proxies == {}


def test_expired_session_on_the_server():
    store, pair, me, server_proxy_for_me, local, client_proxy = setup_session()
    pair.server.connection_lost()
    pair.server.events()
    session = pair.server.session
    assert session.expire() == [(server_proxy_for_me, 1)]
    assert session.exports == {} and session.proxies == {}


def test_no_session_feature_no_resume():
    client = make_conn("client", features=FEATURES - {"session"})
    server = make_conn("server")
    pair = connect(client, server)
    (done,) = pair.take("client")
    assert done.session_id is None
    client.connection_lost()
    client2 = make_conn("client", session=client.session, features=FEATURES - {"session"})
    pair2 = connect(client2, make_conn("server"))
    assert pair2.take("client")[0].resumed is False


def test_attached_session_is_not_taken_over():
    store, pair, *_ = setup_session()
    store[pair.server.session.id] = pair.server.session  # still attached to a live connection
    client2 = make_conn("client", session=pair.client.session, pids=pair.client.pids)
    server2 = make_conn("server", find_session=store.get)
    pair2 = connect(client2, server2)
    done = [e for e in pair2.take("client") if isinstance(e, HandshakeComplete)][0]
    assert done.resumed is False


# -- DEAD notices resent after a resume (docs/protocol.md section 7) ----------------------


def split_dead_frames(data):
    from protocol_testlib import split_frames

    from pyfabric.etf import decode

    return [decode(f) for f in split_frames(data) if decode(f)[0] == A("DEAD")]


def resume(pair, store):
    client, server = pair.client, pair.server
    store[server.session.id] = server.session
    client2 = make_conn("client", session=client.session, pids=client.pids, features=_features)
    server2 = make_conn("server", allowed={"echo"}, find_session=store.get, pids=server.pids, features=_features)
    client2.start()
    return Pair(client2, server2)


def client_output_after_resume(pair2):
    """Run the resume handshake by hand; the server's handshake events, and what the
    client writes once established (before the server has seen any of it)."""
    pair2.server.receive_data(pair2.client.data_to_send())  # hello
    pair2.server.events()
    pair2.client.receive_data(pair2.server.data_to_send())  # challenge
    pair2.client.events()
    pair2.server.receive_data(pair2.client.data_to_send())  # response
    s_events = pair2.server.events()
    pair2.client.receive_data(pair2.server.data_to_send())  # auth
    c_events = pair2.client.events()
    assert [type(e) for e in c_events] == [HandshakeComplete] and c_events[0].resumed
    return s_events, pair2.client.data_to_send()


def test_dead_lost_in_the_cut_arrives_after_the_resume(without_acks):
    store, pair, me, server_proxy_for_me, local, client_proxy = setup_session()
    client, server = pair.client, pair.server
    client.process_exited(me, A("bye"))
    lost = client.data_to_send()  # the DEAD was written, but the connection drops first
    assert [d[1] for d in split_dead_frames(lost)] == [(A("pr"), 1)]
    client.connection_lost()
    server.connection_lost()
    client.events(), server.events()
    pair2 = resume(pair, store)
    pair2.pump()
    s_events = pair2.take("server")
    assert s_events[0].resumed is True
    assert s_events[1:] == [ProxyDied(server_proxy_for_me, 1, A("bye"))]


def test_resent_dead_already_received_is_ignored(without_acks):
    store, pair, me, server_proxy_for_me, local, client_proxy = setup_session()
    client, server = pair.client, pair.server
    client.process_exited(me, A("bye"))
    pair.pump()
    assert pair.take("server") == [ProxyDied(server_proxy_for_me, 1, A("bye"))]
    client.connection_lost()
    server.connection_lost()
    client.events(), server.events()
    pair2 = resume(pair, store)
    s_events, after_auth = client_output_after_resume(pair2)
    assert [type(e) for e in s_events] == [HandshakeComplete]
    # The DEAD is sent again: the server already had it.
    assert [d[1] for d in split_dead_frames(after_auth)] == [(A("pr"), 1)]
    pair2.server.receive_data(after_auth)
    assert pair2.server.events() == []  # ignored: that proxy is already dead


def test_dead_resend_is_bounded_and_in_order(without_acks):
    from pyfabric.protocol import RESEND_DEAD

    store, pair, me, server_proxy_for_me, local, client_proxy = setup_session()
    client, server = pair.client, pair.server
    mine = [client.pids.new() for _ in range(RESEND_DEAD + 10)]
    client.send_message(A("echo"), mine)
    pair.pump()
    pair.take("server")
    for pid in mine:
        client.process_exited(pid, A("normal"))
    pair.pump()
    assert len([e for e in pair.take("server") if isinstance(e, ProxyDied)]) == len(mine)
    client.connection_lost()
    server.connection_lost()
    client.events(), server.events()
    # One more ends while disconnected: queued, and sent after the resent ones.
    client.process_exited(me, A("late"))
    pair2 = resume(pair, store)
    _s_events, after_auth = client_output_after_resume(pair2)
    deads = split_dead_frames(after_auth)
    ids = [d[1][1] for d in deads]
    assert len(ids) == RESEND_DEAD
    assert ids[-1] == 1 and deads[-1][2] == A("late")
    # The oldest notices fell out of the window; the newest are resent oldest first.
    expected = [client.session.ended_export_ids[p] for p in mine][-(RESEND_DEAD - 1) :]
    assert ids[:-1] == expected


def test_no_resend_without_a_resume(without_acks):
    store, pair, me, server_proxy_for_me, local, client_proxy = setup_session()
    client = pair.client
    client.process_exited(me, A("bye"))
    pair.pump()
    pair.take("server")
    client.connection_lost()
    client.events()
    client2 = make_conn("client", session=client.session, pids=client.pids, features=_features)
    server2 = make_conn("server", allowed={"echo"}, find_session=store.get, features=_features)  # session not kept
    pair2 = connect(client2, server2)
    assert pair2.take("client")[-1].resumed is False
    assert pair2.take("server")[0].resumed is False  # nothing but the handshake arrived


def test_deferred_commands_are_sent_after_the_handshake():
    from pyfabric.protocol import SendMessage

    store, pair, me, server_proxy_for_me, local, client_proxy = setup_session()
    client, server = pair.client, pair.server
    client.connection_lost()
    server.connection_lost()
    client.events(), server.events()
    client.session.defer(SendMessage(client_proxy, A("queued")))
    client.session.defer(SendMessage(A("echo"), A("by_name")))
    assert client.session.deferred_count() == 2
    pair2 = resume(pair, store)
    pair2.pump()
    pair2.take("client"), pair2.take("server")
    assert pair2.client.send_deferred() == []
    pair2.pump()
    assert pair2.take("server") == [MessageReceived(local, A("queued")), MessageReceived(A("echo"), A("by_name"))]
    assert pair2.client.session.deferred_count() == 0
