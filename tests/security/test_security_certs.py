"""``pyfabric certs`` / :mod:`pyfabric.certs`: what is written, with which modes and names."""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from pyfabric.__main__ import main
from pyfabric.certs import write_dev_certs


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_cli_writes_ca_server_and_clients_with_private_keys_0600(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    proc = subprocess.run(
        [sys.executable, "-m", "pyfabric", "certs", "--out", str(out), "--hostname", "fabric.test", "--ip", "127.0.0.1", "--client", "alice", "--client", "bob"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client-alice.pem", "client-alice-key.pem", "client-bob.pem", "client-bob-key.pem"]
    )
    for path in out.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.name.endswith("-key.pem"):
            assert mode == 0o600, (path.name, oct(mode))
        else:
            assert mode & 0o022 == 0, (path.name, oct(mode))
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    server = _cert(out / "server.pem")
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fabric.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert isinstance(server.public_key(), ec.EllipticCurvePublicKey) and server.public_key().curve.name == "secp256r1"
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    client_eku = _cert(out / "client-alice.pem").extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(client_eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca = _cert(out / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in ("server.pem", "client-alice.pem", "client-bob.pem"):
        _cert(out / leaf).verify_directly_issued_by(ca)
    # Loadable by ssl as they are.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(out / "server.pem", out / "server-key.pem")
    ctx.load_verify_locations(out / "ca.pem")


def test_never_overwrites_and_reuses_the_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--out", str(tmp_path), "--client", "alice"]) == 0
    ca_before = (tmp_path / "ca.pem").read_bytes()
    key_before = (tmp_path / "server-key.pem").read_bytes()
    capsys.readouterr()
    assert main(["certs", "--out", str(tmp_path)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "server-key.pem").read_bytes() == key_before
    # Add a client later, signed by the same CA.
    assert main(["certs", "--out", str(tmp_path), "--no-server", "--client", "carol"]) == 0
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    _cert(tmp_path / "client-carol.pem").verify_directly_issued_by(_cert(tmp_path / "ca.pem"))


def test_refuses_a_symlink_planted_at_a_key_path(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    out = tmp_path / "pki"
    out.mkdir()
    os.symlink(target, out / "ca-key.pem")
    with pytest.raises(FileExistsError):
        write_dev_certs(out)
    assert target.read_text() == "precious"


@pytest.mark.parametrize("name", ["../evil", "a/b", "", "x" * 65, "-dash"])
def test_bad_client_names_are_refused_before_writing(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        write_dev_certs(tmp_path / "pki", clients=[name])
    assert not (tmp_path / "pki" / "ca-key.pem").exists()


def test_force_replaces_server_and_client_files_and_keeps_the_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--out", str(tmp_path), "--client", "alice"]) == 0
    ca_before = (tmp_path / "ca.pem").read_bytes()
    server_key_before = (tmp_path / "server-key.pem").read_bytes()
    client_before = (tmp_path / "client-alice.pem").read_bytes()
    capsys.readouterr()
    assert main(["certs", "--out", str(tmp_path), "--client", "alice"]) == 1
    assert "pyfabric certs --force" in capsys.readouterr().err  # the error says how to go on
    assert main(["certs", "--out", str(tmp_path), "--client", "alice", "--force"]) == 0
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    assert (tmp_path / "server-key.pem").read_bytes() != server_key_before
    assert (tmp_path / "client-alice.pem").read_bytes() != client_before
    assert stat.S_IMODE((tmp_path / "server-key.pem").stat().st_mode) == 0o600
    ca = _cert(tmp_path / "ca.pem")
    for leaf in ("server.pem", "client-alice.pem"):
        _cert(tmp_path / leaf).verify_directly_issued_by(ca)


def test_overwrite_removes_a_planted_leaf_symlink_without_following_it(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    out = tmp_path / "pki"
    write_dev_certs(out)
    (out / "server-key.pem").unlink()
    os.symlink(target, out / "server-key.pem")
    write_dev_certs(out, overwrite=True)
    assert target.read_text() == "precious"
    assert not (out / "server-key.pem").is_symlink()
