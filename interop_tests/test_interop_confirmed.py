"""Confirmed sends (``mc`` / ``mc_result``, docs/protocol.md 11.8) between pyfabric and a
real erlang_peer, both ways: a delivered message answers ``ok`` (and is in the mailbox when
the call returns), an unregistered name ``noproc``, a name the receiver does not allow
``not_allowed``.

(a) Python ``Client.send_confirmed`` (async) and the blocking facade's -> erlang_peer server.
(b) erlang_peer ``fabric_peer:send_confirmed/3`` -> Python server.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from erlnode import erl_string
from interop_support import HOST, SECRET, WAIT, Harness, erl, erl_session  # noqa: F401

import pyfabric
from pyfabric import ANY, Atom, SendRefused


def test_python_send_confirmed_to_erlang_peer(erl: Harness) -> None:
    erl.cmd("{register, csink, collector}")
    server, port = erl.start_server(["csink", "cghost"])
    try:

        async def body() -> None:
            async with await pyfabric.aconnect(HOST, port, SECRET) as client:
                assert "acks" in client.features, client.features
                await client.send_confirmed("csink", (Atom("hello"), 1), timeout=WAIT)
                # Delivered when the call returned: the collector already has it.
                events = await erl.acmd("{events, 30000, 0}")
                assert "{collector,csink,{hello,1}}" in events, events
                with pytest.raises(SendRefused) as info:
                    await client.send_confirmed("cghost", 2, timeout=WAIT)
                assert info.value.code == "noproc"
                with pytest.raises(SendRefused) as info:
                    await client.send_confirmed("not_allowed_here", 3, timeout=WAIT)
                assert info.value.code == "not_allowed"
                # The connection is intact afterwards.
                await client.send_confirmed("csink", 4, timeout=WAIT)

        asyncio.run(asyncio.wait_for(body(), timeout=60))
        assert "{collector,csink,4}" in erl.events(1)
        with pyfabric.connect(HOST, port, SECRET) as blocking:
            blocking.send_confirmed("csink", Atom("blocking"), timeout=WAIT)
            with pytest.raises(SendRefused) as info:
                blocking.send_confirmed("cghost", 5, timeout=WAIT)
            assert info.value.code == "noproc"
        assert "{collector,csink,blocking}" in erl.events(1)
    finally:
        erl.cmd_raw(f"{{stop_server, {server}}}")
        erl.servers.remove(server)


def test_erlang_peer_send_confirmed_to_python(erl: Harness) -> None:
    async def body() -> None:
        got: list[Any] = []

        async def sink(proc: Any) -> None:
            while True:
                got.append(await proc.receive(ANY))

        server = await pyfabric.serve(HOST, 0, SECRET, allowed=["psink", "pghost"])
        server.spawn(sink, name="psink")
        conn = None
        try:
            conn = int(re.search(r"\d+", await erl.acmd('{connect, "%s", %d, "%s", #{}}' % (HOST, server.port, SECRET))).group(0))  # type: ignore[union-attr]
            erl.conns.append(conn)
            handle = int(re.search(r"handle => (\d+)", await erl.acmd(f"{{whereis, {conn}, psink}}")).group(1))  # type: ignore[union-attr]
            proxy = f"maps:get({handle}, get(handles))"
            ok = await erl.acmd("{eval, %s}" % erl_string(f"fabric_peer:send_confirmed({proxy}, {{hi, 1}}, 5000)."))
            assert ok == "ok", ok
            assert got == [(Atom("hi"), 1)]  # in the mailbox before the result was sent
            by_conn = f"{{fabric_peer_registry:proxy_conn({proxy}), pghost}}"
            refused = await erl.acmd("{eval, %s}" % erl_string(f"fabric_peer:send_confirmed({by_conn}, x, 5000)."))
            assert refused == "{error,noproc}", refused
            by_conn = f"{{fabric_peer_registry:proxy_conn({proxy}), secret_name}}"
            refused = await erl.acmd("{eval, %s}" % erl_string(f"fabric_peer:send_confirmed({by_conn}, x, 5000)."))
            assert refused == "{error,not_allowed}", refused
            by_conn = f"{{fabric_peer_registry:proxy_conn({proxy}), psink}}"
            ok = await erl.acmd("{eval, %s}" % erl_string(f"fabric_peer:send_confirmed({by_conn}, {{hi, 2}}, 5000)."))
            assert ok == "ok" and got == [(Atom("hi"), 1), (Atom("hi"), 2)], (ok, got)
        finally:
            if conn is not None:
                await erl.acmd(f"{{close, {conn}}}")
                erl.conns.remove(conn)
            await server.close()

    asyncio.run(asyncio.wait_for(body(), timeout=60))
