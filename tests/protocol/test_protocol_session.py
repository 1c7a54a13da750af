"""Sessions: the id tables survive a lost connection and are resumed by a new one."""

from __future__ import annotations

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
import pytest


def connect(client, server):
    pair = Pair(client, server)
    client.start()
    pair.pump()
    return pair


def setup_session():
    store = {}
    client = make_conn("client")
    server = make_conn("server", allowed={"echo"}, find_session=store.get)
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
