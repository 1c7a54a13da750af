"""Reconnection and session resume (docs/protocol.md section 7), Python client <-> server."""

from __future__ import annotations

from typing import Any

import pytest
from transport_helpers import (
    DOWN,
    NOCONNECTION,
    PONG,
    PROCESS,
    SECRET,
    WAIT,
    Relay,
    arun,
    connect,
    ping,
    restart_serve,
    served,
    start_server,
    wait_for,
)

from pyfabric import ANY, Atom, NotConnected, Pid, ProcessExit

CUSTOM = (Atom("custom"), 42)


def drop_from_server(server) -> None:
    """Kill the client's TCP connection from the server side (no FIN handshake)."""
    (connection,) = server.connections()
    connection.abort()


def drop_from_client(client) -> None:
    client.drop_connection()


async def keeper(proc: Any) -> None:
    """Keeps the pids it is given; ``(tell, N)`` sends N to every kept pid."""
    kept: list[Pid] = []
    while True:
        msg = await proc.receive()
        if isinstance(msg, Pid):
            kept.append(msg)
            proc.send(msg, (Atom("kept"), len(kept), msg))
        elif msg[0] == Atom("tell"):
            for pid in kept:
                proc.send(pid, (Atom("told"), msg[1]))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("side", ["server", "client"])
def test_dropped_connection_resumes_session(side: str, loop: str) -> None:
    async def body() -> None:
        server = await start_server(allowed=("ping", "keeper"))
        server.spawn(keeper, name="keeper")
        client = await connect(server)
        states: list[str] = []
        client.add_state_listener(states.append)
        try:
            ping_proxy = await client.whereis("ping")
            box = client.mailbox()
            client.send("keeper", box.pid)
            assert await box.receive(timeout=WAIT) == (Atom("kept"), 1, box.pid)
            (drop_from_server if side == "server" else drop_from_client)(server if side == "server" else client)
            await wait_for(lambda: states[-1:] == ["connected"])
            assert states == ["reconnecting", "connected"]
            assert client.reconnects == 1
            # Proxies keep their identity both ways.
            client.send(ping_proxy, (box.pid, "after"))
            assert await box.receive(timeout=WAIT) == (ping_proxy, (PONG, "after"))
            assert await client.whereis("ping") == ping_proxy
            server.send("keeper", (Atom("tell"), 1))
            assert await box.receive(timeout=WAIT) == (Atom("told"), 1)
            client.send("keeper", box.pid)
            assert await box.receive(timeout=WAIT) == (Atom("kept"), 2, box.pid)
            assert server.statistics()["connections"] == 1
            box.close()
        finally:
            await client.close()
            await server.close()

    arun(body, loop=loop)


def test_sends_while_disconnected_wait_are_queued_and_delivered() -> None:
    async def body() -> None:
        server = await start_server()
        client = await connect(server, when_disconnected="wait")
        try:
            ping_proxy = await client.whereis("ping")
            box = client.mailbox()

            def on_state(state: str) -> None:
                if state == "reconnecting":  # runs synchronously: surely disconnected
                    for i in range(5):
                        client.send(ping_proxy, (box.pid, i))
                    client.send("ping", (box.pid, "by name"))
                    assert client.statistics()["pending_sends"] == 6

            client.add_state_listener(on_state)
            drop_from_server(server)
            for i in range(5):
                assert await box.receive(timeout=WAIT) == (ping_proxy, (PONG, i))
            assert await box.receive(timeout=WAIT) == (ping_proxy, (PONG, "by name"))
            assert client.statistics()["pending_sends"] == 0
            await client.drain()
            box.close()
        finally:
            await client.close()
            await server.close()

    arun(body)


def test_sends_while_disconnected_error_raise_not_connected() -> None:
    async def body() -> None:
        server = await start_server()
        client = await connect(server, when_disconnected="error")
        errors: list[Exception] = []
        try:
            ping_proxy = await client.whereis("ping")
            box = client.mailbox()

            def on_state(state: str) -> None:
                if state == "reconnecting":
                    for dest in (ping_proxy, "ping"):
                        try:
                            client.send(dest, (box.pid, 0))
                        except NotConnected as exc:
                            errors.append(exc)

            states: list[str] = []
            client.add_state_listener(on_state)
            client.add_state_listener(states.append)
            drop_from_server(server)
            await wait_for(lambda: states == ["reconnecting", "connected"])
            assert len(errors) == 2
            client.send(ping_proxy, (box.pid, "now"))
            assert await box.receive(timeout=WAIT) == (ping_proxy, (PONG, "now"))
            assert box.qsize() == 0
            box.close()
        finally:
            await client.close()
            await server.close()

    arun(body)


def test_bounded_queue_while_disconnected() -> None:
    async def body() -> None:
        server = await start_server()
        client = await connect(server, max_pending=3)
        outcomes: list[Any] = []
        try:
            box = client.mailbox()

            def on_state(state: str) -> None:
                if state == "reconnecting":
                    for i in range(5):
                        try:
                            client.send("ping", (box.pid, i))
                            outcomes.append(i)
                        except NotConnected:
                            outcomes.append("full")

            client.add_state_listener(on_state)
            drop_from_server(server)
            for i in range(3):
                assert (await box.receive(timeout=WAIT))[1] == (PONG, i)
            assert outcomes == [0, 1, 2, "full", "full"]
            box.close()
        finally:
            await client.close()
            await server.close()

    arun(body)


def test_deaths_while_disconnected_are_reported_after_resume() -> None:
    """DEAD notices both ways for processes that end while the connection is down."""

    async def body() -> None:
        server = await start_server(allowed=("ping", "doomed"))

        async def doomed(proc):
            reason = await proc.receive()
            raise ProcessExit(reason)

        doomed_pid = server.spawn(doomed, name="doomed")
        client = await connect(server, backoff_initial=0.3, backoff_max=0.3)
        try:
            doomed_proxy = await client.whereis("doomed")
            box = client.mailbox()
            client.send("ping", (box.pid, 0))
            await box.receive(timeout=WAIT)
            box_proxy = next(iter(server.node.proxies()))
            watch_server = server.mailbox()
            sref = watch_server.monitor(box_proxy)
            watch_client = client.mailbox()
            cref = watch_client.monitor(doomed_proxy)

            drop_from_client(client)
            # Both sides know the connection is gone (frames in flight when a connection
            # drops are not replayed in version 1, so wait for that).
            await wait_for(
                lambda: client.state == "reconnecting" and server.statistics()["sessions_waiting_resume"] == 1
            )
            server.send(doomed_pid, CUSTOM)  # dies on the server while disconnected
            box.close(CUSTOM)  # dies on the client while disconnected
            assert await watch_client.receive(timeout=WAIT) == (DOWN, cref, PROCESS, doomed_proxy, CUSTOM)
            assert await watch_server.receive(timeout=WAIT) == (DOWN, sref, PROCESS, box_proxy, CUSTOM)
            assert client.reconnects == 1
            watch_server.close()
            watch_client.close()
        finally:
            await client.close()
            await server.close()

    arun(body)


def test_failed_attempts_then_resume() -> None:
    """The server's port is briefly unreachable: failed attempts do not lose the session."""

    async def body() -> None:
        server = await start_server(allowed=("ping", "doomed"))
        port = server.port
        client = await connect(server)
        try:
            ping_proxy = await client.whereis("ping")
            box = client.mailbox()
            failures = 0
            # Refuse new connections for a while (the server is "full"), then allow them.
            server.max_connections = 0
            states: list[str] = []
            client.add_state_listener(states.append)
            drop_from_server(server)
            await wait_for(lambda: server.connections_refused >= 2)
            client.send(ping_proxy, (box.pid, "queued"))
            server.max_connections = 10
            await wait_for(lambda: states == ["reconnecting", "connected"])
            assert await box.receive(timeout=WAIT) == (ping_proxy, (PONG, "queued"))
            assert await client.whereis("ping") == ping_proxy
            assert states == ["reconnecting", "connected"] and port == server.port and failures == 0
            box.close()
        finally:
            await client.close()
            await server.close()

    arun(body)


def test_server_restart_same_port_session_lost() -> None:
    async def body() -> None:
        server = await start_server()
        port = server.port
        client = await connect(server)
        states: list[str] = []
        client.add_state_listener(states.append)
        server2 = None
        try:
            old_ping = await client.whereis("ping")
            async with client.mailbox() as box:
                ref = box.monitor(old_ping)
                await server.close()
                # While it reconnects the client keeps its session (proxies alive).
                await wait_for(lambda: client.state == "reconnecting")
                assert client.node.is_alive(old_ping)
                server2 = await restart_serve(port, SECRET, allowed=("ping",))
                server2.spawn(ping, name="ping")
                await wait_for(lambda: states[-1:] == ["connected"])
                assert states == ["reconnecting", "connected"]
                assert await box.receive(timeout=WAIT) == (DOWN, ref, PROCESS, old_ping, NOCONNECTION)
                new_ping = await client.whereis("ping")
                assert new_ping is not None and new_ping != old_ping
                client.send(new_ping, (box.pid, "new"))
                assert await box.receive(timeout=WAIT) == (new_ping, (PONG, "new"))
                client.send(old_ping, (box.pid, "void"))  # a dead proxy: a no-op
        finally:
            await client.close()
            if server2 is not None:
                await server2.close()
            await server.close()

    arun(body)


def test_server_restart_old_proxies_die_noconnection() -> None:
    async def body() -> None:
        server = await start_server()
        port = server.port
        client = await connect(server)
        server2 = None
        try:
            old_ping = await client.whereis("ping")
            async with client.mailbox() as box:
                ref = box.monitor(old_ping)
                # Drop the connection with the server's processes still alive, then restart
                # the server: the session cannot be resumed.
                server.max_connections = 0  # refuse the reconnection while we restart
                drop_from_server(server)
                await wait_for(lambda: client.state == "reconnecting")
                await server.close()
                server2 = await restart_serve(port, SECRET, allowed=("ping",))
                server2.spawn(ping, name="ping")
                down = await box.receive((DOWN, ref, ANY, ANY, ANY), timeout=WAIT)
                assert down == (DOWN, ref, PROCESS, old_ping, NOCONNECTION)
                await wait_for(lambda: client.state == "connected")
                assert await client.whereis("ping") not in (None, old_ping)
        finally:
            await client.close()
            if server2 is not None:
                await server2.close()
            await server.close()

    arun(body)


def test_client_gives_up_on_authentication_error() -> None:
    async def body() -> None:
        server = await start_server()
        port = server.port
        client = await connect(server)
        server2 = None
        try:
            old_ping = await client.whereis("ping")
            async with client.mailbox() as box:
                ref = box.monitor(old_ping)
                server.max_connections = 0
                drop_from_server(server)
                await wait_for(lambda: client.state == "reconnecting")
                await server.close()
                server2 = await restart_serve(port, b"another secret", allowed=("ping",))
                await wait_for(lambda: client.state == "closed")
                assert await box.receive(timeout=WAIT) == (DOWN, ref, PROCESS, old_ping, NOCONNECTION)
                with pytest.raises(NotConnected):
                    client.send("ping", 1)
                with pytest.raises(NotConnected):
                    await client.wait_connected(1)
        finally:
            await client.close()
            if server2 is not None:
                await server2.close()
            await server.close()

    arun(body, allow_errors_from=("pyfabric.client",))


def test_server_session_expires_without_resume() -> None:
    async def body() -> None:
        async with served(session_timeout=0.1) as server:
            client = await connect(server, reconnect=False)
            box = client.mailbox()
            client.send("ping", (box.pid, 0))
            await box.receive(timeout=WAIT)
            box_proxy = next(iter(server.node.proxies()))
            with server.mailbox() as watcher:
                ref = watcher.monitor(box_proxy)
                drop_from_server(server)
                assert await watcher.receive(timeout=WAIT) == (DOWN, ref, PROCESS, box_proxy, NOCONNECTION)
            await wait_for(lambda: client.state == "closed")
            assert server.statistics()["sessions"] == 0
            await client.close()

    arun(body)


def test_state_listener_and_wait_connected_after_close() -> None:
    async def body() -> None:
        async with served() as server:
            client = await connect(server)
            states: list[str] = []
            client.add_state_listener(states.append)
            client.add_state_listener(lambda s: 1 / 0)  # a failing listener is only logged
            await client.close()
            await client.close()  # idempotent
            assert states == ["closed"]
            with pytest.raises(NotConnected):
                await client.wait_connected()

    arun(body, allow_errors_from=("pyfabric.client",))


def test_resume_takes_over_a_half_open_server_connection() -> None:
    """The server has not noticed the old connection died when the client resumes."""

    async def body() -> None:
        server = await start_server()
        relay = await Relay(server.port).__aenter__()
        client = await connect(relay.port)
        try:
            ping_proxy = await client.whereis("ping")
            box = client.mailbox()
            client.send(ping_proxy, (box.pid, 0))
            await box.receive(timeout=WAIT)
            (old_connection,) = server.connections()
            relay.freeze()  # the server will not see the EOF
            states: list[str] = []
            client.add_state_listener(states.append)
            drop_from_client(client)
            await wait_for(lambda: states == ["reconnecting", "connected"])
            assert client.reconnects == 1
            client.send(ping_proxy, (box.pid, "resumed"))
            assert await box.receive(timeout=WAIT) == (ping_proxy, (PONG, "resumed"))
            await wait_for(lambda: old_connection not in server.connections())
            assert server.statistics()["connections"] == 1
            client.send(ping_proxy, (box.pid, "still"))
            assert await box.receive(timeout=WAIT) == (ping_proxy, (PONG, "still"))
            box.close()
        finally:
            await client.close()
            await relay.__aexit__(None, None, None)
            await server.close()

    arun(body)


def test_dead_lost_in_the_cut_arrives_after_the_resume() -> None:
    """A DEAD written just before the connection died is resent after the resume
    (docs/protocol.md section 7), so the server's monitor still fires."""

    async def body() -> None:
        server = await start_server(allowed=("ping", "watcher"))
        relay = await Relay(server.port).__aenter__()
        client = await connect(relay.port)
        try:
            async with server.mailbox("watcher") as watcher:
                box = client.mailbox()
                client.send("watcher", box.pid)
                proxy = await watcher.receive(timeout=WAIT)
                ref = watcher.monitor(proxy)
                relay.freeze()  # from now on nothing the client writes arrives
                sent = client.statistics()["bytes_out"]
                box.close(CUSTOM)
                await wait_for(lambda: client.statistics()["bytes_out"] > sent)  # the DEAD, lost
                states: list[str] = []
                client.add_state_listener(states.append)
                drop_from_client(client)
                await wait_for(lambda: states == ["reconnecting", "connected"])
                down = await watcher.receive((DOWN, ref, ANY, ANY, ANY), timeout=WAIT)
                assert down == (DOWN, ref, PROCESS, proxy, CUSTOM)
        finally:
            await client.close()
            await relay.__aexit__(None, None, None)
            await server.close()

    arun(body)
