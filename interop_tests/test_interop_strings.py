"""``strings="list"`` against a real erlang_peer: Erlang's [1,2,3] (STRING_EXT) arrives as a list."""

from __future__ import annotations

from interop_support import HOST, SECRET, WAIT, Harness, erl, erl_session  # noqa: F401

import pyfabric
from pyfabric import ANY, Atom


def test_python_server_strings_list_receives_erlang_charlists(erl: Harness) -> None:
    """Erlang sends [1,2,3], "abc" and [300] to a Python server started with strings="list"."""
    server = pyfabric.start_server(HOST, 0, SECRET, allowed=["registrar"], strings="list")
    try:
        registrar = server.mailbox("registrar")
        conn = erl.connect(server.port)
        found = erl.whereis(conn, "registrar")
        assert found is not None
        erl.eval(f'maps:get({found[0]}, get(handles)) ! {{[1,2,3], "abc", [300], #{{k => [7]}}}}, ok')
        assert registrar.receive(timeout=WAIT) == ([1, 2, 3], [97, 98, 99], [300], {Atom("k"): [7]})
        erl.cmd(f"{{close, {conn}}}")
    finally:
        server.close()


def test_python_client_strings_str_and_list_against_erlang_echo(erl: Harness) -> None:
    """The same Erlang echo reply reads as '\\x01\\x02\\x03' by default and [1, 2, 3] with strings="list"."""
    erl.cmd("{start_demo, [echo]}")
    _server, port = erl.start_server(["echo"])
    for strings, expected in (("str", "\x01\x02\x03"), ("list", [1, 2, 3])):
        client = pyfabric.connect(HOST, port, SECRET, strings=strings)
        try:
            box = client.mailbox()
            echo = client.whereis("echo")
            assert echo is not None
            client.send(echo, (box.pid, [1, 2, 3]))
            sender, got = box.receive((ANY, ANY), timeout=WAIT)
            assert sender == echo
            assert got == expected and type(got) is type(expected)
        finally:
            client.close()
