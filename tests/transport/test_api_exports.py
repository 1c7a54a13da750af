"""The public surface of ``pyfabric`` (trio's test_exports idea): curated, documented, re-exported."""

from __future__ import annotations

import ast
import importlib
import inspect
import types
from pathlib import Path

import pytest

import pyfabric

PUBLIC = list(pyfabric.__all__)


def test_all_lists_each_name_exactly_once() -> None:
    duplicates = sorted({name for name in PUBLIC if PUBLIC.count(name) > 1})
    assert duplicates == []


def test_every_public_attribute_is_in_all() -> None:
    public_attrs = {
        name
        for name, value in vars(pyfabric).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public_attrs - set(PUBLIC) == set(), "public names missing from __all__"
    assert set(PUBLIC) - public_attrs == set(), "__all__ names that pyfabric does not have"


@pytest.mark.parametrize("name", PUBLIC)
def test_each_name_importable_and_documented(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from pyfabric import {name}", namespace)  # noqa: S102 (a fixed, listed name)
    value = namespace[name]
    assert value is getattr(pyfabric, name)
    if inspect.isclass(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
        doc = inspect.getdoc(value)
        assert doc and doc.strip(), f"pyfabric.{name} has no docstring"
        # Defined in a private module or a layer package, never in pyfabric/__init__.py.
        assert value.__module__ != "pyfabric", f"pyfabric.{name} is defined in pyfabric/__init__.py"
        module = importlib.import_module(value.__module__)
        assert getattr(module, value.__qualname__.split(".")[0]) is not None


def test_init_defines_nothing_itself() -> None:
    tree = ast.parse(Path(pyfabric.__file__).read_text())
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # the module docstring
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__all__"]:
            continue
        pytest.fail(f"pyfabric/__init__.py line {node.lineno} defines something: {ast.dump(node)[:80]}")
    assert inspect.getdoc(pyfabric)


def test_blocking_and_transport_methods_are_documented() -> None:
    """The classes users touch most: every public method and property has a docstring."""
    missing = []
    for cls in (
        pyfabric.Client,
        pyfabric.Server,
        pyfabric.ServerConnection,
        pyfabric.BlockingClient,
        pyfabric.BlockingServer,
        pyfabric.BlockingMailbox,
    ):
        for attr in dir(cls):
            if attr.startswith("_"):
                continue
            value = inspect.getattr_static(cls, attr)
            target = value.fget if isinstance(value, property) else value
            if callable(target) and not inspect.getdoc(target):
                missing.append(f"{cls.__name__}.{attr}")
    assert missing == []
