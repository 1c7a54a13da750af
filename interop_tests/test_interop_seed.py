"""The seed example end to end, both ways: Python client -> Erlang ping server, and Erlang
client -> Python ping server; with the asyncio (``aconnect``/``serve``) and the blocking
(``connect``/``start_server``) APIs. A real ``erl`` runs the harness; a missing one fails."""

from __future__ import annotations

import asyncio

import pytest
from interop_support import HOST, PAYLOAD, PONG, SECRET, WAIT, Harness, erl, erl_session, ping  # noqa: F401

import pyfabric
from pyfabric import ANY, Atom, Pid

SEED = (PAYLOAD, "abababa")


@pytest.fixture(scope="module")
def erl_ping(erl: Harness) -> int:
    """The seed's ping registered on the Erlang node, behind a server allowing it."""
    erl.cmd("{start_demo, [ping]}")
    _server, port = erl.start_server(["ping"])
    return port


def test_async_client_pings_erlang_ping(erl_ping: int) -> None:
    """aconnect + whereis(ping): {Self, {payload,"abababa"}} comes back as {PingProxy, {pong, ...}}; the returned pid answers again."""

    async def body() -> None:
        async with await pyfabric.aconnect(HOST, erl_ping, SECRET) as client:
            assert client.mode == "extended"
            proxy = await client.whereis("ping")
            assert isinstance(proxy, Pid)
            assert await client.whereis(Atom("ping")) == proxy  # one proxy per remote process
            box = client.mailbox()
            client.send(proxy, (box.pid, SEED))
            sender, reply = await box.receive((ANY, ANY), timeout=WAIT)
            assert sender == proxy and sender is not box.pid
            assert reply == (PONG, SEED)
            client.send(sender, (box.pid, "again"))
            assert await box.receive(timeout=WAIT) == (proxy, (PONG, "again"))
            # A message with our own pid nested deep inside travels too.
            box.send(sender, (box.pid, [box.pid, (box.pid,)]))
            assert await box.receive(timeout=WAIT) == (proxy, (PONG, [box.pid, (box.pid,)]))
            box.close()

    asyncio.run(body())


def test_blocking_client_pings_erlang_ping(erl_ping: int) -> None:
    """connect + whereis(ping) from blocking code: pong with the whereis proxy as sender; the returned pid answers again."""
    with pyfabric.connect(HOST, erl_ping, SECRET) as client:
        proxy = client.whereis("ping")
        assert isinstance(proxy, Pid)
        with client.mailbox() as box:
            client.send(proxy, (box.pid, SEED))
            sender, reply = box.receive(timeout=WAIT)
            assert sender == proxy
            assert reply == (PONG, SEED)
            client.send(sender, (box.pid, "again"))
            assert box.receive(timeout=WAIT) == (proxy, (PONG, "again"))
            # Sending by name reaches the same process.
            client.send("ping", (box.pid, 42))
            assert box.receive(timeout=WAIT) == (proxy, (PONG, 42))


def _erlang_client_pings(erl: Harness, port: int) -> None:
    conn = erl.connect(port)
    found = erl.whereis(conn, "ping")
    assert found is not None
    handle, ping_pid = found
    assert erl.cmd(f'{{ping, {conn}, ping, {{payload, "abababa"}}}}') == '{pong,{payload,"abababa"}}'
    # The reply's sender is the same proxy whereis returned; sending to it again works.
    reply = erl.cmd(f"{{call, {{handle, {handle}}}, again, 5000}}")
    assert reply == "{%s,{pong,again}}" % ping_pid
    reply = erl.cmd(f'{{call, {{name, {conn}, ping}}, {{payload, "abababa"}}, 5000}}')
    assert reply == '{%s,{pong,{payload,"abababa"}}}' % ping_pid
    erl.cmd(f"{{close, {conn}}}")


def test_erlang_client_pings_python_async_server(erl: Harness) -> None:
    """serve() with a Python ping registered and allowed: the Erlang harness client (connect, whereis, ping) gets the pong."""

    async def body() -> None:
        async with await pyfabric.serve(HOST, 0, SECRET, allowed=["ping"]) as server:
            server.spawn(ping, name="ping")
            await asyncio.to_thread(_erlang_client_pings, erl, server.port)

    asyncio.run(body())


def test_erlang_client_pings_python_blocking_server(erl: Harness) -> None:
    """start_server() with a Python ping registered and allowed: the Erlang harness client gets the pong, and again from the returned pid."""
    server = pyfabric.start_server(HOST, 0, SECRET, allowed=["ping"])
    try:
        server.spawn(ping, name="ping")
        _erlang_client_pings(erl, server.port)
    finally:
        server.close()
