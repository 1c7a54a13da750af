"""Races between a process ending and messages to it that are already in flight."""

from __future__ import annotations

from transport_helpers import PONG, WAIT, arun, connect, start_server, wait_for

from pyfabric import Atom, ProcessExit


def test_messages_in_flight_to_a_process_that_just_died_are_not_errors() -> None:
    """Messages to an issued id whose process just ended are dropped silently, not counted as errors."""
    async def body() -> None:
        server = await start_server(allowed=("ping", "shortlived"))

        async def shortlived(proc) -> None:
            await proc.receive()
            raise ProcessExit(Atom("done"))

        server.spawn(shortlived, name="shortlived")
        try:
            client = await connect(server)
            try:
                proxy = await client.whereis("shortlived")
                # The process ends on the server, and in the same loop iteration (before its
                # DEAD can reach the client) the client sends to it.
                with server.mailbox() as killer:
                    killer.exit(server.node.whereis("shortlived"), Atom("kill"))
                for i in range(30):
                    client.send(proxy, i)
                await wait_for(lambda: not client.node.is_alive(proxy))
                async with client.mailbox() as box:
                    client.send("ping", (box.pid, "after"))
                    assert (await box.receive(timeout=WAIT))[1] == (PONG, "after")
                (connection,) = server.connections()
                assert connection.frames_dropped == 0
                assert client.reconnects == 0 and client.statistics()["frames_dropped"] == 0
            finally:
                await client.close()
        finally:
            await server.close()

    arun(body, allow_errors_from=("pyfabric.server", "pyfabric.transport", "pyfabric.protocol"))
