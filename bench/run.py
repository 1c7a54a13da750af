"""`make bench`: codec, messaging and scale benchmarks of pyfabric, erlang_peer and Erlang, in one run.

Prints one table per part and writes everything (every sample, the machine's core count
and load before and after) to ``bench/results/bench-<timestamp>.json``.

- codec: ``bench/codec_bench.py`` (pyfabric.etf vs erlang_py vs Erlang's own
  term_to_binary/binary_to_term), run as a subprocess; its JSON is included as is;
- messaging (``bench/messaging.py``): ping-pong, streaming, 10 KiB streaming, for Python ->
  erlang_peer, erlang_peer <-> erlang_peer (extended and legacy), Python <-> Python and
  plain Erlang distribution;
- scale (``bench/scale.py``): memory per live proxy, connect+handshake rate.

Usage: python bench/run.py [--quick] [--only codec|messaging|scale] [--repeat N] [--output-dir DIR]

``--quick`` uses tiny counts (a smoke run of a few seconds; the figures mean nothing).
Needs ``erl``/``erlc`` and a compiled erlang_peer (``make peer``); ``make bench`` does both.
"""

from __future__ import annotations

import argparse
import datetime
import json
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
from harness import Env, loadavg, machine_info  # noqa: E402
from messaging import PAIRINGS, run_messaging  # noqa: E402
from scale import HANDSHAKE_PAIRINGS, run_scale  # noqa: E402

FULL = {
    "pingpong": 20_000,
    "stream": 100_000,
    "stream_10k": 100_000,
    "proxies": 100_000,
    "proxy_chunk": 10_000,
    "handshakes": 300,
    "handshake_concurrency": 8,
    "repeat": 3,
}
QUICK = {
    "pingpong": 200,
    "stream": 2_000,
    "stream_10k": 200,
    "proxies": 2_000,
    "proxy_chunk": 500,
    "handshakes": 8,
    "handshake_concurrency": 2,
    "repeat": 1,
}
PARTS = ("codec", "messaging", "scale")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- codec ------------------------------------------------------------------------------------


def run_codec(quick: bool) -> tuple[dict[str, Any], str]:
    """Run bench/codec_bench.py; return (its JSON, its table)."""
    with tempfile.TemporaryDirectory(prefix="codec_") as tmp:
        cmd = [sys.executable, str(ROOT / "bench" / "codec_bench.py"), "--output-dir", tmp]
        if quick:
            cmd.append("--quick")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            return {"error": f"codec_bench.py exited {proc.returncode}: {proc.stderr[-2000:]}"}, ""
        files = sorted(pathlib.Path(tmp).glob("codec-*.json"))
        if not files:
            return {"error": "codec_bench.py wrote no JSON"}, proc.stdout
        table = "\n".join(line for line in proc.stdout.splitlines() if not line.startswith("wrote "))
        return json.loads(files[-1].read_text()), table


# -- tables ------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def _cell(summary: dict[str, Any], key: str, digits: int = 0) -> str:
    if key in summary:
        return _num(summary[key], digits)
    return "ERR" if summary.get("errors") else "n/a"


def messaging_table(res: dict[str, Any], counts: dict[str, Any]) -> str:
    short = {
        "py_erlpeer": "py->erl_peer",
        "erlpeer_ext": "erl_peer ext",
        "erlpeer_legacy": "erl_peer legacy",
        "py_py": "py<->py",
        "erl_dist": "erl dist (ref)",
    }
    pairings = [p for p in PAIRINGS if p in res["pingpong"]]
    rows_spec = [
        ("pingpong", "rt_per_s", 0, f"ping-pong round trips/s ({counts['pingpong']:,})"),
        ("pingpong", "median_us", 1, "ping-pong median latency, us"),
        ("pingpong", "p99_us", 1, "ping-pong p99 latency, us"),
        ("stream", "msgs_per_s", 0, f"streaming msgs/s ({counts['stream']:,} small)"),
        ("stream_10k", "mb_per_s", 1, f"10 KiB streaming MB/s ({counts['stream_10k']:,})"),
        ("stream_10k", "msgs_per_s", 0, "10 KiB streaming msgs/s"),
        ("stream", "rss_growth_mb", 1, "py sender RSS growth while streaming, MB"),
        ("stream_10k", "rss_growth_mb", 1, "py sender RSS growth, 10 KiB stream, MB"),
    ]
    rows = []
    for scenario, key, digits, label in rows_spec:
        rows.append([label] + [_cell(res[scenario][p]["summary"], key, digits) for p in pairings])
    lines = [_table(["messaging (median of rounds)"] + [short[p] for p in pairings], rows)]
    for scenario, by_pairing in res.items():
        for p, r in by_pairing.items():
            for err in r["summary"].get("errors", []):
                lines.append(f"  {scenario} / {p}: {err}")
    return "\n".join(lines)


def scale_table(res: dict[str, Any], counts: dict[str, Any]) -> str:
    pm = res["proxy_memory"]
    lines = [f"memory per live proxy ({counts['proxies']:,} proxies on one connection):"]
    for key, label in (("pyfabric_rss", "pyfabric, RSS delta"), ("pyfabric_tracemalloc", "pyfabric, tracemalloc"),
                       ("erlang_peer", "erlang_peer, erlang:memory() delta")):
        r = pm.get(key, {})
        if "error" in r:
            lines.append(f"  {label:<36} ERROR {r['error']}")
            continue
        extra = ""
        if key == "erlang_peer":
            extra = (f"  (processes {r['processes_delta'] / r['n']:,.0f} B, ets {r['ets_delta'] / r['n']:,.0f} B,"
                     f" binary {r['binary_delta'] / r['n']:,.0f} B per proxy)")
        lines.append(f"  {label:<36} {r['bytes_per_proxy']:>8,.0f} B/proxy  created at {r['proxies_per_s']:>9,.0f}/s{extra}")
    hs = res["handshakes"]
    pairings = list(HANDSHAKE_PAIRINGS)
    short = {"py_py": "py->py", "py_erlpeer": "py->erl_peer", "erlpeer_ext": "erl_peer->erl_peer",
             "erlpeer_legacy": "same, legacy", "erlpeer_py": "erl_peer->py"}
    rows = []
    for key, by_pairing in hs.items():
        conc = key.split("_")[1]
        rows.append([f"connect+handshake+close/s, {conc} at a time"]
                    + [_cell(by_pairing[p]["summary"], "per_s") for p in pairings])
    lines.append(_table([f"handshakes ({counts['handshakes']} per round)"] + [short[p] for p in pairings], rows))
    for key, by_pairing in hs.items():
        for p, r in by_pairing.items():
            for err in r["summary"].get("errors", []):
                lines.append(f"  {key} / {p}: {err}")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


async def run_live(parts: list[str], counts: dict[str, Any], out: dict[str, Any]) -> None:
    log("starting the erl nodes and the Python server ...")
    async with Env() as env:
        out["machine"]["otp"] = env.otp
        out["machine"]["erl_flags"] = " ".join(harness.ERL_FLAGS)
        out["machine"]["erlang_distribution"] = env.dist or env.dist_error
        if "messaging" in parts:
            log("messaging ...")
            out["messaging"] = await run_messaging(
                env,
                {k: counts[k] for k in ("pingpong", "stream", "stream_10k")},
                counts["repeat"],
                log,
            )
        if "scale" in parts:
            log("scale ...")
            out["scale"] = await run_scale(
                env,
                counts["proxies"],
                counts["proxy_chunk"],
                counts["handshakes"],
                counts["handshake_concurrency"],
                counts["repeat"],
                log,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run (figures mean nothing)")
    parser.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    parser.add_argument("--repeat", type=int, help="rounds per measurement (default 3; 1 with --quick)")
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
        "command": " ".join([pathlib.Path(sys.argv[0]).name if argv is None else "run.py", *(sys.argv[1:] if argv is None else argv)]),
        "parts": parts,
        "config": counts,
        "machine": machine_info(),
    }
    out["machine"]["loadavg_before"] = out["machine"].pop("loadavg")
    codec_table = ""
    if "codec" in parts:
        log("codec (bench/codec_bench.py) ...")
        out["codec"], codec_table = run_codec(args.quick)
    if "messaging" in parts or "scale" in parts:
        # SIGTERM (a timeout, Ctrl-C's cousin) must still stop the nodes we started.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        loop = harness.new_event_loop()
        try:
            loop.run_until_complete(run_live(parts, counts, out))
        finally:
            harness.kill_leftovers()
            loop.close()
    out["machine"]["loadavg_after"] = loadavg()
    out["elapsed_s"] = time.time() - started

    m = out["machine"]
    lines = [
        "",
        f"fabric benchmarks{' (QUICK run: tiny counts, figures not meaningful)' if args.quick else ''}: "
        f"{datetime.datetime.fromtimestamp(started).isoformat(timespec='seconds')}",
        f"machine: {m['cpu_count']} cores{', ' + m['cpu_model'] if 'cpu_model' in m else ''}; "
        f"load average before {' '.join(map(str, m['loadavg_before']))}, after {' '.join(map(str, m['loadavg_after']))}",
        f"python {m['python']} ({m['event_loop']}), OTP {m.get('otp', '?')} (erl {m.get('erl_flags', '')}); "
        f"rounds: {counts['repeat']} after a warm-up, pairings interleaved; {out['elapsed_s']:.0f} s",
    ]
    if "codec" in out:
        lines += ["", "== codec =="]
        lines.append(codec_table if codec_table else f"ERROR {out['codec'].get('error')}")
    if "messaging" in out:
        lines += ["", "== messaging (loopback) ==", messaging_table(out["messaging"], counts)]
    if "scale" in out:
        lines += ["", "== scale ==", scale_table(out["scale"], counts)]
    print("\n".join(lines), flush=True)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.fromtimestamp(started).strftime("%Y%m%d-%H%M%S")
    path = args.output_dir / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
