"""Legacy (original 2010 protocol) interop with a real Erlang node.

The harness's client in ``mode => legacy`` speaks exactly the original's frames (MD5
handshake, ``{m, Dest, Payload}``, DEAD with ``noproc`` -> ``normal``). Against a Python
server with ``allow_legacy_auth=True`` the seed ping works, maps and bitstrings are refused
locally by the Erlang sender, and a DEAD ``noproc`` ends the Erlang proxy with ``normal``;
without ``allow_legacy_auth`` the Python server refuses the client. A Python client with
``allow_legacy_auth=True`` still negotiates the extended protocol with our Erlang server,
unless that server is legacy-only (``mode => legacy``, which answers exactly as the original
server): then the Python client speaks legacy (no whereis, maps refused locally, DEAD
``noproc`` -> ``normal``), and refuses it without ``allow_legacy_auth``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from interop_support import (  # noqa: F401
    DIE,
    DOWN,
    HOST,
    NOPROC,
    NORMAL,
    PAYLOAD,
    PONG,
    PROCESS,
    SECRET,
    WAIT,
    Harness,
    _field,
    erl,
    erl_session,
    pids_in,
    ping,
    victim,
)

import pyfabric
from pyfabric import ANY, Atom, AuthenticationError, FeatureNotSupported, LocalProtocolError

LEGACY = {"mode": "legacy", "allow_legacy_auth": "true"}


@pytest.fixture
def legacy_server(erl: Harness) -> Iterator[tuple[Any, int]]:
    """A blocking Python server accepting MD5 (legacy) clients, with ping and victim, and a
    legacy-mode Erlang harness connection to it. Yields (server, conn)."""
    server = pyfabric.start_server(HOST, 0, SECRET, allowed=["ping", "victim"], allow_legacy_auth=True)
    conn = None
    try:
        server.spawn(ping, name="ping")
        server.spawn(victim, name="victim")
        conn = erl.connect(server.port, **LEGACY)
        yield server, conn
    finally:
        if conn is not None:
            erl.cmd_raw(f"{{close, {conn}}}")
        server.close()


def test_legacy_erlang_client_seed_ping(erl: Harness, legacy_server: tuple[Any, int]) -> None:
    """A legacy Erlang client: no whereis (not_supported), but the seed ping by name works and the returned pid answers again."""
    _server, conn = legacy_server
    info = erl.cmd(f"{{info, {conn}}}")
    assert "mode => legacy" in info and "features => []" in info, info
    assert erl.cmd(f"{{whereis, {conn}, ping}}") == "{error,not_supported}"
    reply = erl.cmd(f'{{call, {{name, {conn}, ping}}, {{payload, "abababa"}}, 5000}}')
    (ping_pid,) = pids_in(reply)
    assert reply == '{%s,{pong,{payload,"abababa"}}}' % ping_pid
    handle = erl.adopt(ping_pid)
    assert erl.cmd(f"{{call, {{handle, {handle}}}, again, 5000}}") == "{%s,{pong,again}}" % ping_pid
    # Rich payloads (pids inside, nested tuples, a reference) travel in legacy mode too.
    reply = erl.cmd(f'{{call, {{name, {conn}, ping}}, {{[1, {{2, "x"}}], 2.5, <<"b">>, -99999999999999999999}}, 5000}}')
    assert reply == '{%s,{pong,{[1,{2,"x"}],2.5,<<"b">>,-99999999999999999999}}}' % ping_pid


def test_legacy_erlang_client_refuses_maps_locally(erl: Harness, legacy_server: tuple[Any, int]) -> None:
    """Maps and non-byte bitstrings cannot go to a legacy peer: the Erlang sender refuses them locally, the connection stays up."""
    _server, conn = legacy_server
    assert erl.cmd_raw(f"{{send, {{name, {conn}, ping}}, #{{a => 1}}}}") == ("error", "{unsupported,map}")
    assert erl.cmd_raw(f"{{send, {{name, {conn}, ping}}, {{x, [#{{}}]}}}}") == ("error", "{unsupported,map}")
    assert erl.cmd_raw(f"{{send, {{name, {conn}, ping}}, <<1:3>>}}") == ("error", "{unsupported,bitstring}")
    reply = erl.cmd(f"{{call, {{name, {conn}, ping}}, still_up, 5000}}")
    assert reply.endswith(",{pong,still_up}}"), reply


@pytest.mark.parametrize("mode, seen", [("legacy", "normal"), ("extended", "noproc")])
def test_dead_noproc_becomes_normal_only_in_legacy(erl: Harness, mode: str, seen: str) -> None:
    """A Python process ending with noproc: a legacy Erlang client's monitor sees normal (the original's rule), an extended one noproc."""
    server = pyfabric.start_server(HOST, 0, SECRET, allowed=["victim"], allow_legacy_auth=True)
    conn = None
    try:
        server.spawn(victim, name="victim")
        conn = erl.connect(server.port, **(LEGACY if mode == "legacy" else {}))
        reply = erl.cmd(f"{{call, {{name, {conn}, victim}}, hello, 5000}}")
        (victim_pid,) = pids_in(reply)
        handle = erl.adopt(victim_pid)
        erl.cmd(f"{{monitor, {handle}}}")
        erl.cmd(f"{{send, {{handle, {handle}}}, {{die, noproc}}}}")
        assert erl.events(1) == f"[{{down,{handle},{seen}}}]"
        # Other reasons are the real ones in both modes.
        server.spawn(victim, name="victim")
        reply = erl.cmd(f"{{call, {{name, {conn}, victim}}, hello, 5000}}")
        handle = erl.adopt(pids_in(reply)[0])
        erl.cmd(f"{{monitor, {handle}}}")
        erl.cmd(f'{{send, {{handle, {handle}}}, {{die, {{custom_failure, 2.5, "text", <<7>>}}}}}}')
        assert erl.events(1) == f'[{{down,{handle},{{custom_failure,2.5,"text",<<7>>}}}}]'
    finally:
        if conn is not None:
            erl.cmd_raw(f"{{close, {conn}}}")
        server.close()


def test_python_server_refuses_legacy_client_by_default(erl: Harness) -> None:
    """Without allow_legacy_auth the Python server answers the legacy Erlang client {auth, failed}; extended clients still get in."""
    server = pyfabric.start_server(HOST, 0, SECRET, allowed=["ping"])
    try:
        server.spawn(ping, name="ping")
        status, term = erl.cmd_raw('{connect, "127.0.0.1", %d, "%s", #{mode => legacy, allow_legacy_auth => true, '
                                   'reconnect => false}}' % (server.port, SECRET))
        assert (status, term) == ("error", "{auth_failed,refused_by_server}")
        conn = erl.connect(server.port)
        assert erl.cmd(f'{{ping, {conn}, ping, {{payload, "abababa"}}}}') == '{pong,{payload,"abababa"}}'
        erl.cmd(f"{{close, {conn}}}")
    finally:
        server.close()


def test_python_server_allowing_legacy_still_speaks_extended_to_erlang(erl: Harness) -> None:
    """allow_legacy_auth=True on the Python server does not downgrade an extended Erlang client (whereis works, mode extended)."""
    server = pyfabric.start_server(HOST, 0, SECRET, allowed=["ping"], allow_legacy_auth=True)
    try:
        server.spawn(ping, name="ping")
        conn = erl.connect(server.port)
        assert "mode => extended" in erl.cmd(f"{{info, {conn}}}")
        assert erl.cmd(f'{{ping, {conn}, ping, {{payload, "abababa"}}}}') == '{pong,{payload,"abababa"}}'
        erl.cmd(f"{{close, {conn}}}")
    finally:
        server.close()


def test_python_client_allowing_legacy_gets_extended_erlang_server(erl: Harness) -> None:
    """A Python client with allow_legacy_auth=True against an Erlang server with allow_legacy_auth => true: still extended, seed works."""
    erl.cmd("{start_demo, [ping]}")
    _server, port = erl.start_server(["ping"], allow_legacy_auth="true")

    async def body() -> None:
        async with await pyfabric.aconnect(HOST, port, SECRET, allow_legacy_auth=True) as client:
            assert client.mode == "extended"
            assert "whereis" in client.features and "maps" in client.features
            proxy = await client.whereis("ping")
            box = client.mailbox()
            client.send(proxy, (box.pid, (PAYLOAD, "abababa")))
            assert await box.receive((ANY, ANY), timeout=WAIT) == (proxy, (PONG, (PAYLOAD, "abababa")))

    asyncio.run(body())


def test_python_legacy_client_against_legacy_only_erlang_server(erl: Harness) -> None:
    """A Python client with allow_legacy_auth=True against a legacy-only Erlang server (mode => legacy): legacy mode, seed ping by name, whereis FeatureNotSupported, maps refused before writing, DEAD noproc -> normal both ways."""
    erl.cmd("{start_demo, [ping]}")
    erl.cmd("{register, legacy_coll, collector}")
    erl.register_victim("legacy_victim")
    server, port = erl.start_server(["ping", "legacy_coll", "legacy_victim"], mode="legacy", allow_legacy_auth="true")

    async def body() -> None:
        async with await pyfabric.aconnect(HOST, port, SECRET, allow_legacy_auth=True, reconnect=False) as client:
            assert client.mode == "legacy"
            with pytest.raises(FeatureNotSupported):
                await client.whereis("ping")
            box = client.mailbox()
            client.send("ping", (box.pid, (PAYLOAD, "abababa")))
            ping_proxy, reply = await box.receive((ANY, ANY), timeout=WAIT)
            assert reply == (PONG, (PAYLOAD, "abababa"))
            # The pid that answered answers again (the seed's second step).
            client.send(ping_proxy, (box.pid, Atom("again")))
            assert await box.receive((ANY, ANY), timeout=WAIT) == (ping_proxy, (PONG, Atom("again")))
            # Maps are refused by the Python sender before anything is written.
            frames_before = await erl.acmd(f"{{info, {server}}}")
            with pytest.raises(LocalProtocolError):
                client.send("ping", (box.pid, {Atom("a"): 1}))
            client.send(ping_proxy, (box.pid, Atom("still_up")))
            assert await box.receive((ANY, ANY), timeout=WAIT) == (ping_proxy, (PONG, Atom("still_up")))
            frames_after = await erl.acmd(f"{{info, {server}}}")
            assert _field(frames_after, "errors") == _field(frames_before, "errors") == "0"
            assert int(_field(frames_after, "frames_in")) == int(_field(frames_before, "frames_in")) + 1
            # DEAD noproc from Python: the legacy Erlang server's monitor sees normal.
            doomed = client.spawn(victim)
            client.send("legacy_coll", doomed)
            (doomed_text,) = pids_in(await asyncio.to_thread(erl.events, 1))
            handle = erl.adopt(doomed_text)
            await erl.acmd(f"{{monitor, {handle}}}")
            client.send(doomed, (DIE, NOPROC))
            assert await asyncio.to_thread(erl.events, 1) == f"[{{down,{handle},normal}}]"
            # DEAD noproc from the Erlang server: the Python client's monitor sees normal too.
            client.send("legacy_victim", (box.pid, Atom("hello")))
            victim_proxy, _ = await box.receive((ANY, Atom("hello")), timeout=WAIT)
            ref = box.monitor(victim_proxy)
            client.send(victim_proxy, (DIE, NOPROC))
            assert await box.receive(timeout=WAIT) == (DOWN, ref, PROCESS, victim_proxy, NORMAL)

    asyncio.run(body())


def test_python_client_refuses_legacy_only_erlang_server_by_default(erl: Harness) -> None:
    """Without allow_legacy_auth the Python client refuses a legacy-only Erlang server (an original, MD5-only peer)."""
    _server, port = erl.start_server(["ping"], mode="legacy", allow_legacy_auth="true")

    async def body() -> None:
        with pytest.raises(AuthenticationError, match="original"):
            await pyfabric.aconnect(HOST, port, SECRET, reconnect=False)

    asyncio.run(body())
