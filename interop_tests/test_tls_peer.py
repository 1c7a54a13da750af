"""TLS between pyfabric and erlang_peer (the `tls` option of `start_server/3` and
`connect/4`), with certificates made by `pyfabric.certs` for this run: verified both ways,
mutual TLS both ways, and refusals (unknown CA, missing client certificate)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from erlnode import ErlangCommandError, ErlangNode, erl_string

import pyfabric
from pyfabric import ANY, Atom, ConnectFailed
from pyfabric.certs import DevCerts, write_dev_certs
from pyfabric.tls import client_context, server_context

HOST = "127.0.0.1"
SECRET = "tls-secret"
WAIT = 5.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return write_dev_certs(tmp_path_factory.mktemp("certs"), clients=["alice"])


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return write_dev_certs(tmp_path_factory.mktemp("other"), clients=["mallory"])


@pytest.fixture(scope="module")
def node():
    with ErlangNode() as n:
        n.command("{start_demo, [ping]}")
        yield n


def erl_tls(*pairs: tuple[str, object]) -> str:
    """An Erlang ssl option list; str values become Erlang strings (paths)."""
    items = []
    for key, value in pairs:
        if isinstance(value, Path):
            value = erl_string(str(value))
        items.append(f"{{{key}, {value}}}")
    items.append("{versions, ['tlsv1.3', 'tlsv1.2']}")
    return "[" + ", ".join(items) + "]"


def erl_server(node: ErlangNode, certs: DevCerts, *extra: tuple[str, object]) -> int:
    tls = erl_tls(("certfile", certs.server_cert), ("keyfile", certs.server_key), *extra)
    return node.start_server(SECRET, allowed=["ping"], tls=tls)


async def python_ping(port: int, ctx, **kw) -> object:
    async with await pyfabric.aconnect(HOST, port, SECRET, ssl=ctx, reconnect=False, **kw) as client:
        box = client.mailbox()
        ping = await client.whereis("ping")
        client.send(ping, (box.pid, (Atom("payload"), "over tls")))
        _, reply = await box.receive(match=(ping, ANY), timeout=WAIT)
        return reply


def test_python_client_verifies_the_erlang_tls_server(node: ErlangNode, certs: DevCerts, other: DevCerts) -> None:
    port = erl_server(node, certs)
    reply = asyncio.run(python_ping(port, client_context(certs.ca_cert)))
    assert reply == (Atom("pong"), (Atom("payload"), "over tls"))
    with pytest.raises(ConnectFailed):
        asyncio.run(python_ping(port, client_context(other.ca_cert)))
    with pytest.raises(ConnectFailed):
        asyncio.run(python_ping(port, client_context(certs.ca_cert), server_hostname="fabric.example"))


def test_mutual_tls_python_client_erlang_server(node: ErlangNode, certs: DevCerts) -> None:
    port = erl_server(
        node, certs, ("cacertfile", certs.ca_cert), ("verify", "verify_peer"), ("fail_if_no_peer_cert", "true")
    )
    cert, key = certs.clients["alice"]
    reply = asyncio.run(python_ping(port, client_context(certs.ca_cert, certfile=cert, keyfile=key)))
    assert reply == (Atom("pong"), (Atom("payload"), "over tls"))
    with pytest.raises(ConnectFailed):
        asyncio.run(python_ping(port, client_context(certs.ca_cert)))


async def ping(proc):
    while True:
        sender, msg = await proc.receive((ANY, ANY))
        proc.send(sender, (proc.pid, (Atom("pong"), msg)))


def erl_connect_ping(node: ErlangNode, port: int, tls: str) -> str:
    reply = node.command(f'{{connect, "{HOST}", {port}, {erl_string(SECRET)}, #{{tls => {tls}, reconnect => false}}}}', timeout=20)
    conn = reply.split("id => ")[1].rstrip("}").strip()
    try:
        return node.command(f"{{ping, {conn}, ping, {{payload, tls}}}}", timeout=20)
    finally:
        node.command(f"{{close, {conn}}}")


@pytest.mark.parametrize("mutual", [False, True])
def test_erlang_client_verifies_the_python_tls_server(node: ErlangNode, certs: DevCerts, other: DevCerts, mutual: bool) -> None:
    if mutual:
        ctx = server_context(certs.server_cert, certs.server_key, cafile=certs.ca_cert, require_client_cert=True)
    else:
        ctx = server_context(certs.server_cert, certs.server_key)
    with pyfabric.start_server(HOST, 0, SECRET, allowed=["ping"], ssl=ctx) as server:
        server.spawn(ping, name="ping")
        verify = [("verify", "verify_peer"), ("cacertfile", certs.ca_cert), ("server_name_indication", '"localhost"')]
        client = [("certfile", certs.clients["alice"][0]), ("keyfile", certs.clients["alice"][1])] if mutual else []
        assert erl_connect_ping(node, server.port, erl_tls(*verify, *client)) == "{pong,{payload,tls}}"
        bad_ca = [("verify", "verify_peer"), ("cacertfile", other.ca_cert), ("server_name_indication", '"localhost"')]
        with pytest.raises(ErlangCommandError):
            erl_connect_ping(node, server.port, erl_tls(*bad_ca, *client))
        if mutual:
            with pytest.raises(ErlangCommandError):
                erl_connect_ping(node, server.port, erl_tls(*verify))
