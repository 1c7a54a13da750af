"""The ``strings=`` connection option: received charlists as ``str`` (default) or ``list``."""

from __future__ import annotations

import pytest
from transport_helpers import PONG, SECRET, WAIT, arun, pair

import pyfabric
from pyfabric import Atom
from pyfabric.protocol import ConnectionConfig


@pytest.mark.parametrize(("server_strings", "client_strings"), [("str", "str"), ("list", "list"), ("list", "str"), ("str", "list")])
def test_strings_option_on_both_sides(server_strings: str, client_strings: str) -> None:
    """The server's ping echoes what it decoded; the client decodes the echo with its own option."""

    def seen(ints: list[int]) -> object:
        return ints if client_strings == "list" else "".join(map(chr, ints))

    async def body() -> None:
        async with pair({"strings": server_strings}, strings=client_strings) as (_server, client):
            ping = await client.whereis("ping")
            async with client.mailbox() as box:
                client.send(ping, (box.pid, ([1, 2, 3], "abc", {Atom("k"): [7, 8]}, [1, 300])))
                _sender, reply = await box.receive(timeout=WAIT)
                assert reply[0] == PONG
                ints, text, mapping, big = reply[1]
                assert ints == seen([1, 2, 3]) and type(ints) is type(seen([]))
                assert text == seen([97, 98, 99])
                assert mapping == {Atom("k"): seen([7, 8])}
                assert big == [1, 300]  # LIST_EXT (300 > 255) is a list in both modes

    arun(body)


def test_strings_option_is_checked() -> None:
    with pytest.raises(ValueError, match="strings must be 'str' or 'list'"):
        ConnectionConfig.build(SECRET, strings="bytes")
    assert ConnectionConfig.build(SECRET).strings == "str"


def test_blocking_connect_with_strings_list() -> None:
    server = pyfabric.start_server("127.0.0.1", 0, secret=SECRET, strings="list", allowed=["sink"])
    try:
        box = server.mailbox("sink")
        server_port = server.port
        client = pyfabric.connect("127.0.0.1", server_port, secret=SECRET, strings="list")
        try:
            mine = client.mailbox()
            client.send("sink", (mine.pid, [1, 2, 3]))
            sender, value = box.receive(timeout=WAIT)
            assert value == [1, 2, 3] and type(value) is list
            server.send(sender, [4, 5])
            assert mine.receive(timeout=WAIT) == [4, 5]
        finally:
            client.close()
    finally:
        server.close()
