"""Clear errors when the two ends do not speak the same thing (issue 11 item 7): plain vs
TLS, a missing client certificate, a service that is not a fabric server."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from transport_helpers import HOST, SECRET, arun, start_server

import pyfabric
from pyfabric import ConnectFailed
from pyfabric.certs import DevCerts
from pyfabric.tls import TLS_PROTOCOL_VERSION_ALERT, client_context, server_context, sniff_first_bytes

QUIET = ("pyfabric.server", "pyfabric.transport", "pyfabric.protocol", "asyncio")


async def attempt(port: int, **options) -> str:
    with pytest.raises(ConnectFailed) as info:
        await pyfabric.aconnect(HOST, port, SECRET, reconnect=False, connect_timeout=5, handshake_timeout=5, **options)
    return str(info.value)


def test_plain_client_to_a_tls_server(certs: DevCerts) -> None:
    async def body() -> None:
        server = await start_server(ssl=server_context(certs.server_cert, certs.server_key))
        try:
            assert "it may speak TLS" in await attempt(server.port)
        finally:
            await server.close()

    arun(body, allow_errors_from=QUIET)


def test_plain_client_facing_a_tls_alert() -> None:
    """An Erlang TLS server answers a plain hello with an alert: not 'a frame of 352518912 bytes'."""

    async def body() -> None:
        async def tls_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            writer.write(TLS_PROTOCOL_VERSION_ALERT)
            await writer.drain()
            writer.close()

        fake = await asyncio.start_server(tls_like, HOST, 0)
        try:
            assert "the server speaks TLS" in await attempt(fake.sockets[0].getsockname()[1])
        finally:
            fake.close()

    arun(body, allow_errors_from=QUIET)


def test_client_without_certificate_to_a_mutual_tls_server(certs: DevCerts) -> None:
    async def body() -> None:
        ctx = server_context(certs.server_cert, certs.server_key, cafile=certs.ca_cert, require_client_cert=True)
        server = await start_server(ssl=ctx)
        try:
            assert "client certificate" in await attempt(server.port, ssl=client_context(certs.ca_cert))
        finally:
            await server.close()

    arun(body, allow_errors_from=QUIET)


def test_tls12_client_without_certificate_to_a_mutual_tls_server(certs: DevCerts) -> None:
    """Over TLS 1.2 the refusal comes inside the handshake, which asyncio ends without the
    alert (CPython gh-98078): the reason still names the client certificate."""

    async def body() -> None:
        ctx = server_context(certs.server_cert, certs.server_key, cafile=certs.ca_cert, require_client_cert=True)
        server = await start_server(ssl=ctx)
        try:
            client = client_context(certs.ca_cert)
            client.maximum_version = ssl.TLSVersion.TLSv1_2
            text = await attempt(server.port, ssl=client)
            assert "client certificate" in text, text
        finally:
            await server.close()

    arun(body, allow_errors_from=QUIET)


def test_tls_client_to_a_plain_server_gets_a_reason(certs: DevCerts) -> None:
    async def body() -> None:
        server = await start_server()
        try:
            text = await attempt(server.port, ssl=client_context(certs.ca_cert))
            assert "does not seem to speak TLS" in text and "protocol version" in text
            assert server.statistics()["auth_failures"] == 0  # not counted as a guess
        finally:
            await server.close()

    arun(body, allow_errors_from=QUIET)


def test_an_http_service_is_not_a_fabric_server() -> None:
    async def body() -> None:
        async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        fake = await asyncio.start_server(http, HOST, 0)
        try:
            text = await attempt(fake.sockets[0].getsockname()[1])
            assert "this is not a fabric server" in text and "HTTP" in text
        finally:
            fake.close()

    arun(body, allow_errors_from=QUIET)


def test_sniffing_never_mistakes_a_fabric_frame() -> None:
    from pyfabric.etf import Atom, encode

    hello = encode((Atom("hello"), "x" * 200))
    assert sniff_first_bytes(len(hello).to_bytes(4, "big") + hello) is None
    assert sniff_first_bytes(b"\x16\x03\x01\x02\x00") == "tls"
    assert sniff_first_bytes(b"SSH-2.0-OpenSSH_9\r\n") == "text"
    assert sniff_first_bytes(b"\xff\xfe\x01\x02") == "binary"
