"""`make demo-cluster` runs: three clustered erlang_peer servers, a Python and an erlang_peer client."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from interop_support import require_erl

ROOT = Path(__file__).resolve().parents[1]


def test_demo_cluster_routes_reaches_a_global_name_and_fails_over() -> None:
    """The demo's key outcomes: {Name, Node} both ways across servers, a global name, B's node
    stopped (noconnection, nodedown), the erlang_peer client back through C, nothing left running."""
    require_erl()
    proc = subprocess.run(
        [sys.executable, "demos/cluster_demo.py"], capture_output=True, text=True, timeout=180, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    ports = re.search(r"A \S+:(\d+), B \S+:(\d+), C \S+:(\d+)", out)
    assert ports is not None, out
    _, port_b, port_c = ports.groups()
    assert f"answered 'hello', its client connected to port {port_b} (server B)" in out
    assert "through B and A: (Atom('from_ecl'), 'hi Python')" in out
    assert "global name demo_echo (the same process: True) answered 'by global name'" in out
    assert "ended with Atom('noconnection'), (Atom('nodedown'), Atom('ecl@127.0.0.1'))" in out
    assert re.search(rf"answers again after [\d.]+ s: 'after the failover', its client now at port {port_c} "
                     r"\(server C\)", out), out
    assert "demo_echo is registered again (through server C) and answers" in out
    assert out.rstrip().endswith("demo finished: every node stopped")
    # every node it started is gone (their names carry the demo's pid)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert not [line for line in ps.splitlines() if "fabric_peer_cluster_demo" in line]
