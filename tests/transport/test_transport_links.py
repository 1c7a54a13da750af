"""Links, monitors and exit signals across a Python client and a Python server (docs 5.2)."""

from __future__ import annotations

from typing import Any

import pytest
from transport_helpers import (
    DOWN,
    EXIT,
    KILL,
    KILLED,
    NOCONNECTION,
    NORMAL,
    PROCESS,
    WAIT,
    arun,
    connect,
    start_server,
    wait_for,
)

from pyfabric import ANY, Atom, Node, Pid, ProcessExit, ProcessExited

CUSTOM = (Atom("custom"), "reason", [1, 2.5])
DIE = Atom("die")
REPORT = Atom("report")


async def victim(proc: Any) -> None:
    """A server process: ``{die, Reason}`` ends it with Reason; trapped EXITs and other
    messages are reported to the last ``{report, Pid}`` sender."""
    report_to: Pid | None = None
    while True:
        msg = await proc.receive()
        if isinstance(msg, tuple) and msg[:1] == (DIE,):
            raise ProcessExit(msg[1])
        if isinstance(msg, tuple) and msg[:1] == (REPORT,):
            report_to = msg[1]
            proc.send(report_to, (Atom("ready"), proc.pid))
        elif report_to is not None:
            proc.send(report_to, (Atom("got"), msg))


async def setup(trap_exit: bool = False, **client_options: Any):
    server = await start_server(allowed=("ping", "victim"))
    server.spawn(victim, name="victim", trap_exit=trap_exit)
    client = await connect(server, **client_options)
    return server, client


async def teardown(server, client) -> None:
    await client.close()
    await server.close()


async def kill_from_server(server, pid_name: str, reason: Any) -> None:
    pid = server.node.whereis(pid_name)
    if reason == KILL:
        with server.mailbox() as killer:
            killer.exit(pid, KILL)
    else:
        server.send(pid, (DIE, reason))


@pytest.mark.parametrize("reason", [NORMAL, CUSTOM, KILL], ids=["normal", "custom", "kill"])
def test_monitor_sees_real_remote_exit_reason(reason: Any) -> None:
    async def body() -> None:
        server, client = await setup()
        try:
            proxy = await client.whereis("victim")
            async with client.mailbox() as box:
                ref = box.monitor(proxy)
                await kill_from_server(server, "victim", reason)
                expected = KILLED if reason == KILL else reason
                assert await box.receive(timeout=WAIT) == (DOWN, ref, PROCESS, proxy, expected)
                assert not client.node.is_alive(proxy)
                # A monitor placed now gives noproc at once; sends are no-ops.
                ref2 = box.monitor(proxy)
                assert (await box.receive(timeout=WAIT))[4] == Atom("noproc")
                client.send(proxy, "into the void")
                assert ref2 != ref
        finally:
            await teardown(server, client)

    arun(body)


@pytest.mark.parametrize("reason", [NORMAL, CUSTOM, KILL], ids=["normal", "custom", "kill"])
def test_linked_local_dies_or_traps(reason: Any) -> None:
    async def body() -> None:
        server, client = await setup()
        try:
            proxy = await client.whereis("victim")
            plain = client.mailbox()
            trapping = client.mailbox(trap_exit=True)
            plain.link(proxy)
            trapping.link(proxy)
            # The server side learns of both links: make sure they arrived before the death.
            await wait_for(lambda: len(server.node.links(server.node.whereis("victim"))) == 2)
            await kill_from_server(server, "victim", reason)
            expected = KILLED if reason == KILL else reason
            assert await trapping.receive(timeout=WAIT) == (EXIT, proxy, expected)
            if reason == NORMAL:
                assert plain.alive
            else:
                await wait_for(lambda: not plain.alive)
                assert plain.exit_reason == expected
                with pytest.raises(ProcessExited):
                    await plain.receive(timeout=0)
            plain.close()
            trapping.close()
        finally:
            await teardown(server, client)

    arun(body)


@pytest.mark.parametrize("reason", [NORMAL, CUSTOM, KILL], ids=["normal", "custom", "kill"])
def test_client_process_death_ends_server_proxy(reason: Any) -> None:
    async def body() -> None:
        server, client = await setup()
        try:
            got: list[Any] = []

            async def holder(proc):
                box_pid = await proc.receive(Pid)
                ref = proc.monitor(box_pid)
                got.append(box_pid)
                got.append(await proc.receive((DOWN, ref, PROCESS, box_pid, ANY)))

            server.spawn(holder, name="holder")
            server_linked = server.mailbox(trap_exit=True)
            box = client.mailbox()
            client.send(await client.whereis("ping"), (box.pid, "hi"))
            await box.receive(timeout=WAIT)  # now the server has a proxy for box
            proxies = server.node.proxies()
            assert len(proxies) == 1
            box_proxy = proxies[0]
            server.send("holder", box_proxy)
            server_linked.link(box_proxy)
            await wait_for(lambda: len(got) == 1)
            if reason == KILL:
                with client.mailbox() as killer:
                    killer.exit(box.pid, KILL)
                expected = KILLED
            else:
                box.close(reason)
                expected = reason
            await wait_for(lambda: len(got) == 2)
            assert got[1][4] == expected
            assert not server.node.is_alive(box_proxy)
            assert await server_linked.receive(timeout=WAIT) == (EXIT, box_proxy, expected)
            server_linked.close()
        finally:
            await teardown(server, client)

    arun(body)


@pytest.mark.parametrize("trap", [False, True], ids=["plain", "trapping"])
@pytest.mark.parametrize("reason", [NORMAL, CUSTOM, KILL], ids=["normal", "custom", "kill"])
def test_exit2_from_client_reaches_server_process(reason: Any, trap: bool) -> None:
    async def body() -> None:
        server, client = await setup(trap_exit=trap)
        try:
            proxy = await client.whereis("victim")
            async with client.mailbox() as box, client.mailbox() as watcher:
                box.send(proxy, (Atom("report"), box.pid))
                assert await box.receive(timeout=WAIT) == (Atom("ready"), proxy)
                ref = watcher.monitor(proxy)
                box.exit(proxy, reason)
                assert client.node.is_alive(proxy)  # the proxy itself is unaffected
                if reason == KILL:
                    down = await watcher.receive(timeout=WAIT)
                    assert down == (DOWN, ref, PROCESS, proxy, KILLED)
                elif trap:
                    # {'EXIT', ProxyForBox, Reason} on the server, reported back: box.pid again.
                    assert await box.receive(timeout=WAIT) == (Atom("got"), (EXIT, box.pid, reason))
                elif reason == NORMAL:
                    box.send(proxy, "still alive?")
                    assert await box.receive(timeout=WAIT) == (Atom("got"), "still alive?")
                    assert watcher.qsize() == 0
                else:
                    assert await watcher.receive(timeout=WAIT) == (DOWN, ref, PROCESS, proxy, reason)
        finally:
            await teardown(server, client)

    arun(body)


def test_remote_link_then_local_death_kills_remote() -> None:
    async def body() -> None:
        server, client = await setup()
        try:
            proxy = await client.whereis("victim")
            victim_pid = server.node.whereis("victim")
            with server.mailbox() as server_watch:
                ref = server_watch.monitor(victim_pid)
                box = client.mailbox()
                box.link(proxy)
                await wait_for(lambda: len(server.node.links(victim_pid)) == 1)
                box.close(CUSTOM)
                down = await server_watch.receive(timeout=WAIT)
                assert down[:2] == (DOWN, ref) and down[4] == CUSTOM
        finally:
            await teardown(server, client)

    arun(body)


def test_unlink_stops_propagation_both_ways() -> None:
    async def body() -> None:
        server, client = await setup()
        try:
            proxy = await client.whereis("victim")
            victim_pid = server.node.whereis("victim")
            async with client.mailbox() as box:
                box.link(proxy)
                await wait_for(lambda: len(server.node.links(victim_pid)) == 1)
                box.unlink(proxy)
                await wait_for(lambda: len(server.node.links(victim_pid)) == 0)
                ref = box.monitor(proxy)
                server.send(victim_pid, (DIE, CUSTOM))
                assert await box.receive(timeout=WAIT) == (DOWN, ref, PROCESS, proxy, CUSTOM)
                assert box.alive
        finally:
            await teardown(server, client)

    arun(body)


def test_server_process_links_to_client_proxy() -> None:
    """Links made on the server side (to a proxy of a client process) work both ways."""

    async def body() -> None:
        server, client = await setup()
        try:
            box = client.mailbox(trap_exit=True)
            client.send("ping", (box.pid, 1))
            await box.receive(timeout=WAIT)
            box_proxy = next(iter(server.node.proxies()))
            srv = server.mailbox()
            srv.link(box_proxy)
            await wait_for(lambda: len(box.node.links(box.pid)) == 1)
            srv.close(CUSTOM)
            assert (await box.receive(timeout=WAIT))[::2] == (EXIT, CUSTOM)
            box.close()
        finally:
            await teardown(server, client)

    arun(body)


def test_client_close_ends_server_proxies_with_noconnection() -> None:
    async def body() -> None:
        server = await start_server()
        try:
            client = await connect(server)
            box = client.mailbox()
            client.send("ping", (box.pid, 1))
            await box.receive(timeout=WAIT)
            box_proxy = next(iter(server.node.proxies()))
            with server.mailbox() as watcher:
                ref = watcher.monitor(box_proxy)
                await client.close()
                down = await watcher.receive(timeout=WAIT)
                assert down[:2] == (DOWN, ref)
                # The client's own node closes first: the box's DEAD (shutdown) goes out
                # before the connection closes, so the server need not wait for its session
                # to expire.
                assert down[4] == Atom("shutdown")
        finally:
            await server.close()

    arun(body)


def test_shared_node_client_close_ends_server_proxies_after_session_timeout() -> None:
    async def body() -> None:
        server = await start_server(session_timeout=0.2)
        try:
            async with Node() as node:
                client = await connect(server, node=node)
                box = client.mailbox()
                client.send("ping", (box.pid, 1))
                ping_proxy = (await box.receive(timeout=WAIT))[0]
                box_proxy = next(iter(server.node.proxies()))
                with server.mailbox() as watcher, node.mailbox() as local_watch:
                    ref = watcher.monitor(box_proxy)
                    lref = local_watch.monitor(ping_proxy)
                    await client.close()
                    assert box.alive  # the node is not the client's: its processes live on
                    assert await local_watch.receive(timeout=WAIT) == (DOWN, lref, PROCESS, ping_proxy, NOCONNECTION)
                    assert await watcher.receive(timeout=WAIT) == (DOWN, ref, PROCESS, box_proxy, NOCONNECTION)
                box.close()
        finally:
            await server.close()

    arun(body)


def test_server_close_ends_client_proxies_with_noconnection() -> None:
    async def body() -> None:
        server = await start_server()
        client = await connect(server, reconnect=False)
        try:
            proxy = await client.whereis("ping")
            async with client.mailbox() as box:
                ref = box.monitor(proxy)
                await server.close()
                down = await box.receive(timeout=WAIT)
                assert down == (DOWN, ref, PROCESS, proxy, NOCONNECTION)
                await wait_for(lambda: client.state == "closed")
        finally:
            await client.close()
            await server.close()

    arun(body)
