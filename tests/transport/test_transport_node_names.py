"""``(name, node)`` addressing from every side (issue 13): a client's own node resolves and
delivers locally (``whereis(name, node=own)``, ``send((name, own))``), the server's own
processes send to ``(name, client_node)``, a client's processes to ``(name, server_node)``
and, with ``route``, to other client nodes; an unknown node drops the message silently, as
Erlang's ``{Name, Node} ! Msg`` does."""

from __future__ import annotations

from typing import Any

from transport_helpers import PONG, WAIT, arun, connect, pair, start_server

from pyfabric import ANY, Atom

C1 = Atom("c1@localhost")
C2 = Atom("c2@localhost")


async def inbox_forwarder(proc: Any, dest: Any) -> None:
    """Sends each message it receives on to ``dest`` (a (name, node) pair) from its own process."""
    while True:
        msg = await proc.receive()
        proc.send(dest, msg)


def test_a_clients_own_node_resolves_here() -> None:
    async def body() -> None:
        async with pair(node_name=C1, allowed=["inbox"]) as (_server, client):
            async with client.mailbox("inbox") as box:
                assert await client.whereis("inbox", node=C1) == box.pid
                assert await client.whereis("inbox", node="c1@localhost") == box.pid
                assert await client.whereis("nothing", node=C1) is None
                client.send(("inbox", C1), "local")
                assert await box.receive(timeout=0) == "local"  # delivered at once, not via the server
                client.send(("nothing", C1), "dropped")  # an unregistered name: dropped, as Erlang does
                assert client.statistics()["messages_out"] == 0
                # The server's node is the server, as before.
                assert await client.whereis("ping", node=client.peer_node) is not None

    arun(body)


def test_server_processes_send_to_a_client_node() -> None:
    async def body() -> None:
        for routing in (True, False):
            server = await start_server(register_ping=False, routing=routing)
            c1 = await connect(server, node_name=C1, allowed=["inbox"])
            try:
                inbox = c1.mailbox("inbox")
                server.send(("inbox", C1), ("from the server", str(routing)))
                assert await inbox.receive(timeout=WAIT) == ("from the server", str(routing))
                forwarder = server.spawn(inbox_forwarder, ("inbox", "c1@localhost"))
                server.send(forwarder, "from a server process")
                assert await inbox.receive(timeout=WAIT) == "from a server process"
                server.send(("inbox", "c9@localhost"), "nobody")  # unknown node: dropped silently
                server.send(("inbox", server.node.name), "nobody here")  # ours, unregistered: dropped
                # A name the client does not allow is refused there, as for any message.
                server.send(("secret", C1), "refused")
                server.send(("inbox", C1), "after")
                assert await inbox.receive(timeout=WAIT) == "after"
            finally:
                await c1.close()
                await server.close()

    arun(body)


def test_client_processes_send_to_the_server_node_and_other_client_nodes() -> None:
    async def body() -> None:
        server = await start_server(routing=True)
        c2 = await connect(server, node_name=C2, allowed=["inbox"])
        c1 = await connect(server, node_name=C1)
        try:
            inbox = c2.mailbox("inbox")
            to_c2 = c1.spawn(inbox_forwarder, ("inbox", C2))
            c1.send(to_c2, "c1 process to c2")
            assert await inbox.receive(timeout=WAIT) == "c1 process to c2"
            reply = c1.mailbox()
            to_server = c1.spawn(inbox_forwarder, ("ping", c1.peer_node))
            c1.send(to_server, (reply.pid, "hi"))
            assert await reply.receive((ANY, (PONG, "hi")), timeout=WAIT)
        finally:
            for thing in (c1, c2, server):
                await thing.close()

    arun(body)
