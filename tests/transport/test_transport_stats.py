"""Message counts per connection (issue 17): ``messages_in`` / ``messages_out`` in
``Client.statistics()``, ``ServerConnection.statistics()`` and, summed, ``Server.statistics()``,
as erlang_peer's ``fabric_peer:info/1`` has them."""

from __future__ import annotations

from transport_helpers import PONG, WAIT, arun, pair, wait_for

from pyfabric import ANY, Atom


def test_message_counts_both_sides() -> None:
    async def body() -> None:
        async with pair(allowed=["inbox"]) as (server, client):
            assert client.statistics()["messages_in"] == 0 and client.statistics()["messages_out"] == 0
            async with client.mailbox("inbox") as box:
                for i in range(3):
                    client.send("ping", (box.pid, i))  # by name: 3 out, 3 pongs in
                    assert await box.receive((ANY, (PONG, i)), timeout=WAIT)
                client.send("not_allowed", 1)  # refused by the server's policy: sent, not delivered
                await wait_for(lambda: server.statistics()["messages_in"] == 3 and client.statistics()["messages_out"] == 4)
                stats = client.statistics()
                assert (stats["messages_out"], stats["messages_in"]) == (4, 3)
                (conn,) = server.connections()
                theirs = conn.statistics()
                assert (theirs["messages_in"], theirs["messages_out"]) == (3, 3)
                assert theirs["bytes_in"] > 0 and theirs["bytes_out"] > 0 and theirs["proxies"] == 1
                totals = server.statistics()
                assert (totals["messages_in"], totals["messages_out"]) == (3, 3)
                # The server sends to the client's registered mailbox through its connection.
                conn.send("inbox", Atom("hello"))
                assert await box.receive(Atom("hello"), timeout=WAIT) == Atom("hello")
                await wait_for(lambda: client.statistics()["messages_in"] == 4)
                assert conn.statistics()["messages_out"] == 4

    arun(body)


def test_counts_survive_a_reconnect() -> None:
    async def body() -> None:
        async with pair() as (server, client):
            async with client.mailbox() as box:
                client.send("ping", (box.pid, 1))
                await box.receive((ANY, (PONG, 1)), timeout=WAIT)
                client.drop_connection()
                await wait_for(lambda: client.state == "reconnecting" or client.reconnects > 0)
                await client.wait_connected(WAIT)
                client.send("ping", (box.pid, 2))
                await box.receive((ANY, (PONG, 2)), timeout=WAIT)
                stats = client.statistics()
                assert (stats["messages_out"], stats["messages_in"]) == (2, 2)
                (conn,) = server.connections()  # the resumed session's link keeps its counts
                await wait_for(lambda: conn.statistics()["messages_in"] == 2)
                assert conn.statistics()["messages_out"] == 2

    arun(body)
