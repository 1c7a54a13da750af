"""Release metadata: one version, one licence, the typing marker, the changelog."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pyfabric
from pyfabric import _version

ROOT = Path(__file__).resolve().parents[2]
APP_SRC = ROOT / "erlang_peer" / "fabric_peer" / "src" / "fabric_peer.app.src"


def _app_src() -> str:
    return APP_SRC.read_text()


def test_version_is_one_value_everywhere() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", pyfabric.__version__)
    assert pyfabric.__version__ == _version.__version__
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pyfabric._version.__version__"}
    vsn = re.search(r'\{vsn, "([^"]+)"\}', _app_src())
    assert vsn is not None and vsn.group(1) == pyfabric.__version__
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {pyfabric.__version__}" in changelog


def test_cli_prints_the_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "pyfabric", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"pyfabric {pyfabric.__version__}"


def test_both_packages_carry_the_same_licence() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    licence = pyproject["project"]["license"]
    assert licence == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert pyproject["project"]["license-files"] == ["LICENSE"]
    assert f'{{licenses, ["{licence}"]}}' in _app_src()


def test_package_is_marked_typed_and_ships_the_marker() -> None:
    assert (Path(pyfabric.__file__).parent / "py.typed").is_file()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["pyfabric"]
    classifiers = pyproject["project"]["classifiers"]
    assert "Typing :: Typed" in classifiers
    for minor in (11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
