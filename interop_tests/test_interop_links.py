"""Links, monitors and exit reasons across Python and a real Erlang node, both directions.

Python client -> Erlang server: Python monitors/links on proxies of Erlang processes see the
real Erlang exit reason (``killed``, a custom term, ``normal``, ``noproc``, ``noconnection``),
Python ``exit(proxy, R)`` reaches the Erlang process (exit2), and a Python process that ends
reaches an Erlang process linked to it. Erlang client -> Python server: the harness's
``monitor``/``link`` watchers on proxies of Python processes see the Python exit reasons.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest
from interop_support import (  # noqa: F401
    CUSTOM_REASON,
    CUSTOM_REASON_ERL,
    DIE,
    DOWN,
    EXIT,
    HOST,
    KILL,
    KILLED,
    NOCONNECTION,
    NOPROC,
    NORMAL,
    PROCESS,
    SECRET,
    WAIT,
    Harness,
    dead_shipper,
    erl,
    erl_session,
    pids_in,
    victim,
)

import pyfabric
from pyfabric import ANY, Atom, Node, Pid

ALLOWED = ["victim", "echo", "dead_shipper", "coll"]

# Ships the pid of a process that has already ended: `{From, _}` -> `From ! {self(), Dead}`.
_ERL_DEAD_SHIPPER = (
    "case whereis(dead_shipper) of undefined -> ok; _ -> ok = unregister(dead_shipper) end, "
    "register(dead_shipper, spawn(fun L() -> receive {F, _} -> D = spawn(fun() -> ok end), "
    "R = monitor(process, D), receive {'DOWN', R, _, _, _} -> ok end, F ! {self(), D}, L() end end)), ok"
)


@pytest.fixture(scope="module")
def erl_server(erl: Harness) -> int:
    """An Erlang server allowing victim, echo, dead_shipper and coll (registered by the tests)."""
    erl.cmd("{start_demo, [echo]}")
    erl.eval(_ERL_DEAD_SHIPPER)
    _server, port = erl.start_server(ALLOWED)
    return port


async def _victim_proxy(client: Any) -> Pid:
    proxy = await client.whereis("victim")
    assert isinstance(proxy, Pid)
    return proxy


# -- Python client, Erlang server: Python watches Erlang processes --------------------------


@pytest.mark.parametrize(
    "how, expected",
    [("harness_kill", KILLED), ("custom", CUSTOM_REASON), ("normal", NORMAL), ("python_kill", KILLED)],
)
def test_python_monitor_sees_erlang_exit_reason(erl: Harness, erl_server: int, how: str, expected: Any) -> None:
    """A Python monitor on an Erlang process's proxy gets DOWN with the real reason: exit(P, kill) -> killed, custom term, normal."""
    erl.register_victim("victim")

    async def body() -> None:
        async with await pyfabric.aconnect(HOST, erl_server, SECRET) as client:
            proxy = await _victim_proxy(client)
            box = client.mailbox()
            ref = box.monitor(proxy)
            if how == "harness_kill":
                await asyncio.to_thread(erl.cmd, "{exit, victim, kill}")
            elif how == "python_kill":
                box.exit(proxy, KILL)  # exit2 with kill: untrappable, the process ends `killed`
            else:
                client.send(proxy, (DIE, CUSTOM_REASON if how == "custom" else NORMAL))
            assert await box.receive(timeout=WAIT) == (DOWN, ref, PROCESS, proxy, expected)
            assert not client.node.is_alive(proxy)
            # A new monitor on the ended proxy: noproc at once, as in Erlang.
            ref2 = box.monitor(proxy)
            assert await box.receive(timeout=WAIT) == (DOWN, ref2, PROCESS, proxy, NOPROC)
            box.close()

    asyncio.run(body())
    assert erl.cmd_raw("{exit, victim, kill}") == ("error", "noproc")  # really gone on the Erlang side


def test_python_trap_exit_link_gets_erlang_exit_reason(erl: Harness, erl_server: int) -> None:
    """Blocking client: a trapping mailbox linked to an Erlang process gets ('EXIT', proxy, {custom_failure, ...})."""
    erl.register_victim("victim")
    with pyfabric.connect(HOST, erl_server, SECRET) as client:
        proxy = client.whereis("victim")
        with client.mailbox() as box:
            box.trap_exit = True
            box.link(proxy)
            client.send(proxy, (DIE, CUSTOM_REASON))
            assert box.receive(timeout=WAIT) == (EXIT, proxy, CUSTOM_REASON)
            assert box.alive


def test_python_exit2_normal_is_ignored_by_erlang_process(erl: Harness, erl_server: int) -> None:
    """exit(proxy, normal) from Python does not end a non-trapping Erlang process (Erlang's exit/2 rule)."""
    erl.register_victim("victim")

    async def body() -> None:
        async with await pyfabric.aconnect(HOST, erl_server, SECRET) as client:
            proxy = await _victim_proxy(client)
            box = client.mailbox()
            ref = box.monitor(proxy)
            box.exit(proxy, NORMAL)
            client.send(proxy, (box.pid, "still there"))
            assert await box.receive(timeout=WAIT) == (proxy, "still there")
            box.exit(proxy, CUSTOM_REASON)
            assert await box.receive(timeout=WAIT) == (DOWN, ref, PROCESS, proxy, CUSTOM_REASON)

    asyncio.run(body())


def test_erlang_trapping_process_gets_python_exit2(erl: Harness, erl_server: int) -> None:
    """Python exit(proxy, Reason) reaches a trapping Erlang process as {'EXIT', ProxyOfPythonSender, Reason}."""
    erl.register_victim("victim", trap_exit=True, report_to="coll")

    async def body() -> None:
        async with await pyfabric.aconnect(HOST, erl_server, SECRET) as client:
            proxy = await _victim_proxy(client)
            box = client.mailbox()
            # Learn the Erlang-side pid of our mailbox: the victim echoes it back to us.
            client.send(proxy, (box.pid, box.pid))
            assert await box.receive(timeout=WAIT) == (proxy, box.pid)
            box.exit(proxy, CUSTOM_REASON)
            events = await asyncio.to_thread(erl.events, 1)
            m = re.fullmatch(r"\[\{collector,coll,\{'EXIT',(<[\d.]+>),(.*)\}\}\]", events)
            assert m, events
            assert m.group(2) == CUSTOM_REASON_ERL
            # The sender is the Erlang proxy of our mailbox: Erlang can answer through it.
            handle = await asyncio.to_thread(erl.adopt, m.group(1))
            await asyncio.to_thread(erl.cmd, f"{{send, {{handle, {handle}}}, from_erlang}}")
            assert await box.receive(timeout=WAIT) == Atom("from_erlang")

    asyncio.run(body())


def test_python_process_end_reaches_linked_erlang_process(erl: Harness, erl_server: int) -> None:
    """A Python mailbox linked to a trapping Erlang process closes with a custom reason: Erlang gets {'EXIT', Proxy, Reason}."""
    erl.register_victim("victim", trap_exit=True, report_to="coll")

    async def body() -> None:
        async with await pyfabric.aconnect(HOST, erl_server, SECRET) as client:
            proxy = await _victim_proxy(client)
            box = client.mailbox()
            box.link(proxy)  # the link frame makes the Erlang process linked to box's proxy
            client.send(proxy, (box.pid, "linked?"))
            assert await box.receive(timeout=WAIT) == (proxy, "linked?")
            box.close(CUSTOM_REASON)
            events = await asyncio.to_thread(erl.events, 1)
            assert re.fullmatch(r"\[\{collector,coll,\{'EXIT',<[\d.]+>,%s\}\}\]" % re.escape(CUSTOM_REASON_ERL), events), events

    asyncio.run(body())


def test_python_process_crash_kills_linked_erlang_process(erl: Harness, erl_server: int) -> None:
    """A spawned Python process linked to a non-trapping Erlang process crashes: the Erlang process dies with {python_error, ...}."""
    erl.register_victim("victim")

    async def linked(proc: Any, proxy: Pid, ready: Pid) -> None:
        proc.link(proxy)
        proc.send(ready, Atom("linked"))
        await proc.receive(Atom("go"))
        raise ValueError("bad value")

    async def body() -> None:
        async with await pyfabric.aconnect(HOST, erl_server, SECRET) as client:
            proxy = await _victim_proxy(client)
            box = client.mailbox()
            ref = box.monitor(proxy)
            pid = client.spawn(linked, proxy, box.pid)
            assert await box.receive(Atom("linked"), timeout=WAIT) == Atom("linked")
            client.send(proxy, (box.pid, "sync"))  # the link frame went before this message
            assert await box.receive((proxy, ANY), timeout=WAIT) == (proxy, "sync")
            box.send(pid, Atom("go"))
            reason = (Atom("python_error"), "ValueError", "bad value")
            assert await box.receive(timeout=WAIT) == (DOWN, ref, PROCESS, proxy, reason)

    asyncio.run(body())


def test_monitor_on_already_dead_erlang_process_gives_noproc(erl: Harness, erl_server: int) -> None:
    """Erlang ships the pid of an ended process: a Python monitor gets noproc (kept with an extended peer), a trapping link ('EXIT', P, noproc)."""

    async def body() -> None:
        async with await pyfabric.aconnect(HOST, erl_server, SECRET) as client:
            box = client.mailbox()
            client.send("dead_shipper", (box.pid, Atom("give")))
            shipper, dead = await box.receive(timeout=WAIT)
            assert isinstance(dead, Pid) and dead != shipper
            ref = box.monitor(dead)
            assert await box.receive(timeout=WAIT) == (DOWN, ref, PROCESS, dead, NOPROC)
            box.trap_exit = True
            box.link(dead)
            assert await box.receive(timeout=WAIT) == (EXIT, dead, NOPROC)

    asyncio.run(body())


def test_noconnection_when_erlang_server_stops(erl: Harness) -> None:
    """A client without reconnection loses its server for good: monitors and trapping links on proxies get noconnection."""
    erl.register_victim("victim")
    server_id, port = erl.start_server(["victim"])

    async def body() -> None:
        client = await pyfabric.aconnect(HOST, port, SECRET, reconnect=False)
        try:
            proxy = await _victim_proxy(client)
            box = client.mailbox()
            ref = box.monitor(proxy)
            linker = client.mailbox(trap_exit=True)
            linker.link(proxy)
            await asyncio.to_thread(erl.cmd, f"{{stop_server, {server_id}}}")
            assert await box.receive(timeout=WAIT) == (DOWN, ref, PROCESS, proxy, NOCONNECTION)
            assert await linker.receive(timeout=WAIT) == (EXIT, proxy, NOCONNECTION)
            assert client.state == "closed"
        finally:
            await client.close()

    asyncio.run(body())


def test_noconnection_when_python_client_closes(erl_server: int) -> None:
    """Closing the client for good ends its proxies with noconnection, seen by a monitor on a shared node."""

    async def body() -> None:
        async with Node() as node:
            client = await pyfabric.aconnect(HOST, erl_server, SECRET, node=node)
            proxy = await client.whereis("echo")
            box = node.mailbox()
            ref = box.monitor(proxy)
            await client.close()
            assert await box.receive(timeout=WAIT) == (DOWN, ref, PROCESS, proxy, NOCONNECTION)

    asyncio.run(body())


# -- Erlang client, Python server: Erlang watches Python processes ---------------------------


@pytest.fixture
def py_server(erl: Harness) -> Iterator[tuple[Any, int]]:
    """A blocking Python server with a fresh ``victim`` and a ``dead_shipper``, and an Erlang
    harness connection to it; yields ``(server, conn_id)``."""
    server = pyfabric.start_server(HOST, 0, SECRET, allowed=ALLOWED + ["pytrap"])
    conn = None
    try:
        server.spawn(victim, name="victim")
        server.spawn(dead_shipper, name="dead_shipper")
        conn = erl.connect(server.port)
        yield server, conn
    finally:
        if conn is not None:
            erl.cmd_raw(f"{{close, {conn}}}")
        server.close()


def _watch(erl: Harness, conn: int, kind: str) -> int:
    found = erl.whereis(conn, "victim")
    assert found is not None
    handle = found[0]
    erl.cmd(f"{{{kind}, {handle}}}")
    return handle


@pytest.mark.parametrize(
    "trigger, reason",
    [
        ('{die, {custom_failure, 2.5, "text", <<7>>}}', CUSTOM_REASON_ERL),
        ("{die, normal}", "normal"),
        ('{crash, "boom"}', '{python_error,"RuntimeError","boom"}'),
        ("kill", "killed"),
    ],
    ids=["custom", "normal", "crash", "kill"],
)
@pytest.mark.parametrize("kind", ["monitor", "link"])
def test_erlang_watcher_sees_python_exit_reason(erl: Harness, py_server: tuple[Any, int], kind: str, trigger: str, reason: str) -> None:
    """An Erlang monitor ({down, H, R}) or trapping link ({exit, H, R}) on a Python process sees its exit reason: custom, normal, crash, killed."""
    server, conn = py_server
    handle = _watch(erl, conn, kind)
    if trigger == "kill":
        with server.mailbox() as killer:
            killer.exit(server.whereis_local("victim"), KILL)
    else:
        erl.cmd(f"{{send, {{handle, {handle}}}, {trigger}}}")
    tag = "down" if kind == "monitor" else "exit"
    assert erl.events(1) == f"[{{{tag},{handle},{reason}}}]"


def test_erlang_exit2_reaches_python_processes(erl: Harness, py_server: tuple[Any, int]) -> None:
    """Erlang exit(Proxy, R): a trapping Python mailbox gets ('EXIT', SenderProxy, R); a non-trapping process dies with R."""
    server, conn = py_server
    with server.mailbox("pytrap", trap_exit=True) as trap, server.mailbox() as watcher:
        found = erl.whereis(conn, "pytrap")
        assert found is not None
        erl.cmd(f'{{exit, {{handle, {found[0]}}}, {{custom_failure, 2.5, "text", <<7>>}}}}')
        tag, sender, why = trap.receive(timeout=WAIT)
        assert (tag, why) == (EXIT, CUSTOM_REASON)
        assert isinstance(sender, Pid) and sender != trap.pid  # the proxy of the Erlang sender
        # kill is untrappable; a non-trapping victim dies with the custom reason.
        ref = watcher.monitor(server.whereis_local("victim"))
        victim_pid = server.whereis_local("victim")
        handle = _watch(erl, conn, "monitor")
        erl.cmd(f'{{exit, {{handle, {handle}}}, {{custom_failure, 2.5, "text", <<7>>}}}}')
        assert watcher.receive(timeout=WAIT) == (DOWN, ref, PROCESS, victim_pid, CUSTOM_REASON)
        assert erl.events(1) == f"[{{down,{handle},{CUSTOM_REASON_ERL}}}]"
        erl.cmd(f"{{exit, {{handle, {found[0]}}}, kill}}")
        with pytest.raises(pyfabric.ProcessExited):
            trap.receive(timeout=WAIT)


def test_erlang_monitor_on_dead_python_process_gives_noproc(erl: Harness, py_server: tuple[Any, int]) -> None:
    """Python ships the pid of an ended process: the Erlang harness's monitor on it sees noproc."""
    _server, conn = py_server
    reply = erl.cmd(f"{{call, {{name, {conn}, dead_shipper}}, give, 5000}}")
    shipper, dead = pids_in(reply)
    assert shipper != dead
    handle = erl.adopt(dead)
    erl.cmd(f"{{monitor, {handle}}}")
    assert erl.events(1) == f"[{{down,{handle},noproc}}]"


def test_erlang_sees_noconnection_when_python_server_closes(erl: Harness) -> None:
    """An Erlang client without reconnection: closing the Python server ends its proxies with noconnection."""
    server = pyfabric.start_server(HOST, 0, SECRET, allowed=["victim"])
    try:
        server.spawn(victim, name="victim")
        conn = erl.connect(server.port, reconnect="false")
        monitored = _watch(erl, conn, "monitor")
        found = erl.whereis(conn, "victim")
        assert found is not None and found[0] == monitored
        erl.cmd(f"{{link, {monitored}}}")
    finally:
        server.close()
    down, exit_ = f"{{down,{monitored},noconnection}}", f"{{exit,{monitored},noconnection}}"
    assert erl.events(2) in (f"[{down},{exit_}]", f"[{exit_},{down}]")


# -- pids of ended processes keep their identity -----------------------------------------------


def test_dead_python_pid_round_trips_through_erlang_as_same_pid(erl_server: int) -> None:
    """The pid of an ended Python process sent to Erlang's echo comes back as the same pid (as Erlang does)."""
    with pyfabric.connect(HOST, erl_server, SECRET) as client:
        proxy = client.whereis("echo")
        with client.mailbox() as box:
            dead = client.mailbox()
            dead_pid = dead.pid
            dead.close()
            client.send(proxy, (box.pid, dead_pid))
            assert box.receive(timeout=WAIT) == (proxy, dead_pid)


def test_dead_proxy_sent_back_is_the_original_erlang_pid(erl: Harness, erl_server: int) -> None:
    """A proxy of an ended Erlang process, sent back to Erlang, arrives as the original Erlang pid."""
    victim_pid = erl.register_victim("victim")
    erl.cmd("{register, coll, collector}")
    with pyfabric.connect(HOST, erl_server, SECRET) as client:
        proxy = client.whereis("victim")
        with client.mailbox() as box:
            ref = box.monitor(proxy)
            erl.cmd("{exit, victim, kill}")
            assert box.receive(timeout=WAIT) == (DOWN, ref, PROCESS, proxy, KILLED)
            client.send("echo", (box.pid, Atom("sync")))
            box.receive(timeout=WAIT)
            client.send("coll", proxy)
            assert erl.events(1) == "[{collector,coll,%s}]" % victim_pid
