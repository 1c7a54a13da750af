"""`make bench`: codec, messaging and scale benchmarks of pyfabric, erlang_peer and Erlang, in one run.

Prints one table per part, the in-run ratios next to the goals of issue 15, and writes
everything (every batch, the machine's core count and load before and after) to
``bench/results/bench-<timestamp>.json`` and the ratios as a chart to ``bench-<timestamp>.png``.

- codec: ``bench/codec_bench.py`` (pyfabric.etf vs erlang_py vs Erlang's own
  term_to_binary/binary_to_term), run as a subprocess; its JSON is included as is;
- messaging (``bench/messaging.py``): ping-pong, streaming, 10 KiB streaming, every pairing
  interleaved batch by batch: the original (with ``ORIG_EBIN``), erlang_peer <->
  erlang_peer (extended and legacy), Python -> erlang_peer, Python <-> Python, Erlang
  distribution and the raw ceilings (gen_tcp ``{packet,4}`` and bare asyncio echoes);
  median/p99 latency and CPU per operation per side; streaming also with acks and credit
  off (their cost, issue 12); the slow-receiver run (``bench/flow.py``: peak memory at
  both ends); then, last of the run, the 200k ``Proxy ! Msg`` burst;
- scale (``bench/scale.py``): memory per live and idle proxy, creation and handshake rates;
- route (``bench/route_bench.py``, issue 13), run as a subprocess after the others (it
  starts its own routing server and clients): routed ping-pong C1 -> S -> C2 against direct
  C1 -> S in one run (ratio of the medians), and clients shipping pids to one client (the
  resident memory of the server and of that client per proxy); its JSON is included as is;
- cluster (``bench/cluster_bench.py``, issue 14), a subprocess too (clustered erlang_peer
  servers on ``-sname`` nodes): client-to-client ping-pong on the same server against across
  two servers in one run (ratio of the medians), 300 clients spread over three servers
  (throughput, server memory per client) driven by this one process and then by two driver
  processes, and the ping-pong and a smaller scale run again with 3, 5 and 7 servers (each
  as a ratio to the three-server figures); its JSON is included as is.

Usage: python bench/run.py [--quick] [--only codec|messaging|scale|route|cluster] [--repeat N]
       [--orig-ebin DIR] [--output-dir DIR]

``--quick`` uses tiny counts (a smoke run of a few seconds; the figures mean nothing).
``--orig-ebin DIR`` (default: ``$ORIG_EBIN``) is a directory with the original 2010
implementation's compiled ``fabric.beam`` and ``fabric_auth.beam`` (never part of this
repository); without it the original's pairing is skipped with one line saying so.
Needs ``erl``/``erlc`` and a compiled erlang_peer (``make peer``); ``make bench`` does both.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import harness  # noqa: E402
import report  # noqa: E402
from chart import write_chart  # noqa: E402
from flow import run_slow, slow_table  # noqa: E402
from harness import Env  # noqa: E402
from measure import PIN_MODES, loadavg, machine_info, new_event_loop  # noqa: E402
from messaging import PyClients, run_burst, run_messaging  # noqa: E402
from scale import run_scale  # noqa: E402

FULL = {
    "pingpong_batch": 500,
    "pingpong_rounds": 40,
    "stream_batch": 5_000,
    "stream_rounds": 10,
    "stream_10k_batch": 500,
    "stream_10k_rounds": 10,
    "burst": 200_000,
    "slow_n": 3_000,
    "slow_delay_ms": 1,
    "burst_cap_s": 20.0,
    "proxies": 100_000,
    "proxy_chunk": 10_000,
    "proxy_idle_ms": 2_500,
    "handshakes": 300,
    "handshake_concurrency": 8,
    "repeat": 3,
}
QUICK = {
    "pingpong_batch": 50,
    "pingpong_rounds": 2,
    "stream_batch": 500,
    "stream_rounds": 2,
    "stream_10k_batch": 50,
    "stream_10k_rounds": 2,
    "burst": 2_000,
    "slow_n": 100,
    "slow_delay_ms": 1,
    "burst_cap_s": 10.0,
    "proxies": 2_000,
    "proxy_chunk": 500,
    "proxy_idle_ms": 200,
    "handshakes": 8,
    "handshake_concurrency": 2,
    "repeat": 1,
}
ORIG_HINT = ("set ORIG_EBIN to a directory holding the original implementation's compiled fabric.beam and "
             "fabric_auth.beam: ORIG_EBIN=dir make bench")
PARTS = ("codec", "messaging", "scale", "route", "cluster")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- codec ------------------------------------------------------------------------------------


def run_codec(quick: bool) -> tuple[dict[str, Any], str]:
    """Run bench/codec_bench.py; return (its JSON, its table)."""
    with tempfile.TemporaryDirectory(prefix="codec_") as tmp:
        cmd = [sys.executable, str(ROOT / "bench" / "codec_bench.py"), "--output-dir", tmp]
        cmd.append("--quick" if quick else "--short")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            return {"error": f"codec_bench.py exited {proc.returncode}: {proc.stderr[-2000:]}"}, ""
        files = sorted(pathlib.Path(tmp).glob("codec-*.json"))
        if not files:
            return {"error": "codec_bench.py wrote no JSON"}, proc.stdout
        table = "\n".join(line for line in proc.stdout.splitlines() if not line.startswith("wrote "))
        return json.loads(files[-1].read_text()), table


def run_sub(script: str, quick: bool, args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run bench/<script> (it prints one JSON object last); return that JSON or an error."""
    cmd = [sys.executable, str(ROOT / "bench" / script), *(["--quick"] if quick else args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        return {"error": f"{script} did not finish in 1,800 s"}
    if proc.returncode != 0:
        return {"error": f"{script} exited {proc.returncode}: {proc.stderr[-2000:]}"}
    text = proc.stdout.strip()
    try:
        # the whole output (route_bench: indented), else its last line (cluster_bench)
        result: dict[str, Any] = json.loads(text) if text.startswith("{") else json.loads(text.splitlines()[-1])
    except (json.JSONDecodeError, IndexError) as exc:
        return {"error": f"{script} wrote no JSON ({exc}): {proc.stdout[-500:]}"}
    return result


def run_route(quick: bool) -> dict[str, Any]:
    """Run bench/route_bench.py (its defaults: 100 clients x 1,000 pids); return its JSON."""
    return run_sub("route_bench.py", quick)


def run_cluster(quick: bool) -> dict[str, Any]:
    """Run bench/cluster_bench.py: the issue's scale run (300 clients over 3 servers, in one
    and in two Python processes), then 3, 5 and 7 servers (its defaults)."""
    return run_sub("cluster_bench.py", quick, ("--clients", "300", "--messages", "10"))


# -- main -------------------------------------------------------------------------------------


async def run_live(parts: list[str], counts: dict[str, Any], out: dict[str, Any], orig_ebin: str | None, pin: str) -> None:
    log("starting the erl nodes and the Python server ...")
    async with Env(orig_ebin, pin) as env:

        out["machine"]["otp"] = env.otp
        out["machine"]["erl_flags"] = " ".join(harness.ERL_FLAGS)
        out["machine"]["erlang_distribution"] = env.dist or env.dist_error
        if env.orig:
            out["machine"]["original"] = {"ebin": orig_ebin}
        else:
            out["machine"]["original"] = {"skipped": env.orig_error or f"ORIG_EBIN is not set; {ORIG_HINT}"}
        out["machine"]["pids"] = {"runner": os.getpid(), "erl_client": env.cli.pid if env.cli else None,
                                  "erl_server": env.srv.pid if env.srv else None,
                                  "py_server": env.pysrv.pid if env.pysrv else None}
        if "messaging" in parts:
            log("messaging ...")
            out["messaging"] = await run_messaging(env, counts, log)
            log(f"slow receiver ({counts['slow_n']:,} messages, {counts['slow_delay_ms']} ms each at the receiver) ...")
            async with PyClients(env) as clients:
                out["slow"] = await run_slow(env, clients, counts["slow_n"], counts["slow_delay_ms"], log)
        if "scale" in parts:
            log("scale ...")
            out["scale"] = await run_scale(
                env,
                counts["proxies"],
                counts["proxy_chunk"],
                counts["proxy_idle_ms"],
                counts["handshakes"],
                counts["handshake_concurrency"],
                counts["repeat"],
                log,
            )
        out["machine"]["placement"] = {"mode": pin, "parts": env.placed}
        if "messaging" in parts:  # last: a collapsed burst leaves its connection busy
            log(f"burst ({counts['burst']:,} messages, at most {counts['burst_cap_s']:.0f} s each) ...")
            out["burst"] = await run_burst(env, counts["burst"], counts["burst_cap_s"], log)
        out["machine"]["placement"] = {"mode": pin, "parts": env.placed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run (figures mean nothing)")
    parser.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    parser.add_argument("--repeat", type=int, help="rounds of the handshake measurements (default 3; 1 with --quick)")
    parser.add_argument("--orig-ebin", default=os.environ.get("ORIG_EBIN") or None,
                        help="directory with the original implementation's beams (default: $ORIG_EBIN)")
    parser.add_argument("--pin", choices=PIN_MODES, default="auto",
                        help="CPU placement: auto (ping-pong on one CPU, streams split; the default), none (the kernel's), "
                             "split (clients on one CPU, servers on another), same (all on one CPU)")
    parser.add_argument("--output-dir", type=pathlib.Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    counts = dict(QUICK if args.quick else FULL)
    if args.repeat is not None:
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        counts["repeat"] = args.repeat
    parts = [p for p in PARTS if p in (args.only or PARTS)]
    started = time.time()
    out: dict[str, Any] = {
        "timestamp": started,
        "quick": args.quick,
        "command": " ".join(["run.py", *(sys.argv[1:] if argv is None else argv)]),
        "parts": parts,
        "config": counts,
        "machine": machine_info(),
    }
    out["machine"]["loadavg_before"] = loadavg()
    codec_table = ""
    if "codec" in parts:
        log("codec (bench/codec_bench.py) ...")
        out["codec"], codec_table = run_codec(args.quick)
    if "messaging" in parts or "scale" in parts:
        # SIGTERM (a timeout, Ctrl-C's cousin) must still stop the nodes we started.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        loop = new_event_loop()
        try:
            loop.run_until_complete(run_live(parts, counts, out, args.orig_ebin, args.pin))
        finally:
            harness.kill_leftovers()
            loop.close()
    if "route" in parts:
        log("route (bench/route_bench.py) ...")
        out["route"] = run_route(args.quick)
    if "cluster" in parts:
        log("cluster (bench/cluster_bench.py) ...")
        out["cluster"] = run_cluster(args.quick)
    out["machine"]["loadavg_after"] = loadavg()
    out["elapsed_s"] = time.time() - started

    stamp = datetime.datetime.fromtimestamp(started).strftime("%Y%m%d-%H%M%S")
    base = args.output_dir / f"bench-{stamp}{'-quick' if args.quick else ''}"
    lines = header_lines(out, counts, started, args.quick)
    if "codec" in out:
        lines += ["", "== codec =="]
        lines.append(codec_table if codec_table else f"ERROR {out['codec'].get('error')}")
    if "messaging" in out:
        lines += ["", "== messaging (loopback, one OS process per side) ==", report.messaging_table(out["messaging"], counts)]
    if "slow" in out:
        lines += ["", slow_table(out["slow"], counts["slow_n"], counts["slow_delay_ms"])]
    if "burst" in out:
        lines += ["", report.burst_table(out["burst"], counts["burst"])]
    if "scale" in out:
        lines += ["", "== scale ==", report.scale_table(out["scale"], counts)]
    if "route" in out:
        lines += ["", "== route (issue 13: C1 -> routing server -> C2, Python nodes) ==", report.route_table(out["route"])]
    if "cluster" in out:
        lines += ["", "== cluster (issue 14: clustered erlang_peer servers, Python clients) ==",
                  report.cluster_table(out["cluster"])]
    if "messaging" in out or "scale" in out or "route" in out or "cluster" in out:
        out["ratios"] = report.ratios(out)
        title = (f"pyfabric bench {datetime.datetime.fromtimestamp(started).isoformat(timespec='seconds')}"
                 f"{' (QUICK: figures meaningless)' if args.quick else ''}; load {out['machine']['loadavg_before'][0]}"
                 f" -> {out['machine']['loadavg_after'][0]} on {out['machine']['cpu_count']} cores")
        chart_line = write_chart(out["ratios"], base.with_suffix(".png"), title)
        out["chart"] = chart_line
        lines += ["", "== ratios (all from this run) ==", report.ratio_table(out["ratios"]), "", chart_line]
    print("\n".join(lines), flush=True)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = base.with_suffix(".json")
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


def header_lines(out: dict[str, Any], counts: dict[str, Any], started: float, quick: bool) -> list[str]:
    m = out["machine"]
    orig = m.get("original", {})
    lines = [
        "",
        (f"fabric benchmarks{' (QUICK run: tiny counts, figures not meaningful)' if quick else ''}: "
        f"{datetime.datetime.fromtimestamp(started).isoformat(timespec='seconds')}"),
        (f"machine: {m['cpu_count']} cores{', ' + m['cpu_model'] if 'cpu_model' in m else ''}; "
        f"load average before {' '.join(map(str, m['loadavg_before']))}, after {' '.join(map(str, m['loadavg_after']))}"),
        (f"python {m['python']} ({m['event_loop']}), OTP {m.get('otp', '?')} (erl {m.get('erl_flags', '')}); "
        f"CPU from {m['cpu_source']}; {out['elapsed_s']:.0f} s"),
        ("throughput and CPU per operation: medians of the per-batch figures; latency percentiles over every round trip;"
        " pairings interleaved batch by batch"),
    ]
    placed = m.get("placement", {})
    if placed:
        parts = ", ".join(f"{part} {mode}" for part, mode in placed["parts"].items())
        lines.append(f"CPU placement --pin {placed['mode']}: {parts} (same: both sides on one CPU; split: one CPU each)")
    if "skipped" in orig:
        lines.append(f"original implementation: skipped ({orig['skipped']})")
    elif "ebin" in orig:
        lines.append(f"original implementation: {orig['ebin']}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
