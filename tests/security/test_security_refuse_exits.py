"""``refuse_remote_exits``: a process allowed by name is reachable, not killable (issue 11
item 7). A refused link or exit signal is dropped and logged; nothing new goes on the wire."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from transport_helpers import KILL, WAIT, arun, connect, start_server, wait_for

from pyfabric import Atom

EXIT = Atom("EXIT")


async def victim(proc: Any) -> None:
    while True:
        await proc.receive()


@pytest.mark.parametrize("refuse", [True, ["victim"], []], ids=["server", "by-name", "off"])
def test_kill_and_link_from_a_client(refuse: Any) -> None:
    async def body() -> None:
        server = await start_server(allowed=("victim", "ping"), refuse_remote_exits=refuse)
        server.spawn(victim, name="victim")
        try:
            async with await connect(server) as client:
                proxy = await client.whereis("victim")
                pid = server.node.whereis("victim")
                async with client.mailbox() as box:
                    box.exit(proxy, KILL)
                    # A round trip after the exit frame: it has been handled when ping answers.
                    client.send("ping", (box.pid, 1))
                    await box.receive(timeout=WAIT)
                    if refuse:
                        assert server.node.is_alive(pid)
                    else:
                        await wait_for(lambda: not server.node.is_alive(pid))
                        return
                    linker = client.mailbox()
                    linker.link(proxy)
                    client.send("ping", (box.pid, 2))
                    await box.receive(timeout=WAIT)
                    linker.close(Atom("boom"))
                    client.send("ping", (box.pid, 3))
                    await box.receive(timeout=WAIT)
                    await asyncio.sleep(0.1)
                    assert server.node.is_alive(pid)
        finally:
            await server.close()

    arun(body, allow_errors_from=("pyfabric.transport",))


def test_names_not_listed_stay_killable() -> None:
    async def body() -> None:
        server = await start_server(allowed=("victim", "other", "ping"), refuse_remote_exits=["victim"])
        server.spawn(victim, name="victim")
        server.spawn(victim, name="other")
        try:
            async with await connect(server) as client:
                other = await client.whereis("other")
                pid = server.node.whereis("other")
                async with client.mailbox() as box:
                    box.exit(other, KILL)
                await wait_for(lambda: not server.node.is_alive(pid))
                assert server.node.whereis("victim") is not None
        finally:
            await server.close()

    arun(body)
