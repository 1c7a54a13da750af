"""Reconnection with the session resumed, against a real Erlang node, both directions.

Python client -> Erlang server: the Erlang side drops the server-side socket as if the
network failed (``fabric_peer:disconnect/1``); the Python client reconnects, resumes its
session, and the proxy ``whereis`` gave before still works, is still the same pid, and its
monitor did not fire. Erlang client -> Python server: the Python side drops the socket; the
Erlang client reconnects and resumes, its whereis handle and the Python server's proxies of
Erlang processes keep working.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from interop_support import (  # noqa: F401
    DOWN,
    HOST,
    KILLED,
    PAYLOAD,
    PONG,
    PROCESS,
    QUIET_MS,
    SECRET,
    WAIT,
    Harness,
    erl,
    erl_session,
    ping,
)

import pyfabric
from pyfabric import ANY, Atom, ReceiveTimeout

SEED = (PAYLOAD, "abababa")


def _until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def erl_server(erl: Harness) -> int:
    erl.cmd("{start_demo, [ping]}")
    _server, port = erl.start_server(["ping", "victim"])
    return port


def test_async_client_resumes_after_erlang_drops_connection(erl: Harness, erl_server: int) -> None:
    """aconnect: after the Erlang server drops the socket, the client resumes; the whereis proxy is the same pid and answers."""
    erl.register_victim("victim")

    async def body() -> None:
        async with await pyfabric.aconnect(HOST, erl_server, SECRET, backoff_initial=0.05) as client:
            states: list[str] = []
            client.add_state_listener(states.append)
            proxy = await client.whereis("ping")
            victim = await client.whereis("victim")
            box = client.mailbox()
            ref = box.monitor(victim)
            client.send(proxy, (box.pid, SEED))
            assert await box.receive(timeout=WAIT) == (proxy, (PONG, SEED))

            assert await asyncio.to_thread(erl.drop_server_connections) == 1
            async with asyncio.timeout(10):
                while client.reconnects < 1 or client.state != "connected":
                    await asyncio.sleep(0.02)
            assert states[:2] == ["reconnecting", "connected"]

            # Same proxy, same pid; the Erlang side still knows our mailbox as well.
            assert await client.whereis("ping") == proxy
            client.send(proxy, (box.pid, "again"))
            assert await box.receive(timeout=WAIT) == (proxy, (PONG, "again"))
            # The monitor placed before the drop did not fire, and still works.
            with pytest.raises(ReceiveTimeout):
                await box.receive((DOWN, ANY, ANY, ANY, ANY), timeout=QUIET_MS / 1000)
            await asyncio.to_thread(erl.cmd, "{exit, victim, kill}")
            assert await box.receive(timeout=WAIT) == (DOWN, ref, PROCESS, victim, KILLED)

    asyncio.run(body())


def test_blocking_client_resumes_after_erlang_drops_connection(erl: Harness, erl_server: int) -> None:
    """connect: after the Erlang server drops the socket twice, the client resumes each time with the same proxy."""
    with pyfabric.connect(HOST, erl_server, SECRET, backoff_initial=0.05) as client:
        proxy = client.whereis("ping")
        with client.mailbox() as box:
            for round_ in range(1, 3):
                assert erl.drop_server_connections() == 1
                _until(lambda n=round_: client.statistics()["reconnects"] >= n and client.state == "connected", "reconnect")
                assert client.whereis("ping") == proxy
                client.send(proxy, (box.pid, round_))
                assert box.receive(timeout=WAIT) == (proxy, (PONG, round_))
                client.send("ping", (box.pid, SEED))
                assert box.receive(timeout=WAIT) == (proxy, (PONG, SEED))


def _drop_python_connections(server: pyfabric.BlockingServer) -> int:
    """Abort every client socket of a Python server as a network failure would (sessions are
    kept)."""

    def drop() -> int:
        connections = server.async_server.connections()
        for connection in connections:
            connection.abort()
        return len(connections)

    return server.call(drop)


def test_erlang_client_resumes_after_python_drops_connection(erl: Harness) -> None:
    """The Python server drops the socket: the Erlang client resumes, its whereis handle answers, Python's proxy of an Erlang process still works."""
    server = pyfabric.start_server(HOST, 0, SECRET, allowed=["ping", "registrar"])
    conn = None
    try:
        server.spawn(ping, name="ping")
        registrar = server.mailbox("registrar")
        conn = erl.connect(server.port, reconnect_min="50")
        found = erl.whereis(conn, "ping")
        assert found is not None
        handle, ping_pid = found
        assert erl.cmd(f"{{call, {{handle, {handle}}}, one, 5000}}") == "{%s,{pong,one}}" % ping_pid
        # Give the Python side a proxy of an Erlang collector.
        erl.cmd("{register, coll, collector}")
        reg = erl.whereis(conn, "registrar")
        assert reg is not None
        erl.eval(f"maps:get({reg[0]}, get(handles)) ! {{whereis(coll), hello}}, ok")
        coll_proxy, hello = registrar.receive(timeout=WAIT)
        assert hello == Atom("hello")
        with server.mailbox() as watcher:
            ref = watcher.monitor(coll_proxy)

            assert _drop_python_connections(server) == 1

            def resumed() -> bool:
                info = erl.cmd(f"{{info, {conn}}}")
                return "connects => 2" in info and "state => established" in info

            _until(resumed, "the Erlang client to reconnect")
            assert erl.whereis(conn, "ping") == (handle, ping_pid)
            assert erl.cmd(f"{{call, {{handle, {handle}}}, two, 5000}}") == "{%s,{pong,two}}" % ping_pid
            watcher.send(coll_proxy, Atom("after_resume"))
            assert erl.events(1) == "[{collector,coll,after_resume}]"
            with pytest.raises(ReceiveTimeout):
                watcher.receive(timeout=QUIET_MS / 1000)  # no DOWN: the proxy lived through it
            erl.cmd("{exit, coll, kill}")
            assert watcher.receive(timeout=WAIT) == (DOWN, ref, PROCESS, coll_proxy, KILLED)
    finally:
        if conn is not None:
            erl.cmd_raw(f"{{close, {conn}}}")
        server.close()
