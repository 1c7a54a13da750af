"""Development certificates: a private CA, a server certificate and client certificates.

For development, tests and closed deployments that want TLS (and mutual TLS) without a
public CA. Keys are ECDSA P-256 (accepted by Python's ``ssl`` and Erlang's ``ssl``),
signatures SHA-256; private keys are written with mode 0600. Existing server and client
files are replaced only with ``overwrite=True`` (``pyfabric certs --force``); the CA is reused.
For example::

    paths = write_dev_certs("certs", hostnames=["localhost"], clients=["worker"])
    ctx = pyfabric.tls.server_context(paths.server_cert, paths.server_key,
                                      cafile=paths.ca_cert, require_client_cert=True)

Command line: ``python -m pyfabric certs --out DIR [--hostname H]... [--ip IP]...
[--client NAME]... [--days N]`` (or the ``pyfabric`` script). An existing ``ca.pem`` +
``ca-key.pem`` in DIR is reused, so clients can be added later with ``--no-server``.

Files: ``ca.pem``, ``ca-key.pem``, ``server.pem``, ``server-key.pem``,
``client-NAME.pem``, ``client-NAME-key.pem``. Keep ``ca-key.pem`` offline: whoever holds
it can mint certificates your servers and clients trust.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DevCerts",
    "make_ca",
    "make_cert",
    "write_dev_certs",
    "DEFAULT_CA_DAYS",
    "DEFAULT_CERT_DAYS",
]

DEFAULT_CA_DAYS = 3650
"""Validity of a new development CA (10 years)."""
DEFAULT_CERT_DAYS = 825
"""Validity of server and client certificates (the longest most TLS clients accept)."""
_SKEW = datetime.timedelta(minutes=5)  # clocks of the machines involved may differ a little
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pyfabric development"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    if days < 1:
        raise ValueError("days must be at least 1")
    now = datetime.datetime.now(datetime.UTC)
    return now - _SKEW, now + datetime.timedelta(days=days)


def make_ca(
    common_name: str = "pyfabric development CA", *, days: int = DEFAULT_CA_DAYS
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed CA certificate and its private key (ECDSA P-256)."""
    key = _new_key()
    not_before, not_after = _validity(days)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    hostnames: Iterable[str] = (),
    ips: Iterable[str] = (),
    server: bool = True,
    client: bool = False,
    days: int = DEFAULT_CERT_DAYS,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate signed by the CA, and its new private key.

    ``hostnames``/``ips`` become the subject alternative names a TLS client checks;
    ``server``/``client`` set the extended key usages (serverAuth / clientAuth).
    """
    if not (server or client):
        raise ValueError("a certificate is for a server, a client, or both")
    key = _new_key()
    not_before, not_after = _validity(days)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


@dataclass(frozen=True)
class DevCerts:
    """Paths written by :func:`write_dev_certs` (``server_*`` are None with ``server=False``)."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path | None
    server_key: Path | None
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    """client name -> (certificate, key)"""


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # O_EXCL: never replace (or follow a planted symlink to) an existing file; 0600 from birth.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def _load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC private key")
    return cert, key


def write_dev_certs(
    directory: str | os.PathLike[str],
    *,
    hostnames: Iterable[str] = ("localhost",),
    ips: Iterable[str] = ("127.0.0.1", "::1"),
    clients: Iterable[str] = (),
    server: bool = True,
    days: int = DEFAULT_CERT_DAYS,
    ca_days: int = DEFAULT_CA_DAYS,
    overwrite: bool = False,
) -> DevCerts:
    """Write a development CA (reused if ``ca.pem`` and ``ca-key.pem`` exist), a server
    certificate for ``hostnames`` and ``ips`` (unless ``server=False``) and one client
    certificate per name in ``clients`` into ``directory`` (created with mode 0700 if
    missing). Private keys get mode 0600. Raises ``FileExistsError`` rather than
    overwrite a server or client file, unless ``overwrite=True`` (then those files are
    replaced; an existing CA is still reused, so certificates issued before stay valid).
    """
    out = Path(directory)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    hostnames, ips, clients = list(hostnames), list(ips), list(clients)
    for name in clients:
        if not _CLIENT_NAME.fullmatch(name):
            raise ValueError(f"bad client name {name!r}: letters, digits, '_', '.', '-' (at most 64)")
    if len(set(clients)) != len(clients):
        raise ValueError("client names must be distinct")
    for ip in ips:
        ipaddress.ip_address(ip)  # ValueError before anything is written
    ca_cert_path, ca_key_path = out / "ca.pem", out / "ca-key.pem"
    leaves: list[Path] = []
    if server:
        leaves += [out / "server.pem", out / "server-key.pem"]
    for name in clients:
        leaves += [out / f"client-{name}.pem", out / f"client-{name}-key.pem"]
    existing = [str(p) for p in leaves if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise FileExistsError(
            f"refusing to overwrite {', '.join(existing)}: pass overwrite=True (pyfabric certs --force) to replace them"
        )
    if ca_cert_path.exists() and ca_key_path.exists():
        ca_cert, ca_key = _load_ca(ca_cert_path, ca_key_path)
    elif ca_cert_path.exists() or ca_key_path.exists():
        raise FileExistsError(f"{out} holds only one of ca.pem and ca-key.pem")
    else:
        ca_cert, ca_key = make_ca(days=ca_days)
        _write_private(ca_key_path, ca_key)
        _write_cert(ca_cert_path, ca_cert)
    for path in leaves if existing else ():
        path.unlink(missing_ok=True)  # a planted symlink is removed, never followed
    server_cert = server_key = None
    if server:
        cn = hostnames[0] if hostnames else (ips[0] if ips else "pyfabric server")
        cert, key = make_cert(ca_cert, ca_key, cn, hostnames=hostnames, ips=ips, server=True, days=days)
        server_cert, server_key = out / "server.pem", out / "server-key.pem"
        _write_private(server_key, key)
        _write_cert(server_cert, cert)
    written: dict[str, tuple[Path, Path]] = {}
    for name in clients:
        cert, key = make_cert(ca_cert, ca_key, name, server=False, client=True, days=days)
        cert_path, key_path = out / f"client-{name}.pem", out / f"client-{name}-key.pem"
        _write_private(key_path, key)
        _write_cert(cert_path, cert)
        written[name] = (cert_path, key_path)
    return DevCerts(out, ca_cert_path, ca_key_path, server_cert, server_key, written)
