"""Each user-facing error: a pyfabric exception whose message says what happened and what to do."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest
from transport_helpers import HOST, SECRET, WAIT, arun, connect, start_server, wait_for

import pyfabric
from pyfabric import AuthenticationError, ClientClosed, ConnectFailed, NotConnected, ServerClosed, TransportError


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose listening socket never accepts and whose backlog is full: connects hang."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect((HOST, port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    time.sleep(0.05)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_connect_timeout_says_timed_out(full_backlog: int) -> None:
    async def body() -> None:
        with pytest.raises(ConnectFailed) as info:
            await pyfabric.aconnect(HOST, full_backlog, SECRET, connect_timeout=0.3, reconnect=False)
        assert str(info.value) == (
            f"cannot connect to {HOST}:{full_backlog}: timed out after 0.3 s (connect_timeout); "
            "check that a fabric server is running there and reachable"
        )

    arun(body)


@pytest.mark.parametrize("when_disconnected", ["error", "wait"])
def test_whereis_while_reconnecting_raises_not_connected(when_disconnected: str) -> None:
    async def body() -> None:
        server = await start_server()
        client = await connect(server, when_disconnected=when_disconnected, connect_timeout=0.3)
        port = server.port
        try:
            assert await client.whereis("ping") is not None
            await server.close()
            await wait_for(lambda: client.state == "reconnecting", what="client reconnecting")
            started = time.monotonic()
            with pytest.raises(NotConnected) as info:
                await client.whereis("ping")
            waited = time.monotonic() - started
            if when_disconnected == "error":
                assert str(info.value) == (
                    f"whereis('ping'): not connected to {HOST}:{port} (reconnecting); "
                    "retry later, or pass when_disconnected='wait' to wait for the reconnection"
                )
                assert waited < WAIT
            else:
                assert str(info.value) == (
                    f"whereis('ping'): still not connected to {HOST}:{port} after 0.3 s "
                    "(connect_timeout); retry later or await wait_connected()"
                )
                assert waited >= 0.3
        finally:
            await client.close()
        with pytest.raises(NotConnected, match="the client of .* is closed"):
            await client.whereis("ping")

    arun(body)


def test_blocking_calls_after_close_raise_typed_errors() -> None:
    server = pyfabric.start_server(HOST, 0, SECRET, allowed=["ping"])
    port = server.port
    client = pyfabric.connect(HOST, port, SECRET)
    box = client.mailbox()
    client.close()
    for call in (lambda: client.whereis("ping"), client.mailbox, lambda: box.receive(timeout=0.1)):
        with pytest.raises(ClientClosed) as info:
            call()
        assert isinstance(info.value, TransportError) and isinstance(info.value, RuntimeError)
        assert str(info.value) == f"the client of {HOST}:{port} is closed; call pyfabric.connect() again for a new one"
    server.close()
    with pytest.raises(ServerClosed) as sinfo:
        server.mailbox()
    assert isinstance(sinfo.value, TransportError)
    assert str(sinfo.value) == f"the server on {HOST}:0 is closed; call pyfabric.start_server() again for a new one"


def test_caught_authentication_error_logs_once_on_the_server_only(caplog: pytest.LogCaptureFixture) -> None:
    server = pyfabric.start_server(HOST, 0, SECRET)
    try:
        with caplog.at_level(logging.DEBUG, logger="pyfabric"):
            with pytest.raises(AuthenticationError) as info:
                pyfabric.connect(HOST, server.port, b"not the secret", reconnect=False)
            assert "refused authentication (wrong secret?)" in str(info.value)
            deadline = time.monotonic() + WAIT
            while not [r for r in caplog.records if r.levelno >= logging.WARNING] and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.1)  # anything else the server would log about this connection
    finally:
        server.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    (warning,) = warnings
    assert warning.name == "pyfabric.transport"
    assert warning.getMessage().startswith("client 127.0.0.1:") and "authentication failed: wrong secret" in warning.getMessage()
