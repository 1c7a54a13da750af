"""Fixtures of the security tests: development certificates made fresh for the run (nothing
secret is committed) and the transport test helpers on the import path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transport"))

from pyfabric.certs import DevCerts, write_dev_certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    """A CA, a server certificate for localhost/127.0.0.1/::1 and a client ``alice``."""
    return write_dev_certs(tmp_path_factory.mktemp("certs"), clients=["alice"])


@pytest.fixture(scope="session")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    """Another, unrelated CA with its own server and client ``mallory``."""
    return write_dev_certs(tmp_path_factory.mktemp("other-certs"), clients=["mallory"])
