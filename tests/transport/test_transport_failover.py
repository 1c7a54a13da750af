"""Client failover (issue 14): ``aconnect`` / ``connect`` with ``fallbacks=[(host, port), ...]``.

Addresses are tried in order at the first connection and at every reconnection (the server of
the current session first). A server that does not know the session (another Python server)
refuses its resume: the client gets a new session there, the old server's proxies end with
``noconnection`` and names are resolved again on the new server; a server that still keeps the
session (the same server at another address) resumes it and proxies keep their identity.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from transport_helpers import (
    DOWN,
    HOST,
    NOCONNECTION,
    PONG,
    PROCESS,
    SECRET,
    WAIT,
    Relay,
    arun,
    connect,
    pair,
    ping,
    served,
    wait_for,
)

import pyfabric
from pyfabric import ANY, ConnectFailed, Pid

FAILOVER_WITHIN = 5.0
"""Issue 14: the client is on the second server within 5 s of losing the first."""


def unused_port() -> int:
    """A port nothing listens on (bound by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def test_failover_to_the_next_server_new_session_noconnection() -> None:
    async def body() -> None:
        async with served() as b, pair(fallbacks=[(HOST, b.port)]) as (a, client):
            assert (client.host, client.port) == (HOST, a.port)
            assert client.addresses == ((HOST, a.port), (HOST, b.port))
            old = await client.whereis("ping")
            assert isinstance(old, Pid)
            box = client.mailbox()
            ref = box.monitor(old)
            await a.close()  # the first server goes away for good
            down = await box.receive(match=(DOWN, ref, PROCESS, old, ANY), timeout=FAILOVER_WITHIN)
            assert down[4] == NOCONNECTION  # as Erlang on nodedown
            await client.wait_connected(FAILOVER_WITHIN)
            assert client.port == b.port
            stats = client.statistics()
            assert stats["server"] == f"{HOST}:{b.port}" and stats["failovers"] == 1 and stats["reconnects"] == 1
            # Names are resolved again, on the new server.
            client.send("ping", (box.pid, "after"))
            sender, reply = await box.receive(match=(ANY, (PONG, "after")), timeout=WAIT)
            new = await client.whereis("ping")
            assert sender == new and new != old and client.node.is_alive(new) and not client.node.is_alive(old)
            client.send(old, (box.pid, "to the old proxy"))  # a dead proxy: dropped, as in Erlang

    arun(body)


def test_first_connection_tries_the_addresses_in_order() -> None:
    async def body() -> None:
        dead = unused_port()
        async with served() as b:
            client = await connect(dead, fallbacks=[(HOST, b.port)])
            try:
                assert client.port == b.port and client.statistics()["failovers"] == 0
                async with client.mailbox() as box:
                    client.send("ping", (box.pid, 1))
                    assert await box.receive(match=(ANY, (PONG, 1)), timeout=WAIT)
            finally:
                await client.close()
            other_dead = unused_port()
            with pytest.raises(ConnectFailed) as failed:
                await connect(dead, fallbacks=[(HOST, other_dead)])
            assert f":{dead}" in str(failed.value) and f":{other_dead}" in str(failed.value)

    arun(body)


def test_a_server_that_keeps_the_session_resumes_it() -> None:
    """The first address is a relay in front of the server, the fallback the server itself:
    the relay dies, the client moves to the fallback, which resumes the session."""

    async def body() -> None:
        async with served() as server:
            relay = Relay(server.port)
            await relay.__aenter__()
            client = await connect(relay.port, fallbacks=[(HOST, server.port)])
            try:
                ping = await client.whereis("ping")
                box = client.mailbox()
                ref = box.monitor(ping)
                await relay.__aexit__(None, None, None)  # that path is gone, and its port closed
                await wait_for(lambda: client.port == server.port and client.state == "connected", FAILOVER_WITHIN)
                assert client.statistics()["failovers"] == 1
                client.send(ping, (box.pid, "same proxy"))
                assert await box.receive(timeout=WAIT) == (ping, (PONG, "same proxy"))
                assert box.demonitor(ref)  # never fired: the session was resumed
            finally:
                await client.close()

    arun(body)


def test_fallbacks_are_checked() -> None:
    async def body() -> None:
        for bad, error in (("host:1", TypeError), ([("h",)], TypeError), ([(HOST, "1")], TypeError), ([(HOST, 0)], ValueError)):
            with pytest.raises(error):
                await pyfabric.aconnect(HOST, 1, SECRET, fallbacks=bad)  # type: ignore[arg-type]

    arun(body)


SERVED = """
async def ping(proc):
    while True:
        sender, msg = await proc.receive()
        proc.send(sender, (proc.pid, (__import__("pyfabric").Atom("pong"), msg)))

PROCESSES = {"ping": ping}
"""


def test_blocking_client_fails_over_when_its_server_is_killed(tmp_path: Path) -> None:
    """A server in another process killed with SIGKILL: the blocking client is on the
    fallback within 5 s; its proxies of the killed server end with noconnection."""
    (tmp_path / "failover_served.py").write_text(SERVED)
    env = dict(os.environ, PYFABRIC_SECRET=SECRET.decode())
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyfabric", "serve", "--module", "failover_served"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        assert m, line + (proc.stderr.read() if proc.stderr else "")
        with pyfabric.start_server(HOST, 0, SECRET, allowed=["ping"]) as fallback:
            fallback.spawn(ping, name="ping")
            with pyfabric.connect(HOST, int(m.group(1)), SECRET, fallbacks=[(HOST, fallback.port)], backoff_initial=0.05) as client:
                old = client.whereis("ping")
                with client.mailbox() as box:
                    ref = box.monitor(old)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=10)
                    down = box.receive(match=(DOWN, ref, PROCESS, old, ANY), timeout=FAILOVER_WITHIN)
                    assert down[4] == NOCONNECTION
                    client.wait_connected(FAILOVER_WITHIN)
                    assert client.statistics()["server"] == f"{HOST}:{fallback.port}"
                    client.send("ping", (box.pid, "on the fallback"))
                    sender, reply = box.receive(timeout=WAIT)
                    assert reply == (PONG, "on the fallback") and sender != old
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_no_fallbacks_means_one_address() -> None:
    async def body() -> None:
        async with pair() as (server, client):
            assert client.addresses == ((HOST, server.port),)
            client.drop_connection()
            await wait_for(lambda: client.reconnects == 1 and client.state == "connected")
            assert client.statistics()["failovers"] == 0

    arun(body)

