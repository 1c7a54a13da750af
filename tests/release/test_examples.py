"""Every program in examples/ runs as a user would run it and prints what it promises.

Each example starts what it needs on 127.0.0.1 with an OS-picked port and stops by itself;
an example added without an entry here fails ``test_every_example_is_run_here``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Lines (regular substrings) each example's output must contain.
EXPECTED = {
    "blocking_pair.py": [
        "connected: extended protocol",
        "echo replied (Atom('hello'), [1, 2, 3], {Atom('key'): b'value'})",
        "the reply came from the pid whereis returned: True",
    ],
    "asyncio_pair.py": [
        "the server started worker Pid(",
        "the monitor reports its exit reason: (Atom('done'), 42)",
    ],
    "terms.py": [
        "formatted: {ok,[1,2.5,\"abc\",<<\"bin\">>,#{key => value}],'Quoted atom'}",
        "round trip equal: True",
        "ErlangMap: #{1 => integer,1.0 => float} has 2 keys",
        "re-encoded byte for byte: True",
        "a charlist decodes to 'hi'",
        "ParseError: expected '}' or ',' in tuple, found the end of the input (line 1, column 17)",
    ],
}


def test_every_example_is_run_here() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120, cwd=EXAMPLES.parent
    )
    assert done.returncode == 0, done.stderr
    for line in EXPECTED[name]:
        assert line in done.stdout, f"{name} did not print {line!r}; it printed:\n{done.stdout}"
    assert done.stderr == "", done.stderr  # nothing logged at WARNING or above
