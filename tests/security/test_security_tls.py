"""TLS between Python peers: verification on by default, host names, mutual TLS, TLS 1.2+
only, and the shared-secret handshake still required inside TLS."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
from transport_helpers import HOST, PING, PONG, SECRET, WAIT, arun, connect, start_server

import pyfabric
from pyfabric import ANY, Atom, AuthenticationError, ConnectFailed
from pyfabric.certs import DevCerts
from pyfabric.tls import check_context, client_context, server_context


async def ping_round_trip(client: pyfabric.Client) -> None:
    box = client.mailbox()
    client.send(PING, (box.pid, "hello"))
    _sender, reply = await box.receive(match=(ANY, ANY), timeout=WAIT)
    assert reply == (PONG, "hello")
    box.close()


def tls_version(client: pyfabric.Client) -> str:
    return client.get_extra_info("ssl_object").version()


def serve_tls(certs: DevCerts, **kw):
    return start_server(ssl=server_context(certs.server_cert, certs.server_key, **kw))


def test_verified_tls_with_the_ca_and_ip_address_check(certs: DevCerts) -> None:
    async def body() -> None:
        server = await serve_tls(certs)
        try:
            async with await connect(server, ssl=client_context(certs.ca_cert)) as client:  # host 127.0.0.1: IP SAN
                await ping_round_trip(client)
                assert tls_version(client) in ("TLSv1.2", "TLSv1.3")
            async with await pyfabric.aconnect("localhost", server.port, SECRET, ssl=client_context(certs.ca_cert)) as client:
                await ping_round_trip(client)
        finally:
            await server.close()

    arun(body)


@pytest.mark.parametrize("case", ["system_cas", "other_ca", "wrong_hostname"])
def test_server_certificate_is_verified_by_default(certs: DevCerts, other_certs: DevCerts, case: str) -> None:
    options = {
        "system_cas": {"ssl": client_context()},
        "other_ca": {"ssl": client_context(other_certs.ca_cert)},
        "wrong_hostname": {"ssl": client_context(certs.ca_cert), "server_hostname": "fabric.example"},
    }[case]

    async def body() -> None:
        server = await serve_tls(certs)
        try:
            with pytest.raises(ConnectFailed) as info:
                await connect(server, reconnect=False, **options)
            assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError), info.value.__cause__
            async with await connect(server, ssl=client_context(certs.ca_cert)) as client:
                await ping_round_trip(client)  # the server kept serving
        finally:
            await server.close()

    arun(body)


def test_hostname_check_can_be_turned_off_but_the_chain_is_still_verified(certs: DevCerts, other_certs: DevCerts) -> None:
    async def body() -> None:
        server = await serve_tls(certs)
        try:
            ctx = client_context(certs.ca_cert, check_hostname=False)
            async with await connect(server, ssl=ctx, server_hostname="fabric.example") as client:
                await ping_round_trip(client)
            with pytest.raises(ConnectFailed):
                await connect(server, ssl=client_context(other_certs.ca_cert, check_hostname=False))
        finally:
            await server.close()

    arun(body)


def test_mutual_tls(certs: DevCerts, other_certs: DevCerts) -> None:
    alice_cert, alice_key = certs.clients["alice"]
    mallory_cert, mallory_key = other_certs.clients["mallory"]

    async def body() -> None:
        server = await serve_tls(certs, cafile=certs.ca_cert, require_client_cert=True)
        try:
            ctx = client_context(certs.ca_cert, certfile=alice_cert, keyfile=alice_key)
            async with await connect(server, ssl=ctx) as client:
                await ping_round_trip(client)
                peer_cert = server_peer_certs(server)
                assert [dict(x[0] for x in c["subject"])["commonName"] for c in peer_cert] == ["alice"]
            for bad in (
                client_context(certs.ca_cert),  # no client certificate
                client_context(certs.ca_cert, certfile=mallory_cert, keyfile=mallory_key),  # another CA's
            ):
                with pytest.raises(ConnectFailed):
                    await connect(server, ssl=bad, reconnect=False)
            assert server.statistics()["connections"] == 0
        finally:
            await server.close()

    arun(body)


def server_peer_certs(server: pyfabric.Server) -> list[dict]:
    return [connection.get_extra_info("peercert") for connection in server.connections()]


def test_optional_client_certificate(certs: DevCerts) -> None:
    async def body() -> None:
        server = await serve_tls(certs, cafile=certs.ca_cert)
        try:
            async with await connect(server, ssl=client_context(certs.ca_cert)) as client:
                await ping_round_trip(client)
        finally:
            await server.close()

    arun(body)


def test_the_shared_secret_is_still_required_inside_tls(certs: DevCerts) -> None:
    async def body() -> None:
        server = await serve_tls(certs)
        try:
            with pytest.raises(AuthenticationError):
                await connect(server, ssl=client_context(certs.ca_cert), secret=b"wrong")
        finally:
            await server.close()

    arun(body)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_1_1_is_refused(certs: DevCerts) -> None:
    assert server_context(certs.server_cert, certs.server_key).minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_context(certs.ca_cert).minimum_version == ssl.TLSVersion.TLSv1_2

    async def body() -> None:
        server = await serve_tls(certs)
        try:
            old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            old.check_hostname = False
            old.verify_mode = ssl.CERT_NONE
            try:
                old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this OpenSSL offer TLS 1.1 at all
                old.minimum_version = ssl.TLSVersion.TLSv1_1
                old.maximum_version = ssl.TLSVersion.TLSv1_1
            except (ssl.SSLError, ValueError):
                pass  # cannot even speak TLS 1.1: refused all the more
            port = server.port

            def handshake() -> None:
                with socket.create_connection((HOST, port), timeout=WAIT) as sock:
                    with old.wrap_socket(sock, server_hostname="localhost"):
                        pass

            with pytest.raises(ssl.SSLError):
                await asyncio.to_thread(handshake)
            async with await connect(server, ssl=client_context(certs.ca_cert)) as client:
                await ping_round_trip(client)
        finally:
            await server.close()

    arun(body)


def test_plain_tcp_client_to_a_tls_server_fails_and_the_server_keeps_serving(certs: DevCerts) -> None:
    async def body() -> None:
        server = await serve_tls(certs, cafile=None)
        try:
            with pytest.raises((ConnectFailed, AuthenticationError)):
                await connect(server, reconnect=False, handshake_timeout=2)
            async with await connect(server, ssl=client_context(certs.ca_cert)) as client:
                await ping_round_trip(client)
        finally:
            await server.close()

    arun(body)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_contexts_pyfabric_refuses(certs: DevCerts) -> None:
    server_ctx = server_context(certs.server_cert, certs.server_key)
    client_ctx = client_context(certs.ca_cert)
    with pytest.raises(ValueError, match="client-side"):
        check_context(client_ctx, server_side=True)
    with pytest.raises(ValueError, match="server-side"):
        check_context(server_ctx, server_side=False)
    weak = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    weak.minimum_version = ssl.TLSVersion.TLSv1
    with pytest.raises(ValueError, match="TLS 1.2"):
        check_context(weak, server_side=False)
    with pytest.raises(TypeError):
        check_context(True, server_side=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        server_context(certs.server_cert, certs.server_key, require_client_cert=True)

    async def body() -> None:
        with pytest.raises(ValueError):
            await pyfabric.serve(HOST, 0, SECRET, ssl=client_ctx)
        with pytest.raises(ValueError):
            await pyfabric.aconnect(HOST, 1, SECRET, ssl=server_ctx)

    arun(body)


def test_unverified_client_context_is_logged(certs: DevCerts, caplog: pytest.LogCaptureFixture) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with caplog.at_level("WARNING", logger="pyfabric.tls"):
        check_context(ctx, server_side=False)
    assert "does not verify" in caplog.text


def test_blocking_facade_over_tls(certs: DevCerts) -> None:
    alice_cert, alice_key = certs.clients["alice"]
    sctx = server_context(certs.server_cert, certs.server_key, cafile=certs.ca_cert, require_client_cert=True)
    with pyfabric.start_server(HOST, 0, SECRET, allowed=["echo"], ssl=sctx) as server:
        box = server.mailbox("echo")
        cctx = client_context(certs.ca_cert, certfile=alice_cert, keyfile=alice_key)
        with pyfabric.connect(HOST, server.port, SECRET, ssl=cctx) as client:
            client.send("echo", Atom("over_tls"))
            assert box.receive(timeout=WAIT) == Atom("over_tls")
