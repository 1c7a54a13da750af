"""`make docs` builds the API reference from the docstrings, offline, without a warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_api_reference_builds_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "html"
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(ROOT / "docs" / "api"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    pages = {page: (out / f"{page}.html").read_text() for page in ("blocking", "etf", "runtime", "transport", "protocol", "tls")}
    # The public API, with the options spelled out and the docstrings' text.
    assert "pyfabric.connect" in pages["blocking"] and "connect_timeout" in pages["blocking"]
    assert "pyfabric.etf.Atom" in pages["etf"] and "ErlangMap" in pages["etf"]
    assert "pyfabric.runtime.Node" in pages["runtime"] and "trap_exit" in pages["runtime"]
    assert "pyfabric.transport.aconnect" in pages["transport"] and "when_disconnected" in pages["transport"]
    assert "pyfabric.protocol.Connection" in pages["protocol"]
    assert "write_dev_certs" in pages["tls"]
