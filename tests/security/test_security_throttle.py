"""Per-address throttling of failed authentications: unit (fake clock) and live."""

from __future__ import annotations

import asyncio
import logging

import pytest
from transport_helpers import HOST, WAIT, arun, close_writer, connect, frame, read_frame, start_server, wait_for

from pyfabric import Atom, AuthenticationError, ConnectFailed
from pyfabric.transport import (
    DEFAULT_AUTH_BLOCK_TIME,
    DEFAULT_AUTH_FAILURE_WINDOW,
    DEFAULT_MAX_AUTH_FAILURES,
    AuthThrottle,
)
from pyfabric.transport._throttle import address_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_defaults() -> None:
    assert (DEFAULT_MAX_AUTH_FAILURES, DEFAULT_AUTH_FAILURE_WINDOW, DEFAULT_AUTH_BLOCK_TIME) == (5, 60.0, 60.0)


def test_blocks_after_n_failures_within_the_window_then_cools_down() -> None:
    clock = Clock()
    throttle = AuthThrottle(3, 10.0, 30.0, clock=clock)
    assert [throttle.failed("10.0.0.1") for _ in range(2)] == [False, False]
    assert throttle.blocked("10.0.0.1") == (0.0, False)
    assert throttle.failed("10.0.0.1") is True
    assert throttle.blocked("10.0.0.1") == (30.0, True)  # first refusal: logged as a warning
    clock.now += 10
    assert throttle.blocked("10.0.0.1") == (20.0, False)
    assert throttle.blocked("10.0.0.2") == (0.0, False)  # other addresses are not affected
    clock.now += 20
    assert throttle.blocked("10.0.0.1") == (0.0, False)
    assert len(throttle) == 0  # forgotten once the block and its failures are over


def test_failures_outside_the_window_do_not_add_up() -> None:
    clock = Clock()
    throttle = AuthThrottle(3, 10.0, 30.0, clock=clock)
    for _ in range(10):
        assert throttle.failed("10.0.0.1") is False
        clock.now += 6  # at most two failures inside any 10 s window
    assert throttle.blocked("10.0.0.1") == (0.0, False)


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("::ffff:10.1.2.3") == "10.1.2.3"
    throttle = AuthThrottle(2, 10.0, 30.0, clock=Clock())
    throttle.failed("2001:db8::1")
    assert throttle.failed("2001:db8::2") is True
    assert throttle.blocked("2001:db8::3")[0] > 0


def test_tracked_addresses_are_bounded() -> None:
    throttle = AuthThrottle(5, 10.0, 30.0, max_addresses=100, clock=Clock())
    for i in range(10_000):
        throttle.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(throttle) == 100


def test_zero_disables() -> None:
    throttle = AuthThrottle(0, 10.0, 30.0, clock=Clock())
    assert not any(throttle.failed("10.0.0.1") for _ in range(100))
    assert throttle.blocked("10.0.0.1") == (0.0, False)
    with pytest.raises(ValueError):
        AuthThrottle(-1)


async def raw_legacy_attempt(port: int) -> object:
    """One original-client handshake with a wrong secret; the server's answer (None: closed)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(frame((Atom("hello"), "localhost")))
        tag, _challenge = await read_frame(reader)
        writer.write(frame((Atom("response"), "0" * 32)))
        return await read_frame(reader)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    finally:
        await close_writer(writer)


def test_live_server_blocks_a_guessing_address_logs_it_and_unblocks(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        server = await start_server(max_auth_failures=3, auth_failure_window=60, auth_block_time=0.5, allow_legacy_auth=True)
        try:
            async with await connect(server) as good:  # connected before: not affected
                for _ in range(2):
                    with pytest.raises(AuthenticationError):
                        await connect(server, secret=b"wrong")
                assert await raw_legacy_attempt(server.port) == (Atom("auth"), Atom("failed"))
                stats = server.statistics()
                assert stats["auth_failures"] == 3
                # Blocked: even the right secret is refused before any handshake.
                with pytest.raises(ConnectFailed):
                    await connect(server, reconnect=False)
                assert server.statistics()["connections_throttled"] >= 1
                assert good.state == "connected"
                # The block ends (auth_block_time 0.5 s): polled, no timing assertion.
                async with asyncio.timeout(WAIT):
                    while True:
                        try:
                            late = await connect(server, reconnect=False)
                            break
                        except ConnectFailed:
                            await asyncio.sleep(0.05)
                await late.close()
        finally:
            await server.close()

    with caplog.at_level(logging.WARNING, logger="pyfabric"):
        arun(body)
    text = caplog.text
    assert "client 127.0.0.1:" in text and "authentication failed" in text
    assert "3 failed authentications from 127.0.0.1" in text
    assert "too many failed authentications from 127.0.0.1" in text


def test_silent_clients_are_counted_like_guesses() -> None:
    """A handshake that times out counts as a failed authentication of its address: a host
    that keeps connections idle is blocked like one that guesses (issue 11 item 2)."""

    async def body() -> None:
        server = await start_server(max_auth_failures=2, handshake_timeout=0.3)
        try:
            for _ in range(2):
                reader, writer = await asyncio.open_connection(HOST, server.port)
                with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                    await reader.readexactly(1)  # closed after the handshake timeout
                await close_writer(writer)
            await wait_for(lambda: server.statistics()["handshaking"] == 0)
            stats = server.statistics()
            assert stats["handshake_timeouts"] == 2 and stats["auth_failures"] == 2
            with pytest.raises(ConnectFailed):
                await connect(server, handshake_timeout=5, reconnect=False)
            assert server.statistics()["connections_throttled"] == 1
        finally:
            await server.close()

    arun(body, allow_errors_from=("pyfabric.server",))
