"""Python client <-> Python server: the seed example, names, proxies in both directions, policy."""

from __future__ import annotations

import asyncio

import pytest
from transport_helpers import LOOPS, PONG, WAIT, arun, connect, pair, start_server

from pyfabric import ANY, Atom, Pid


@pytest.mark.parametrize("loop", LOOPS)
def test_seed_example_whereis_and_pid_identity(loop: str) -> None:
    async def body() -> None:
        async with pair() as (_server, client):
            ping = await client.whereis("ping")
            assert isinstance(ping, Pid) and ping.node == client.node.name
            async with client.mailbox() as box:
                client.send(ping, (box.pid, (Atom("payload"), "abababa")))
                sender, reply = await box.receive(timeout=WAIT)
                assert reply == (PONG, (Atom("payload"), "abababa"))
                # Stable identity: the very same proxy, equal, same hash, usable as a key.
                assert sender == ping and hash(sender) == hash(ping)
                assert {ping: "ping"}[sender] == "ping"
                # Send to the returned pid again.
                client.send(sender, (box.pid, 2))
                again, reply = await box.receive(timeout=WAIT)
                assert again == ping and reply == (PONG, 2)
                assert await client.whereis("ping") == ping
                assert await client.whereis(Atom("ping")) == ping

    arun(body, loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_send_by_name_and_by_name_node(loop: str) -> None:
    async def body() -> None:
        async with pair() as (server, client):
            async with client.mailbox() as box:
                client.send("ping", (box.pid, "by name"))
                p1, reply = await box.receive(timeout=WAIT)
                assert reply == (PONG, "by name")
                client.send(Atom("ping"), (box.pid, "by atom"))
                p2, reply = await box.receive(timeout=WAIT)
                assert reply == (PONG, "by atom")
                client.send(("ping", server.node.name.name), (box.pid, "by name node"))
                p3, reply = await box.receive(timeout=WAIT)
                assert reply == (PONG, "by name node")
                client.send((Atom("ping"), server.node.name), (box.pid, 4))
                p4, _ = await box.receive(timeout=WAIT)
                assert p1 == p2 == p3 == p4 == await client.whereis("ping")

    arun(body, loop=loop)




def test_client_mailbox_pid_round_trip_identity() -> None:
    async def body() -> None:
        server = await start_server(allowed=("ping", "keeper"), register_ping=True)
        kept: list[Pid] = []

        async def keeper(proc):
            while True:
                tag, pid, n = await proc.receive((ANY, Pid, int))
                kept.append(pid)
                proc.send(pid, (Atom(tag.name + "_ack"), n, pid))

        server.spawn(keeper, name="keeper")
        try:
            client = await connect(server)
            try:
                async with client.mailbox() as box, client.mailbox() as other:
                    for n in range(3):
                        client.send("keeper", (Atom("box"), box.pid, n))
                        assert await box.receive(timeout=WAIT) == (Atom("box_ack"), n, box.pid)
                    client.send("keeper", (Atom("other"), other.pid, 9))
                    assert await other.receive(timeout=WAIT) == (Atom("other_ack"), 9, other.pid)
                    # One proxy per client process on the server, stable across messages.
                    assert kept[0] == kept[1] == kept[2] != kept[3]
                    assert kept[0].node == server.node.name
                    assert len({kept[0], kept[1], kept[2]}) == 1
                    # The server keeps the proxy and can use it later, unprompted.
                    server.send(kept[0], "later")
                    assert await box.receive(timeout=WAIT) == "later"
            finally:
                await client.close()
        finally:
            await server.close()

    arun(body)


def test_not_allowed_names_refused() -> None:
    async def body() -> None:
        server = await start_server(allowed=("ping", "rex"), register_ping=True)

        async def sink(proc):
            while True:
                msg = await proc.receive()
                got.append(msg)

        got: list[object] = []
        server.spawn(sink, name="secret")
        server.spawn(sink, name="rex")
        try:
            client = await connect(server)
            try:
                assert await client.whereis("secret") is None
                assert await client.whereis("rex") is None  # a system name, even if listed
                assert await client.whereis("nobody") is None
                async with client.mailbox() as box:
                    client.send("secret", (box.pid, 1))
                    client.send(("secret", server.node.name.name), (box.pid, 2))
                    client.send("rex", (box.pid, 3))
                    client.send(("rex", server.node.name), (box.pid, 4))
                    client.send("nobody", (box.pid, 5))
                    # A message sent after them arrives: they were dropped, not delayed.
                    client.send("ping", (box.pid, "after"))
                    assert (await box.receive(timeout=WAIT))[1] == (PONG, "after")
                    await asyncio.sleep(0.05)
                    assert got == []
                    assert client.state == "connected"
            finally:
                await client.close()
        finally:
            await server.close()

    arun(body)


def test_server_reaches_allowed_client_names() -> None:
    """The client's node allows names too: the server side can whereis/send by name."""

    async def body() -> None:
        server = await start_server()
        try:
            client = await connect(server, allowed=("client_svc",))
            try:
                async with client.mailbox("client_svc") as svc, client.mailbox("hidden"):
                    (link,) = server.connections()
                    pid = await link.whereis("client_svc", WAIT)
                    assert pid is not None and pid.node == server.node.name
                    assert await link.whereis("hidden", WAIT) is None
                    server.send(pid, "hello client")
                    assert await svc.receive(timeout=WAIT) == "hello client"
                    link.send(Atom("client_svc"), "by name")
                    assert await svc.receive(timeout=WAIT) == "by name"
            finally:
                await client.close()
        finally:
            await server.close()

    arun(body)


def test_many_messages_in_order_and_large_payload() -> None:
    async def body() -> None:
        async with pair() as (_server, client):
            ping = await client.whereis("ping")
            async with client.mailbox() as box:
                for i in range(2000):
                    client.send(ping, (box.pid, i))
                for i in range(2000):
                    assert (await box.receive(timeout=WAIT))[1] == (PONG, i)
                big = bytes(range(256)) * 8000  # ~2 MB
                client.send(ping, (box.pid, big))
                assert (await box.receive(timeout=WAIT))[1] == (PONG, big)
                await client.drain()

    arun(body)
