"""No test reaches into a private attribute: tests use the public API (issue 10).

The scan covers every Python file of ``tests/`` and ``interop_tests/``. It fails on:

- ``x._name`` where ``x`` is not ``self`` or ``cls`` and ``_name`` is not a dunder (a
  test's own helper class may use its own private state through ``self``);
- ``getattr``/``setattr``/``delattr``/``hasattr`` with a constant ``"_name"``.

Importing a private module's public names to unit-test that module (``from
pyfabric.protocol._handshake import client_mac``) is allowed: the module is the unit under
test, and nothing private of an object is touched. The only exceptions are the documented
single-underscore names of the standard library listed in ``STDLIB_ALLOWED``.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCANNED = ("tests", "interop_tests")
STDLIB_ALLOWED = frozenset({"_asdict", "_replace", "_fields", "_make", "_exit", "_getframe"})
"""Public API of the standard library spelled with one underscore (namedtuple, os, sys)."""


def private_accesses(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        name = None
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            name = node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "delattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            name = node.args[1].value
        if name is None or not name.startswith("_") or name.startswith("__") or name in STDLIB_ALLOWED:
            continue
        found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scan_finds_private_access() -> None:
    code = "server._accepted\ngetattr(node, '_table')\nself._mine\ncls._ours\nx.__class__\nsys._getframe()\n"
    assert [line.split(": ", 1)[1] for line in private_accesses(code, "t.py")] == [
        "server._accepted",
        "getattr(node, '_table')",
    ]


def test_no_test_touches_a_private_attribute() -> None:
    files = sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))
    assert len(files) > 40  # the scan really looked at the suites
    found = []
    for path in files:
        found += private_accesses(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert found == [], "tests must use the public API:\n" + "\n".join(found)
