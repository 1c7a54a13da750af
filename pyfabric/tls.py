"""TLS contexts with safe defaults for fabric clients and servers.

The fabric handshake (HMAC-SHA256 with the shared secret) still runs inside TLS: TLS gives
confidentiality, integrity and (with certificates) the identity of the machines; the
secret proves both ends belong to the same fabric.

    server = await pyfabric.serve("0.0.0.0", 5555, secret, allowed=["ping"],
                                  ssl=server_context("server.pem", "server-key.pem"))
    client = await pyfabric.aconnect("fabric.example", 5555, secret,
                                     ssl=client_context("ca.pem"))

Both contexts accept TLS 1.2 and 1.3 only. A client context verifies the server's
certificate chain (against ``cafile``, or the system's trusted CAs) and its host name
(``aconnect``/``connect`` check the ``host`` they connect to unless ``server_hostname``
says otherwise). Mutual TLS: the server passes ``cafile`` (the CA that signs client
certificates) and ``require_client_cert=True``; the client passes ``certfile``/``keyfile``.
Development certificates: ``python -m pyfabric certs --out DIR`` (:mod:`pyfabric.certs`).

``serve``/``aconnect`` refuse a context that allows a TLS version older than 1.2, a
server-side context for a client and a client-side context for a server; a client context
that does not verify the server's certificate is accepted but logged as a warning.
"""

from __future__ import annotations

import logging
import os
import ssl

__all__ = [
    "server_context",
    "client_context",
    "MINIMUM_TLS_VERSION",
    "check_context",
    "sniff_first_bytes",
    "describe_tls_failure",
    "TLS_PROTOCOL_VERSION_ALERT",
]

_log = logging.getLogger("pyfabric.tls")

MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2
"""The oldest TLS version pyfabric accepts, in both roles."""

_ACCEPTED_MINIMUMS = frozenset({ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.MAXIMUM_SUPPORTED})

Path = str | os.PathLike[str]


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = MINIMUM_TLS_VERSION
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)


def server_context(
    certfile: Path,
    keyfile: Path | None = None,
    *,
    cafile: Path | None = None,
    require_client_cert: bool = False,
    password: str | bytes | None = None,
) -> ssl.SSLContext:
    """A server-side :class:`ssl.SSLContext` for :func:`pyfabric.serve` / ``start_server``.

    ``certfile``/``keyfile``: the server's certificate chain and private key (PEM).
    ``cafile``: the CA(s) that sign client certificates; a client certificate, when sent,
    is verified against it. ``require_client_cert=True`` (mutual TLS, needs ``cafile``)
    refuses clients without a valid certificate. TLS 1.2+ only, no TLS compression or
    renegotiation. ``password``: for an encrypted private key.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    ctx.load_cert_chain(os.fspath(certfile), None if keyfile is None else os.fspath(keyfile), password)
    if require_client_cert and cafile is None:
        raise ValueError("require_client_cert=True needs cafile: the CA that signs the client certificates")
    if cafile is not None:
        ctx.load_verify_locations(cafile=os.fspath(cafile))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(
    cafile: Path | None = None,
    *,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    check_hostname: bool = True,
    password: str | bytes | None = None,
) -> ssl.SSLContext:
    """A client-side :class:`ssl.SSLContext` for :func:`pyfabric.aconnect` / ``connect``.

    The server's certificate is always verified: against ``cafile`` (PEM, e.g. the ``ca.pem``
    of ``pyfabric certs``) or, without it, the system's trusted CAs. ``check_hostname``
    (default on) also checks that the certificate names the host connected to (DNS name or
    IP address; ``aconnect(..., server_hostname=...)`` overrides the name checked).
    ``certfile``/``keyfile``: our client certificate, for servers that require mutual TLS.
    TLS 1.2+ only.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=None if cafile is None else os.fspath(cafile))
    _harden(ctx)
    ctx.check_hostname = bool(check_hostname)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if certfile is not None:
        ctx.load_cert_chain(os.fspath(certfile), None if keyfile is None else os.fspath(keyfile), password)
    elif keyfile is not None:
        raise ValueError("keyfile without certfile")
    return ctx


def check_context(ctx: ssl.SSLContext, *, server_side: bool) -> None:
    """Refuse a context pyfabric will not use (called by ``serve`` and ``aconnect``).

    Raises ``TypeError`` if ``ctx`` is not an :class:`ssl.SSLContext`, ``ValueError`` if it
    allows TLS older than 1.2 or is made for the other role. Logs a warning for a client
    context that does not verify the server's certificate.
    """
    if not isinstance(ctx, ssl.SSLContext):
        raise TypeError(f"ssl must be an ssl.SSLContext (see pyfabric.tls), got {type(ctx).__name__}")
    if ctx.minimum_version not in _ACCEPTED_MINIMUMS:
        raise ValueError(
            f"the SSL context allows {ctx.minimum_version.name}; pyfabric accepts TLS 1.2 or newer only "
            "(use pyfabric.tls.server_context/client_context, or set ctx.minimum_version = ssl.TLSVersion.TLSv1_2)"
        )
    if server_side and ctx.protocol == ssl.PROTOCOL_TLS_CLIENT:
        raise ValueError("a client-side SSL context was given to a server (use pyfabric.tls.server_context)")
    if not server_side:
        if ctx.protocol == ssl.PROTOCOL_TLS_SERVER:
            raise ValueError("a server-side SSL context was given to a client (use pyfabric.tls.client_context)")
        if ctx.verify_mode == ssl.CERT_NONE:
            _log.warning("TLS client context does not verify the server's certificate: anyone can impersonate the server")
        elif not ctx.check_hostname:
            _log.info("TLS client context does not check the server's host name: any certificate of its CAs is accepted")


TLS_PROTOCOL_VERSION_ALERT = b"\x15\x03\x03\x00\x02\x02\x46"
"""A fatal TLS ``protocol_version`` alert record: what a plain server answers a TLS hello
with, so that the TLS client reports a reason instead of an unexplained close."""


def sniff_first_bytes(data: bytes) -> str | None:
    """What the first bytes a peer sent are, if they cannot start a fabric frame: ``"tls"``
    (a TLS record: handshake, alert, ...), ``"http"``, ``"text"`` (another text protocol),
    ``"binary"``; ``None`` if they may be a fabric frame. Every fabric handshake frame is
    under 16 MiB, so its length header starts with a zero byte."""
    if not data or data[0] == 0:
        return None
    if len(data) >= 3 and 0x14 <= data[0] <= 0x17 and data[1] == 3 and data[2] <= 4:
        return "tls"
    if data.startswith(b"HTTP/") or data[:4] in (b"GET ", b"POST", b"HEAD", b"PUT "):
        return "http"
    head = data[:16]
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text"
    return "binary"


def describe_tls_failure(exc: BaseException) -> str:
    """A reason for a failed TLS connection that says what to do (used by the client)."""
    reason = getattr(exc, "reason", None) or ""
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if "CERTIFICATE_REQUIRED" in reason or "certificate required" in str(exc):
        return "the server requires a client certificate: pass certfile/keyfile to pyfabric.tls.client_context"
    if "PROTOCOL_VERSION" in reason or "WRONG_VERSION_NUMBER" in reason:
        return f"the TLS handshake failed ({text}): the server does not seem to speak TLS (connect without ssl=?)"
    if isinstance(exc, (ssl.SSLEOFError, ConnectionResetError)):
        return (
            f"the server closed the connection during the TLS handshake ({text}): it may not speak TLS "
            "(connect without ssl=?), or it requires a client certificate (certfile/keyfile of "
            "pyfabric.tls.client_context) or refused ours"
        )
    return text
