"""Module sizes (issue 10, HELPERS rules): every Python module of the package stays at most
500 lines, except the ETF decoder, whose hot loop is one function on purpose; the module map
of docs/architecture.md names every module."""

from __future__ import annotations

from pathlib import Path

import pyfabric

PACKAGE = Path(pyfabric.__file__).resolve().parent
ROOT = PACKAGE.parent
LIMIT = 500
EXEMPT = {"etf/_decode.py"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_over_the_limit() -> None:
    over = {}
    for path in _modules():
        rel = path.relative_to(PACKAGE).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if rel not in EXEMPT and lines > LIMIT:
            over[rel] = lines
    assert over == {}, f"modules over {LIMIT} lines: {over}"


def test_module_map_names_every_private_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [
        path.relative_to(PACKAGE).as_posix()
        for path in _modules()
        if path.name.startswith("_") and path.name != "__init__.py" and path.parent != PACKAGE
        and path.parent.name in ("protocol", "runtime", "transport")
        and path.name not in text
    ]
    assert missing == [], f"docs/architecture.md's module map does not name: {missing}"
