"""Two Python clients talking through a Python routing server (docs/protocol.md 16, issue 13).

C1 and C2 are clients with node names; the server runs with ``routing``. Covered: sending to
``(name, node)``, ``whereis(name, node=...)``, ``nodes()``, pids in messages keeping their
identity both ways, links and monitors across with the real reasons, ``nodedown`` when C2's
connection is lost and ``noconnection`` after ``route_grace``, a resume within the grace,
the predicate, a duplicate node name, ``route_max_proxies``, and a client without ``route``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from transport_helpers import DOWN, EXIT, NOCONNECTION, PROCESS, WAIT, Relay, arun, connect, start_server, wait_for

from pyfabric import ANY, Atom, FeatureNotSupported, NodeNameInUse, ProcessExit
from pyfabric.transport import SendRefused

C1 = Atom("c1@localhost")
C2 = Atom("c2@localhost")
C3 = Atom("c3@localhost")
NODEDOWN = Atom("nodedown")
DIE = Atom("die")
CUSTOM = (Atom("custom"), "reason", [1, 2.5])


async def echo(proc: Any) -> None:
    """``{From, M}`` -> ``From ! {self(), M}``; ``{die, Reason}`` ends it with Reason."""
    while True:
        msg = await proc.receive()
        if isinstance(msg, tuple) and msg[:1] == (DIE,):
            raise ProcessExit(msg[1])
        sender, body = msg
        proc.send(sender, (proc.pid, body))


async def hub(c2_options: dict[str, Any] | None = None, **options: Any):
    """A routing server, C2 then C1, each with an ``echo`` and an allowed ``inbox`` name."""
    options.setdefault("routing", True)
    server = await start_server(register_ping=False, **options)
    c2 = await connect(server, node_name=C2, allowed=["echo", "inbox"], **(c2_options or {}))
    c2.spawn(echo, name="echo")
    c1 = await connect(server, node_name=C1, allowed=["echo", "inbox"])
    c1.spawn(echo, name="echo")
    return server, c1, c2


async def close_all(*things: Any) -> None:
    for thing in things:
        await thing.close()


def test_send_by_name_and_node_whereis_and_nodes() -> None:
    async def body() -> None:
        server, c1, c2 = await hub()
        try:
            assert "route" in c1.features and "route" in c2.features
            assert await c1.nodes() == [C2]  # neither itself nor the server
            assert await c2.nodes() == [C1]
            box = c1.mailbox()
            c1.send(("echo", "c2@localhost"), (box.pid, "by name"))
            sender, reply = await box.receive(timeout=WAIT)
            assert reply == "by name"
            found = await c1.whereis("echo", node=C2)
            assert found == sender  # one proxy at C1 however the pid arrived
            assert await c1.whereis("nothing", node=C2) is None
            assert await c1.whereis("echo", node="c9@localhost") is None
            c1.send(found, (box.pid, "to the pid"))
            assert await box.receive(timeout=WAIT) == (found, "to the pid")
            # The server's own node is the server, as before (no echo there).
            assert await c1.whereis("echo", node=c1.peer_node) is None
        finally:
            await close_all(c1, c2, server)

    arun(body)


def test_pids_keep_their_identity_both_ways() -> None:
    async def body() -> None:
        server, c1, c2 = await hub()
        try:
            box1 = c1.mailbox()
            inbox2 = c2.mailbox("inbox")
            c2_echo = await c1.whereis("echo", node=C2)
            # C1 sends C2's echo its own pid and C2's pid, nested: the echo sends them back.
            c1.send(c2_echo, (box1.pid, [box1.pid, c2_echo, (c2_echo, {"k": box1.pid})]))
            sender, (mine, theirs, (again, mapping)) = await box1.receive(timeout=WAIT)
            assert sender == theirs == again == c2_echo  # one proxy at C1 for C2's echo
            assert mine == box1.pid and mapping == {"k": box1.pid}  # C1 gets its own pid back
            # At C2: C2's echo arrives as itself, C1's box1 as one proxy, however often.
            c1.send(("inbox", C2), (c2_echo, box1.pid, box1.pid))
            local, first, second = await inbox2.receive(timeout=WAIT)
            assert local == c2.node.whereis("echo")
            assert first == second and first.node == c2.node.name  # a proxy at C2
            c2.send(first, "to C1 through the hub")
            assert await box1.receive(timeout=WAIT) == "to C1 through the hub"
            c2.send(("echo", C1), (first, "echoed"))  # C1's echo answers box1 itself
            assert await box1.receive(timeout=WAIT) == (c1.node.whereis("echo"), "echoed")
        finally:
            await close_all(c1, c2, server)

    arun(body)


def test_links_and_monitors_across_with_the_real_reason() -> None:
    async def body() -> None:
        server, c1, c2 = await hub()
        try:

            async def worker(proc: Any) -> None:
                msg = await proc.receive()
                raise ProcessExit(msg[1])

            inbox = c1.mailbox("inbox")
            inbox.trap_exit = True
            pid = c2.spawn(worker)
            c2.send(("inbox", C1), pid)  # C1 learns the worker's pid from C2
            proxy = await inbox.receive(timeout=WAIT)
            assert proxy.node == c1.node.name  # a proxy at C1
            ref = inbox.monitor(proxy)
            inbox.link(proxy)
            await asyncio.sleep(0.1)  # the link frames cross both hops
            c2.send(pid, (DIE, CUSTOM))
            down = await inbox.receive(match=(DOWN, ref, PROCESS, proxy, ANY), timeout=WAIT)
            assert down[4] == CUSTOM
            assert await inbox.receive(match=(EXIT, proxy, ANY), timeout=WAIT) == (EXIT, proxy, CUSTOM)
            await asyncio.sleep(0.2)
            assert inbox.qsize() == 0  # the link signal came once
        finally:
            await close_all(c1, c2, server)

    arun(body)


def test_a_c1_process_linked_from_c2_takes_it_down_with_its_reason() -> None:
    async def body() -> None:
        server, c1, c2 = await hub()
        try:
            inbox2 = c2.mailbox("inbox")
            inbox2.trap_exit = True
            box1 = c1.mailbox()
            c1.send(("inbox", C2), box1.pid)
            proxy = await inbox2.receive(timeout=WAIT)
            inbox2.link(proxy)
            await asyncio.sleep(0.1)  # the link frames cross both hops
            box1.close(CUSTOM)
            assert await inbox2.receive(match=(EXIT, proxy, ANY), timeout=WAIT) == (EXIT, proxy, CUSTOM)
            # exit/2 across: C2 kills a C1 process through its proxy, with a reason.
            victim = c1.mailbox()
            c1.send(("inbox", C2), victim.pid)
            victim_proxy = await inbox2.receive(timeout=WAIT)
            watcher = c1.mailbox()
            ref = watcher.monitor(victim.pid)
            inbox2.exit(victim_proxy, CUSTOM)
            assert (await watcher.receive(timeout=WAIT))[4] == CUSTOM
            assert ref is not None
        finally:
            await close_all(c1, c2, server)

    arun(body)


def test_c2_lost_nodedown_then_noconnection_after_the_grace() -> None:
    async def body() -> None:
        server, c1, c2 = await hub({"reconnect": False}, route_grace=0.3)
        try:
            box = c1.mailbox()
            remote = await c1.whereis("echo", node=C2)
            ref = box.monitor(remote)
            await c1.monitor_node(C2, box.pid)
            # C2 is lost for good (as if killed): its connection breaks, it does not reconnect.
            c2.drop_connection()
            assert await box.receive(match=(NODEDOWN, ANY), timeout=WAIT) == (NODEDOWN, C2)
            down = await box.receive(match=(DOWN, ref, PROCESS, remote, ANY), timeout=WAIT)
            assert down[4] == NOCONNECTION
            assert await c1.nodes() == []
            # Monitoring a node that is not up answers at once.
            await c1.monitor_node(C2, box.pid)
            assert await box.receive(match=(NODEDOWN, ANY), timeout=WAIT) == (NODEDOWN, C2)
        finally:
            await close_all(c1, c2, server)

    arun(body)


def test_c2_silent_is_found_by_its_heartbeat() -> None:
    async def body() -> None:
        server = await start_server(register_ping=False, routing=True, route_grace=0.3, route_heartbeat=0.1)
        c1 = await connect(server, node_name=C1)
        async with Relay(server.port) as relay:
            c2 = await connect(relay.port, node_name=C2, allowed=["echo"], reconnect=False)
            c2.spawn(echo, name="echo")
            try:
                box = c1.mailbox()
                remote = await c1.whereis("echo", node=C2)
                ref = box.monitor(remote)
                await c1.monitor_node(C2, box.pid)
                relay.freeze()  # C2's path dies without a FIN: the server hears nothing more
                assert await box.receive(match=(NODEDOWN, ANY), timeout=WAIT) == (NODEDOWN, C2)
                down = await box.receive(match=(DOWN, ref, PROCESS, remote, ANY), timeout=WAIT)
                assert down[4] == NOCONNECTION
            finally:
                await close_all(c2)
        await close_all(c1, server)

    arun(body)


def test_c2_back_within_the_grace_keeps_its_proxies() -> None:
    async def body() -> None:
        server, c1, c2 = await hub(route_grace=30)
        try:
            box = c1.mailbox()
            remote = await c1.whereis("echo", node=C2)
            ref = box.monitor(remote)
            await c1.monitor_node(C2, box.pid)
            c2.drop_connection()  # reconnects and resumes its session
            assert await box.receive(match=(NODEDOWN, ANY), timeout=WAIT) == (NODEDOWN, C2)
            await wait_for(lambda: c2.state == "connected" and c2.reconnects == 1)
            await wait_for_async(lambda: c1.nodes(), [C2])
            c1.send(remote, (box.pid, "still there"))
            assert await box.receive(match=(remote, ANY), timeout=WAIT) == (remote, "still there")
            assert box.demonitor(ref)
        finally:
            await close_all(c1, c2, server)

    arun(body)


async def wait_for_async(get: Any, expected: Any) -> None:
    async with asyncio.timeout(WAIT):
        while await get() != expected:
            await asyncio.sleep(0.02)


def test_the_predicate_decides_visibility_and_reachability() -> None:
    def policy(source: str | None, target: str) -> bool:
        return not (source == "c1@localhost" and target == "c3@localhost")

    async def body() -> None:
        server, c1, c2 = await hub(routing=policy)
        c3 = await connect(server, node_name=C3, allowed=["echo"])
        c3.spawn(echo, name="echo")
        try:
            assert sorted(await c1.nodes()) == [C2]
            assert sorted(await c2.nodes()) == [C1, C3]
            assert await c1.whereis("echo", node=C3) is None
            box = c1.mailbox()
            dropped = sum(conn.frames_dropped for conn in server.connections())
            c1.send(("echo", C3), (box.pid, "refused"))
            await wait_for(lambda: sum(conn.frames_dropped for conn in server.connections()) == dropped + 1)
            # C2 may reach C3, and C3's pid given to C1 works: pids are capabilities.
            c3_echo = await c2.whereis("echo", node=C3)
            assert c3_echo is not None
            c1.send(("echo", C2), (box.pid, "ok"))
            assert (await box.receive(timeout=WAIT))[1] == "ok"
            assert box.qsize() == 0
        finally:
            await close_all(c1, c2, c3, server)

    arun(body)


def test_a_raising_predicate_counts_as_false() -> None:
    def policy(source: str | None, target: str) -> bool:
        raise RuntimeError("broken policy")

    async def body() -> None:
        server, c1, c2 = await hub(routing=policy)
        try:
            assert await c1.nodes() == []
            assert await c1.whereis("echo", node=C2) is None
        finally:
            await close_all(c1, c2, server)

    arun(body)


def test_a_duplicate_node_name_is_refused_and_a_kept_session_taken_over() -> None:
    async def body() -> None:
        server, c1, c2 = await hub()
        try:
            with pytest.raises(NodeNameInUse, match="c2@localhost"):
                await connect(server, node_name=C2)
            assert server.statistics()["auth_failures"] == 0
            with pytest.raises(NodeNameInUse):
                await connect(server, node_name=server.node.name)
        finally:
            await close_all(c1, c2, server)

    arun(body)


def test_a_new_client_takes_the_name_of_a_kept_session() -> None:
    async def body() -> None:
        server = await start_server(register_ping=False, routing=True, route_grace=60, route_heartbeat=0.1)
        c1 = await connect(server, node_name=C1)
        async with Relay(server.port) as relay:
            old = await connect(relay.port, node_name=C2, allowed=["echo"], reconnect=False)
            old.spawn(echo, name="echo")
            box = c1.mailbox()
            remote = await c1.whereis("echo", node=C2)
            ref = box.monitor(remote)
            relay.freeze()  # the old C2 is gone; the server keeps its session (60 s)
            await wait_for_async(lambda: c1.nodes(), [])
            new = await connect(server, node_name=C2, allowed=["echo"])  # a restarted C2
            new.spawn(echo, name="echo")
            down = await box.receive(match=(DOWN, ref, PROCESS, remote, ANY), timeout=WAIT)
            assert down[4] == NOCONNECTION  # the old incarnation's session ended at once
            assert await c1.nodes() == [C2]
            assert await c1.whereis("echo", node=C2) not in (None, remote)
            await close_all(new, old)
        await close_all(c1, server)

    arun(body)


def test_route_max_proxies_bounds_one_clients_pids() -> None:
    async def body() -> None:
        server, c1, c2 = await hub(route_max_proxies=5)
        try:
            box1 = c1.mailbox("inbox")
            boxes = [c2.mailbox() for _ in range(8)]
            remote = await c2.whereis("echo", node=C1)
            c2.send(remote, (boxes[0].pid, [b.pid for b in boxes[1:3]]))  # 3 pids: fit
            assert (await boxes[0].receive(timeout=WAIT))[1] == [b.pid for b in boxes[1:3]]
            dropped = sum(conn.frames_dropped for conn in server.connections())
            c2.send(remote, (boxes[0].pid, [b.pid for b in boxes[3:]]))  # 3 + 5 > 5
            await wait_for(lambda: sum(conn.frames_dropped for conn in server.connections()) == dropped + 1)
            assert boxes[0].qsize() == 0 and box1.qsize() == 0
        finally:
            await close_all(c1, c2, server)

    arun(body)


def test_a_client_without_route_still_reaches_client_nodes() -> None:
    async def body() -> None:
        server, c1, c2 = await hub()
        plain = await connect(server, features=["whereis", "link", "heartbeat", "error", "session"])
        try:
            assert "route" not in plain.features
            box = plain.mailbox()
            plain.send(("echo", C2), (box.pid, "from a client without a node name"))
            assert (await box.receive(timeout=WAIT))[1] == "from a client without a node name"
            with pytest.raises(FeatureNotSupported):
                await plain.nodes()
            with pytest.raises(FeatureNotSupported):
                await plain.whereis("echo", node=C2)
            assert await c1.nodes() == [C2]  # it has no node name: never listed
        finally:
            await close_all(plain, c1, c2, server)

    arun(body)


def test_without_routing_nothing_changes() -> None:
    async def body() -> None:
        server = await start_server(allowed=("ping",))
        client = await connect(server, node_name=C1)
        twin = await connect(server, node_name=C1)  # names are not checked without routing
        try:
            assert "route" not in client.features
            with pytest.raises(FeatureNotSupported):
                await client.nodes()
            with pytest.raises(FeatureNotSupported):
                await client.whereis("ping", node=C2)
            box = client.mailbox()
            client.send(("ping", C2), (box.pid, "any node is the server"))
            assert (await box.receive(timeout=WAIT))[1] == (Atom("pong"), "any node is the server")
        finally:
            await close_all(client, twin, server)

    arun(body)


def test_routing_options_are_checked() -> None:
    async def body() -> None:
        with pytest.raises(TypeError, match="routing"):
            await start_server(routing="yes")
        with pytest.raises(ValueError, match="route_grace"):
            await start_server(routing=True, route_grace=-1)
        with pytest.raises(ValueError, match="route_max_proxies"):
            await start_server(routing=True, route_max_proxies=0)

    arun(body)


def test_our_own_session_ending_is_a_nodedown_of_every_node() -> None:
    async def body() -> None:
        server = await start_server(register_ping=False, routing=True, session_timeout=0.05, route_heartbeat=0.1)
        c2 = await connect(server, node_name=C2)
        async with Relay(server.port) as relay:
            c1 = await connect(relay.port, node_name=C1)
            try:
                box = c1.mailbox()
                await c1.monitor_node(C2, box.pid)
                relay.freeze()  # C1's path dies silently: the server drops it, its session expires
                await wait_for(lambda: server.statistics()["sessions"] == 1)  # only C2's is left
                c1.drop_connection()  # C1 notices now and reconnects: its session is gone
                assert await box.receive(match=(NODEDOWN, ANY), timeout=WAIT) == (NODEDOWN, C2)
                await wait_for(lambda: c1.state == "connected")
                assert await c1.nodes() == [C2]  # C2 itself never went away
            finally:
                await close_all(c1)
        await close_all(c2, server)

    arun(body)


def test_routed_sends_are_credited_and_confirmed_hop_by_hop() -> None:
    """With acks and credit (our default): a stream far above credit_dest to a client node
    arrives whole and in order (the server returns C1's credit once it issued each message to
    C2), and a routed confirmed send is answered: ok, or noproc for an unknown node."""

    async def body() -> None:
        server, c1, c2 = await hub(credit_dest=64)
        try:
            assert {"acks", "credit", "route"} <= c1.features
            inbox = c2.mailbox("inbox", max_mailbox=10_000)
            for i in range(3_000):
                c1.send(("inbox", C2), i)
            await c1.drain(timeout=WAIT)
            got = [await inbox.receive(timeout=WAIT) for _ in range(3_000)]
            assert got == list(range(3_000))
            await c1.send_confirmed(("inbox", C2), "confirmed")
            assert await inbox.receive(timeout=WAIT) == "confirmed"
            with pytest.raises(SendRefused) as refused:
                await c1.send_confirmed(("inbox", "c9@localhost"), "nowhere")
            assert refused.value.code == "noproc"
        finally:
            await close_all(c1, c2, server)

    arun(body)
