"""`make demo` runs: a Python client against the Erlang demo server, every step shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_shows_the_whole_exchange() -> None:
    """The demo starts erlang_peer's server, pings it, ships a Python pid and sees a kill."""
    proc = subprocess.run(
        [sys.executable, "-m", "pyfabric.demo"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Erlang fabric server (erlang_peer) listening on 127.0.0.1:")
    assert lines[1].startswith("connected: extended protocol")
    assert "ping replied (Atom('pong'), (Atom('payload'), 'abababa')); the sender is the same proxy: True" in lines
    assert "sent to the returned pid, got (Atom('pong'), (Atom('payload'), 'again'))" in lines
    assert any(line.startswith("echo answered the Python process with (Atom('hello')") for line in lines)
    assert "killed the Erlang counter; the monitor says Atom('killed')" in lines
    assert lines[-1] == "demo finished"
