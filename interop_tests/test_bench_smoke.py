"""`make bench` works: ``bench/run.py --quick`` completes and writes the expected JSON.

A smoke test only: tiny counts, no assertion on any figure's size (timings on a shared
machine prove nothing), only that every pairing ran and produced its figures. It needs
``erl`` (both Erlang nodes and the Erlang-side drivers run). The original implementation
runs when ``ORIG_EBIN`` is set in the environment, and is reported as skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from erlnode import ensure_compiled
from interop_support import require_erl

ROOT = Path(__file__).resolve().parents[1]

OURS = {"erlpeer_ext", "erlpeer_legacy", "py_erlpeer", "py_py"}
PINGPONG = OURS | {"erl_dist", "gen_tcp", "asyncio"}
STREAMING = OURS | {"erl_dist", "erlpeer_send"}  # erlpeer_send: the blocking send/2 stream
HANDSHAKE_PAIRINGS = {"py_py", "py_erlpeer", "erlpeer_ext", "erlpeer_legacy", "erlpeer_py"}
METRICS = {
    "pingpong": ("rt_per_s", "median_us", "p99_us", "cpu_client_us", "cpu_server_us"),
    "stream": ("msgs_per_s", "cpu_client_us", "cpu_server_us"),
    "stream_10k": ("mb_per_s", "msgs_per_s", "cpu_client_us", "cpu_server_us"),
}


def test_bench_quick_run(tmp_path: Path) -> None:
    require_erl()
    ensure_compiled()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(tmp_path.glob("bench-*-quick.json"))
    assert len(files) == 1, proc.stdout
    out = json.loads(files[0].read_text())

    assert out["quick"] is True
    assert out["parts"] == ["codec", "messaging", "scale", "route", "cluster"]
    machine = out["machine"]
    assert machine["cpu_count"] >= 1
    assert len(machine["loadavg_before"]) == 3 and len(machine["loadavg_after"]) == 3
    assert machine["cpu_source"].startswith("/proc/")
    assert machine["placement"] == {
        "mode": "auto",
        "parts": {"pingpong": "same", "stream": "split", "stream_10k": "split", "scale": "none", "burst": "split"},
    }

    assert "error" not in out["codec"], out["codec"]
    assert out["codec"]["results"], out["codec"]

    orig_ran = bool(os.environ.get("ORIG_EBIN"))
    if orig_ran:
        assert "ebin" in machine["original"], machine["original"]
    else:
        assert "ORIG_EBIN" in machine["original"]["skipped"]
        assert "original implementation: skipped" in proc.stdout

    messaging = out["messaging"]
    assert set(messaging) == set(METRICS)
    dist = machine["erlang_distribution"] is True
    for scenario, metrics in METRICS.items():
        pairings = messaging[scenario]
        expected = PINGPONG if scenario == "pingpong" else STREAMING
        expected = (expected if dist else expected - {"erl_dist"}) | ({"orig"} if orig_ran else set())
        assert expected <= set(pairings), (scenario, sorted(pairings))
        for pairing in expected:
            summary = pairings[pairing]["summary"]
            assert "errors" not in summary and "skipped" not in summary, (scenario, pairing, summary)
            assert summary["batches"] == out["config"][f"{scenario}_rounds"], (scenario, pairing, summary)
            for metric in metrics:
                assert summary[metric] > 0, (scenario, pairing, metric, summary)
        if not orig_ran:
            assert "skipped" in pairings["orig"]["summary"]

    # the slow receiver, Python and erlang_peer senders (issue 12): nothing lost, credit agreed
    # where it is on (the figures themselves are not asserted)
    slow = out["slow"]
    assert set(slow) == {"py_py", "py_py_plain", "py_erlpeer", "py_erlpeer_plain", "erlpeer_ext", "erlpeer_plain",
                         "erlpeer_py"}, sorted(slow)
    for pairing, r in slow.items():
        s = r["summary"]
        assert "errors" not in s, (pairing, s)
        assert s["n"] == out["config"]["slow_n"] and s["msgs_per_s"] > 0 and s["receiver_peak_mailbox"] >= 1, (pairing, s)
    for pairing in ("erlpeer_ext", "erlpeer_py"):
        assert "credit" in slow[pairing]["summary"]["features"] and slow[pairing]["summary"]["credit_peer"], slow[pairing]
    assert "credit" not in slow["erlpeer_plain"]["summary"]["features"]
    assert "slow receiver" in proc.stdout

    burst = out["burst"]["erlpeer_ext"]["summary"]
    assert burst["n"] == out["config"]["burst"] and burst["delivered"] > 0 and burst["msgs_per_s"] > 0, burst

    scale = out["scale"]
    for key in ("pyfabric_rss", "pyfabric_tracemalloc", "erlang_peer"):
        r = scale["proxy_memory"][key]
        assert "error" not in r, (key, r)
        assert r["n"] == out["config"]["proxies"], (key, r)
        assert "bytes_per_proxy" in r
    erl_px = scale["proxy_memory"]["erlang_peer"]
    assert erl_px["idle_bytes_per_proxy"] > 0 and erl_px["proxies_per_s"] > 0
    assert erl_px["sample"] > 0 and erl_px["process_bytes_per_proxy"] > 0 and erl_px["idle_process_bytes_per_proxy"] > 0
    for key in ("concurrency_1", f"concurrency_{out['config']['handshake_concurrency']}"):
        by_pairing = scale["handshakes"][key]
        assert set(by_pairing) == HANDSHAKE_PAIRINGS
        for pairing, r in by_pairing.items():
            assert "errors" not in r["summary"], (key, pairing, r["summary"])
            assert r["summary"]["per_s"] > 0

    # the ratios: each has a value, or says why not (only the original's may be missing)
    ratios = {r["label"]: r for r in out["ratios"]}
    goal = ratios["Python<->Python rt/s / bare asyncio echo rt/s"]
    assert goal["goal"] == 0.5 and goal["value"] > 0 and isinstance(goal["met"], bool)
    for r in out["ratios"]:
        if r["value"] is None:
            assert "original" in r["why"] or not dist, r
    if importlib.util.find_spec("matplotlib") is not None:
        assert out["chart"] == f"chart: {files[0].with_suffix('.png')}" and files[0].with_suffix(".png").stat().st_size > 0
    else:
        assert "chart: skipped (matplotlib is not installed" in proc.stdout

    # the route part (bench/route_bench.py --quick, issue 13) is in the JSON and the ratios
    route = out["route"]
    assert "error" not in route, route
    assert route["pingpong"]["routed_median_us"] > 0 and route["scale"]["proxies_at_c1"] > 0
    assert ratios["routed C1->S->C2 / direct C1->S median round trip (Python nodes; 2 hops each way)"]["value"] > 0

    # the cluster part (bench/cluster_bench.py --quick, issue 14): three clustered servers, the
    # same-server and across-servers ping-pong and the scale run, each reported
    cluster = out["cluster"]
    assert "error" not in cluster, cluster
    pp, sc = cluster["ping_pong"], cluster["scale"]
    assert pp["round_trips_each"] == 20 and pp["same_server_median_us"] > 0 and pp["across_servers_median_us"] > 0
    assert sc["clients"] == 6 and sc["messages"] == 30 and sc["round_trips_per_s"] > 0
    assert len(sc["server_memory_per_client_bytes"]) == 3
    assert ratios["across two clustered servers / same server, client-to-client median round trip"]["value"] > 0
    # ... the scale run again with the clients in two driver processes, and the growth runs
    # (--quick: 3 then 4 servers), each with its ratio to the three-server figures
    sp = cluster["scale_procs"]
    assert sp["processes"] == 2 and sp["clients"] == 6 and sp["round_trips_per_s"] > 0
    assert [g["servers"] for g in cluster["growth"]] == [3, 4]
    assert all(g["round_trips_per_s_vs_first"] > 0 and len(g["scale"]["server_memory_per_client_bytes"]) == g["servers"]
               for g in cluster["growth"])
    for label in ("cluster of 4 servers / of 3, across-servers median round trip",
                  "cluster of 4 servers / of 3, routed round trips per s",
                  "cluster scale run, clients in several Python processes / in one, round trips per s"):
        assert ratios[label]["value"] > 0, label

    # the tables went to stdout
    for heading in ("== messaging (loopback", "== scale ==", "== route (issue 13", "== cluster (issue 14",
                    "== ratios (all from this run) ==", "goal >= 1.5"):
        assert heading in proc.stdout, heading


def test_route_bench_quick_run() -> None:
    """``bench/route_bench.py --quick`` (issue 13): both ping-pong paths and the pid shipping ran."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "route_bench.py"), "--quick"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["pingpong"]["direct_median_us"] > 0 and out["pingpong"]["routed_median_us"] > 0
    assert out["scale"]["proxies_at_c1"] == out["scale"]["clients"] * out["scale"]["pids_each"]
