"""Backend selection (issue 15, STYLE.md 5): chosen once at import, named by
``pyfabric.etf.implementation``, forced by ``PYFABRIC_ETF``, never a silent fallback."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from pyfabric import etf

_BUILT = importlib.util.find_spec("pyfabric.etf._speedups") is not None
# Run before importing pyfabric: makes the extension unimportable, as on an install without a compiler.
_HIDE_EXTENSION = "import sys; sys.modules['pyfabric.etf._speedups'] = None; "


def _run(code: str, backend: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYFABRIC_ETF"}
    if backend is not None:
        env["PYFABRIC_ETF"] = backend
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_the_active_backend_is_the_one_asked_for_or_the_c_one_when_built() -> None:
    wanted = os.environ.get("PYFABRIC_ETF")
    assert etf.implementation == (wanted or ("c" if _BUILT else "python"))
    if wanted == "c":  # `make unit` asks for it: a build failure fails loudly there
        assert _BUILT


@pytest.mark.parametrize("backend", ["python", "c", None])
def test_environment_variable_selects_the_backend(backend: str | None) -> None:
    if backend == "c" and not _BUILT:
        pytest.skip("the C backend is not built")
    code = "import pyfabric.etf as e; print(e.implementation, e._encode_fn.__module__)"
    result = _run(code, backend)
    assert result.returncode == 0, result.stderr
    expected = backend or ("c" if _BUILT else "python")
    module = "pyfabric.etf._accel" if expected == "c" else "pyfabric.etf._encode"
    assert result.stdout.split() == [expected, module]


def test_missing_extension_is_the_python_backend_unless_c_is_forced() -> None:
    shown = _run(_HIDE_EXTENSION + "import pyfabric.etf as e; print(e.implementation)", None)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "python"
    forced = _run(_HIDE_EXTENSION + "import pyfabric.etf", "c")
    assert forced.returncode != 0
    assert "ImportError: PYFABRIC_ETF=c but the C backend pyfabric.etf._speedups is not built" in forced.stderr


def test_unknown_backend_name_is_an_import_error() -> None:
    result = _run("import pyfabric.etf", "rust")
    assert result.returncode != 0
    assert "PYFABRIC_ETF must be 'c' or 'python' (or unset), got 'rust'" in result.stderr


def test_the_choice_is_logged_once_at_debug_level() -> None:
    code = (
        "import logging; logging.basicConfig(level=logging.DEBUG, format='%(name)s %(message)s'); "
        "import pyfabric.etf, importlib; import pyfabric"
    )
    result = _run(code, "python")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("pyfabric.etf ETF codec backend: python") == 1
