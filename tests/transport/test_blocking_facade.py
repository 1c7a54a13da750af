"""The blocking facade (pyfabric.connect / pyfabric.start_server): threads, timeouts, closing."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
from transport_helpers import HOST, PONG, SECRET, WAIT, ping

import pyfabric
from pyfabric import Atom, AuthenticationError, ConnectFailed, ReceiveTimeout


@pytest.fixture
def server():
    srv = pyfabric.start_server(HOST, 0, SECRET, allowed=["ping"], handshake_timeout=5)
    srv.spawn(ping, name="ping")
    yield srv
    srv.close()


@pytest.fixture
def client(server):
    c = pyfabric.connect(HOST, server.port, SECRET, backoff_initial=0.02, backoff_max=0.2)
    yield c
    c.close()


def test_seed_example_blocking(server, client) -> None:
    ping_pid = client.whereis("ping")
    assert ping_pid is not None
    with client.mailbox() as box:
        box.send(ping_pid, (box.pid, (Atom("payload"), "abababa")))
        sender, reply = box.receive(timeout=WAIT)
        assert sender == ping_pid and hash(sender) == hash(ping_pid) and {ping_pid: 1}[sender] == 1
        assert reply == (PONG, (Atom("payload"), "abababa"))
        client.send(sender, (box.pid, 2))
        assert box.receive(timeout=WAIT) == (ping_pid, (PONG, 2))
        client.send("ping", (box.pid, 3))
        assert box.receive(timeout=WAIT) == (ping_pid, (PONG, 3))
        client.send(("ping", server.whereis_local("ping").node.name), (box.pid, 4))
        assert box.receive(timeout=WAIT) == (ping_pid, (PONG, 4))
    assert client.state == "connected" and client.mode == "extended"
    assert client.whereis("nope") is None


def test_threads_send_and_receive_concurrently(server, client) -> None:
    ping_pid = client.whereis("ping")
    errors: list[BaseException] = []
    n_threads, n_msgs = 6, 150

    def worker(i: int) -> None:
        try:
            with client.mailbox() as box:
                for n in range(n_msgs):
                    client.send(ping_pid if n % 2 else "ping", (box.pid, (i, n)))
                for n in range(n_msgs):
                    assert box.receive(timeout=WAIT) == (ping_pid, (PONG, (i, n)))
                # and interleaved round trips
                for n in range(20):
                    box.send(ping_pid, (box.pid, n))
                    assert box.receive(timeout=WAIT)[1] == (PONG, n)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_blocking_call_from_the_facade_loop_raises(server, client) -> None:
    results: list[Any] = []
    done = threading.Event()

    async def proc_fn(proc: Any) -> None:
        calls = (lambda: client.whereis("ping"), lambda: client.send("ping", 1), lambda: box.receive(timeout=1), client.close)
        for call in calls:
            try:
                call()
                results.append("no error")
            except RuntimeError as exc:
                results.append(str(exc))
        done.set()

    with client.mailbox() as box:
        client.spawn(proc_fn)
        assert done.wait(WAIT)
    assert len(results) == 4 and all("loop thread" in r for r in results), results
    assert client.whereis("ping") is not None  # the facade still works


def test_receive_timeout_raises(client) -> None:
    with client.mailbox() as box:
        with pytest.raises(ReceiveTimeout):
            box.receive(timeout=0.05)
        with pytest.raises(ReceiveTimeout):
            box.receive(lambda m: m == "never", timeout=0)
        assert box.alive


def test_close_is_idempotent_and_context_managers(server) -> None:
    threads_before = threading.active_count()
    with pyfabric.connect(HOST, server.port, SECRET) as c:
        with c.mailbox() as box:
            c.send("ping", (box.pid, 1))
            assert box.receive(timeout=WAIT)[1] == (PONG, 1)
        assert not box.alive
        box.close()  # again: a no-op
    assert c.state == "closed"
    c.close()
    c.close()
    with pytest.raises(RuntimeError):
        c.whereis("ping")
    with pytest.raises(RuntimeError):
        c.mailbox()
    with pyfabric.start_server(HOST, 0, SECRET) as s2:
        port = s2.port
        assert port > 0
    s2.close()
    with pytest.raises(ConnectFailed):
        pyfabric.connect(HOST, port, SECRET, connect_timeout=2)
    assert threading.active_count() == threads_before


def test_connect_errors_leave_no_thread_behind(server) -> None:
    before = threading.active_count()
    with pytest.raises(AuthenticationError):
        pyfabric.connect(HOST, server.port, b"wrong secret")
    with socket.socket() as s:
        s.bind((HOST, 0))
        free_port = s.getsockname()[1]
    with pytest.raises(ConnectFailed):
        pyfabric.connect(HOST, free_port, SECRET)
    assert threading.active_count() == before


def test_blocking_send_waits_for_reconnection(server, client) -> None:
    ping_pid = client.whereis("ping")
    states: list[str] = []
    reconnected = threading.Event()

    def listener(state: str) -> None:
        states.append(state)
        if state == "connected":
            reconnected.set()

    client.add_state_listener(listener)
    with client.mailbox() as box:

        (connection,) = server.connections()
        server.call(connection.abort)
        client.send(ping_pid, (box.pid, "during or after"))
        assert box.receive(timeout=WAIT) == (ping_pid, (PONG, "during or after"))
        assert reconnected.wait(WAIT)
        assert states == ["reconnecting", "connected"]


def test_links_and_monitors_blocking(server, client) -> None:
    async def victim(proc: Any) -> None:
        reason = await proc.receive()
        raise pyfabric.ProcessExit(reason)

    server.spawn(victim, name="victim")
    server_proxy_ok = client.whereis("victim")
    assert server_proxy_ok is None  # not allowed
    pid = server.whereis_local("victim")
    with client.mailbox() as box:
        # Reach the victim through a pid the server ships: ping's reply carries its own pid.
        client.send("ping", (box.pid, 0))
        ping_pid = box.receive(timeout=WAIT)[0]
        ref = box.monitor(ping_pid)
        trapping = client.mailbox()
        trapping.trap_exit = True
        trapping.link(ping_pid)
        assert trapping.trap_exit
        with server.mailbox() as killer:
            killer.exit(server.whereis_local("ping"), Atom("kill"))
        assert box.receive(timeout=WAIT) == (Atom("DOWN"), ref, Atom("process"), ping_pid, Atom("killed"))
        assert trapping.receive(timeout=WAIT) == (Atom("EXIT"), ping_pid, Atom("killed"))
        assert box.demonitor(ref) is False
        trapping.close()
        server.send(pid, Atom("bye"))


@pytest.mark.parametrize("which", ["client", "server"])
def test_close_while_another_thread_waits_in_receive(which: str) -> None:
    srv = pyfabric.start_server(HOST, 0, SECRET, allowed=["ping"])
    cli = pyfabric.connect(HOST, srv.port, SECRET)
    try:
        owner = cli if which == "client" else srv
        box = owner.mailbox()
        outcome: list[BaseException] = []

        def waiter() -> None:
            try:
                box.receive()
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)

        t = threading.Thread(target=waiter)
        t.start()
        owner.close()
        t.join(WAIT)
        assert not t.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], (pyfabric.ProcessExited, RuntimeError)), outcome
    finally:
        cli.close()
        srv.close()


def test_async_client_against_blocking_server(server) -> None:
    import asyncio

    async def main() -> Any:
        async with await pyfabric.aconnect(HOST, server.port, SECRET) as c:
            async with c.mailbox() as box:
                c.send("ping", (box.pid, "mixed"))
                return await box.receive(timeout=WAIT)

    sender, reply = asyncio.run(main())
    assert reply == (PONG, "mixed") and sender.node != server.whereis_local("ping").node


def test_close_from_several_threads_at_once(server) -> None:
    c = pyfabric.connect(HOST, server.port, SECRET)
    errors: list[BaseException] = []

    def closer() -> None:
        try:
            c.close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=closer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert c.state == "closed"
    assert errors == []
