"""`make bench` works: ``bench/run.py --quick`` completes and writes the expected JSON.

A smoke test only: tiny counts, no assertion on any figure (timings on a shared machine
prove nothing). It needs ``erl`` (both Erlang nodes and the Erlang-side drivers run).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from erlnode import ensure_compiled
from interop_support import require_erl

ROOT = Path(__file__).resolve().parents[1]

MESSAGING_PAIRINGS = {"py_erlpeer", "erlpeer_ext", "erlpeer_legacy", "py_py", "erl_dist"}
HANDSHAKE_PAIRINGS = {"py_py", "py_erlpeer", "erlpeer_ext", "erlpeer_legacy", "erlpeer_py"}
METRICS = {
    "pingpong": ("rt_per_s", "median_us", "p99_us"),
    "stream": ("msgs_per_s",),
    "stream_10k": ("mb_per_s", "msgs_per_s"),
}


def test_bench_quick_run(tmp_path: Path) -> None:
    require_erl()
    ensure_compiled()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(tmp_path.glob("bench-*-quick.json"))
    assert len(files) == 1, proc.stdout
    out = json.loads(files[0].read_text())

    assert out["quick"] is True
    assert out["parts"] == ["codec", "messaging", "scale"]
    machine = out["machine"]
    assert machine["cpu_count"] >= 1
    assert len(machine["loadavg_before"]) == 3 and len(machine["loadavg_after"]) == 3

    assert "error" not in out["codec"], out["codec"]
    assert out["codec"]["results"], out["codec"]

    messaging = out["messaging"]
    assert set(messaging) == set(METRICS)
    for scenario, metrics in METRICS.items():
        pairings = messaging[scenario]
        expected = MESSAGING_PAIRINGS if machine["erlang_distribution"] is True else MESSAGING_PAIRINGS - {"erl_dist"}
        assert expected <= set(pairings), (scenario, sorted(pairings))
        for pairing in expected:
            summary = pairings[pairing]["summary"]
            assert "errors" not in summary, (scenario, pairing, summary)
            for metric in metrics:
                assert summary[metric] > 0, (scenario, pairing, metric, summary)

    scale = out["scale"]
    for key in ("pyfabric_rss", "pyfabric_tracemalloc", "erlang_peer"):
        r = scale["proxy_memory"][key]
        assert "error" not in r, (key, r)
        assert r["n"] == out["config"]["proxies"], (key, r)
        assert "bytes_per_proxy" in r
    for key in ("concurrency_1", f"concurrency_{out['config']['handshake_concurrency']}"):
        by_pairing = scale["handshakes"][key]
        assert set(by_pairing) == HANDSHAKE_PAIRINGS
        for pairing, r in by_pairing.items():
            assert "errors" not in r["summary"], (key, pairing, r["summary"])
            assert r["summary"]["per_s"] > 0

    # the table went to stdout
    assert "== messaging (loopback) ==" in proc.stdout and "== scale ==" in proc.stdout
