"""The example in pyfabric.runtime's docstring runs and prints what it says."""

from __future__ import annotations

import contextlib
import io
import textwrap

import pyfabric.runtime as runtime


def _blocks(doc: str) -> list[str]:
    """The indented blocks that follow each line ending in '::'."""
    blocks, lines = [], doc.splitlines()
    for i, line in enumerate(lines):
        if line.rstrip().endswith("::"):
            body = []
            for following in lines[i + 1 :]:
                if following.strip() and not following.startswith("    "):
                    break
                body.append(following)
            blocks.append(textwrap.dedent("\n".join(body)).strip("\n"))
    return blocks


def test_package_docstring_example_runs():
    code, expected = _blocks(runtime.__doc__)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "pyfabric.runtime example", "exec"), {"__name__": "example"})
    assert out.getvalue().strip() == expected.strip()
