"""``bench/cluster_bench.py --quick`` runs (issue 14): three clustered erlang_peer servers, the
same-server and across-servers ping-pong, and the scale run, each with its figures.

A smoke test only: tiny counts, no assertion on any figure's size (timings on a shared machine
prove nothing), only that every part ran and reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from erlnode import ensure_compiled
from interop_support import require_erl

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_bench_quick_run() -> None:
    require_erl()
    ensure_compiled()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cluster_bench.py"), "--quick"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    pp, sc = result["ping_pong"], result["scale"]
    assert pp["round_trips_each"] == 20
    assert pp["same_server_median_us"] > 0 and pp["across_servers_median_us"] > 0
    assert pp["across_over_same"] > 0
    assert sc["clients"] == 6 and sc["messages"] == 30 and sc["round_trips_per_s"] > 0
    assert len(sc["server_memory_per_client_bytes"]) == 3
