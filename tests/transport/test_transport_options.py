"""Options reach the protocol core through one record (PeerOptions -> ConnectionConfig),
and the public hooks of servers and clients (issue 10)."""

from __future__ import annotations

import pytest
from transport_helpers import HOST, SECRET, arun, connect, pair, start_server, wait_for

from pyfabric import aconnect, serve
from pyfabric.transport._options import PeerOptions


def test_peer_options_pass_everything_else_to_the_connection_config() -> None:
    options = PeerOptions.build(SECRET, heartbeat=2.5, compress=True, max_errors=3, allowed=("ping",))
    config = options.config
    assert (config.max_errors, config.compress_messages, config.heartbeat_interval) == (3, True, 2500)
    assert config.allowed("ping") and not config.allowed("pong")
    without = PeerOptions.build(SECRET, heartbeat=2.5, features={"whereis"})
    assert without.config.heartbeat_interval == 0 and without.heartbeat_ms == 0
    with pytest.raises(TypeError, match="max_frmae"):
        PeerOptions.build(SECRET, max_frmae=10)
    with pytest.raises(ValueError, match="when_disconnected"):
        PeerOptions.build(SECRET, when_disconnected="later")


def test_serve_and_aconnect_take_connection_options_by_name() -> None:
    async def body() -> None:
        server = await start_server(max_errors=3, max_proxies=9)
        try:
            assert (server.options.config.max_errors, server.options.config.max_proxies) == (3, 9)
            client = await connect(server, max_exports=11, reconnect=False)
            try:
                assert client.options.config.max_exports == 11
            finally:
                await client.close()
            with pytest.raises(TypeError, match="max_frmae"):
                await aconnect(HOST, server.port, SECRET, max_frmae=1)
            with pytest.raises(TypeError, match="when_disconnected"):
                await serve(HOST, 0, SECRET, when_disconnected="error")
        finally:
            await server.close()

    arun(body)


def test_server_connections_and_client_hooks() -> None:
    async def body() -> None:
        async with pair() as (server, client):
            assert client.writable and client.get_extra_info("peername")[0] == HOST
            (connection,) = server.connections()
            assert connection == server.connections()[0] and len({connection, server.connections()[0]}) == 1
            assert connection.established and connection.mode == "extended" and "session" in connection.features
            assert connection.peername == client.get_extra_info("sockname")
            assert connection.get_extra_info("no such thing", "dflt") == "dflt"
            with pytest.raises(ValueError):
                server.max_connections = -1
            server.max_connections = 5
            assert server.max_connections == 5
            connection.abort()
            await wait_for(lambda: connection not in server.connections())
            assert not connection.established

    arun(body)
