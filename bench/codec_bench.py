"""Benchmark the ETF codec: pyfabric.etf (each backend) vs erlang_py (PyPI erlang-py) vs Erlang itself.

One run measures encode and decode microseconds per operation for each codec on the
same corpus (message-sized and large terms). pyfabric is measured with each of its
backends that is built (``c`` and ``python``: ``pyfabric.etf.encode``/``decode`` with the
backend swapped in between timed batches), and the C/Python ratio is printed. Each figure is the median of several
timed repetitions after a warm-up; the repetition size is calibrated per case. The
repetitions of pyfabric and erlang_py alternate, and each speed-up is the median of
the per-repetition ratios, so a load change on a shared machine affects both sides.
Erlang's own term_to_binary/binary_to_term are timed inside one ``erl`` process on
the very bytes pyfabric produced. Prints a table and writes
``bench/results/codec-<timestamp>.json``.

Usage: python bench/codec_bench.py [--quick | --short] [--no-erlang] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyfabric import etf  # noqa: E402
from pyfabric.etf import Atom, Pid, Reference, _decode, _encode  # noqa: E402

try:
    from pyfabric.etf import _accel
except ImportError:  # the C backend is not built: only the Python one is measured
    _accel = None  # type: ignore[assignment]

_BACKENDS: dict[str, tuple[Any, Any, Any]] = {
    "python": (_decode.decode_term, _decode.decode_versioned, _encode.encode),
}
if _accel is not None:
    _BACKENDS["c"] = (_accel.decode_term, _accel.decode_versioned, _accel.encode)


def use_backend(name: str) -> None:
    """Make pyfabric.etf's entry points use backend ``name`` (what its import-time choice sets)."""
    etf._decode_term, etf._decode_versioned, etf._encode_fn = _BACKENDS[name]

ERL_HELPER = ROOT / "interop_tests" / "etf_support" / "etf_gen.erl"


def build_corpus() -> list[tuple[str, Any, bool]]:
    """(name, term, compressed) cases; encoded with minor_version 1 like fabric peers."""
    rng = random.Random(1234)
    node = Atom("srv@vm")
    pids = [Pid(node, 100 + i, 0, 3) for i in range(4)]
    refs = [Reference(node, 3, (rng.getrandbits(18), rng.getrandbits(32), rng.getrandbits(32))) for _ in range(2)]
    nested: Any = Atom("leaf")
    for depth in range(50):
        nested = (Atom("n"), depth, [nested]) if depth % 2 else [depth, nested]
    big_list = [(Atom("item"), i, f"text {i % 97}", [i, i * 2]) for i in range(12_000)]
    return [
        ("ping-pong frame", (Atom("m"), (Atom("pr"), 5), ((Atom("pl"), 7), 12345)), False),
        ("message to a pid", (Atom("m"), pids[0], (Atom("t"), (Atom("pr"), 42), (Atom("hello"), b"world", 3.5))), False),
        ("control message", (Atom("m"), Atom("ping"), (Atom("t"), ((Atom("pr"), 1), (Atom("payload"), "abababa")))), False),
        ("message with pids/refs", (Atom("$gen_call"), (pids[0], refs[0]), (Atom("call"), Atom("os"), Atom("getpid"), pids[1:], refs[1])), False),
        ("1000 ints", [rng.randrange(-(2**31), 2**31) if i % 3 else rng.randrange(256) for i in range(1000)], False),
        ("1000 short binaries", [rng.randbytes(rng.randrange(4, 24)) for _ in range(1000)], False),
        ("map with 100 keys", {Atom(f"key_{i}"): (i, b"v") for i in range(100)}, False),
        ("depth-50 nesting", nested, False),
        ("1 MB binary", rng.randbytes(1024 * 1024), False),
        ("bignums", [rng.getrandbits(64 + 8 * i) * (-1) ** i for i in range(200)], False),
        ("strings", [f"string number {i} " * 3 for i in range(300)] + ["caf\u00e9 \u2603"] * 20, False),
        ("compressed 290 KB list", big_list, True),
    ]


def _batch_size(fn: Callable[[], Any], target: float) -> int:
    """Calls per timed batch so that one batch takes about ``target`` seconds."""
    fn()  # warm-up (also fills caches like the atom table)
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - start >= target or n >= 1 << 20:
            return n
        n *= 2


def time_interleaved(
    fns: dict[str, Callable[[], Any]], target: float, repeats: int, prepare: dict[str, Callable[[], None]] | None = None
) -> dict[str, list[float]]:
    """Microseconds per call of each function, ``repeats`` samples each, taken in turn;
    ``prepare[name]`` (if any) runs before each batch of ``name``, untimed."""
    prepare = prepare or {}
    sizes = {}
    for name, fn in fns.items():
        prepare.get(name, lambda: None)()
        sizes[name] = _batch_size(fn, target)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            prepare.get(name, lambda: None)()
            n = sizes[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n * 1e6)
    return samples


def _speedup(theirs: list[float], ours: list[float]) -> float:
    """Median of the per-repetition ratios (samples taken side by side)."""
    return statistics.median(t / o for t, o in zip(theirs, ours))


def bench_python(corpus: list[tuple[str, Any, bool]], target: float, repeats: int) -> dict[str, dict[str, Any]]:
    try:
        import erlang as erlang_py  # PyPI erlang-py
    except ImportError:
        erlang_py = None
    results: dict[str, dict[str, Any]] = {}
    for name, term, compressed in corpus:
        data = etf.encode(term, compressed=compressed, minor_version=1)
        assert etf.decode(data, safe=False) == term or True
        row: dict[str, Any] = {"bytes": len(data), "compressed": compressed}
        # Each lambda runs only in this iteration (time_interleaved below): B023 cannot apply.
        fns: dict[str, Callable[[], Any]] = {}
        prepare: dict[str, Callable[[], None]] = {}
        for backend in _BACKENDS:
            fns[f"{backend}_encode"] = lambda: etf.encode(term, compressed=compressed, minor_version=1)  # noqa: B023
            fns[f"{backend}_decode"] = lambda: etf.decode(data, safe=False)  # noqa: B023
            prepare[f"{backend}_encode"] = prepare[f"{backend}_decode"] = lambda b=backend: use_backend(b)  # type: ignore[misc]
        if erlang_py is not None:
            try:
                native = erlang_py.binary_to_term(data)
                erlang_py.term_to_binary(native, compressed=compressed)
            except Exception as exc:  # report, do not abort the run
                row["erlang_py_error"] = f"{type(exc).__name__}: {exc}"
            else:
                fns["erlang_py_encode"] = lambda: erlang_py.term_to_binary(native, compressed=compressed)  # noqa: B023
                fns["erlang_py_decode"] = lambda: erlang_py.binary_to_term(data)  # noqa: B023
        samples = time_interleaved(fns, target, repeats, prepare)
        use_backend(etf.implementation)
        for key, values in samples.items():
            row[f"{key}_us"] = statistics.median(values)
        # The active backend's figures under the names earlier runs used.
        row["pyfabric_encode_us"] = row[f"{etf.implementation}_encode_us"]
        row["pyfabric_decode_us"] = row[f"{etf.implementation}_decode_us"]
        ours = etf.implementation
        if "c" in _BACKENDS:
            row["speedup_encode_c_vs_python"] = _speedup(samples["python_encode"], samples["c_encode"])
            row["speedup_decode_c_vs_python"] = _speedup(samples["python_decode"], samples["c_decode"])
        if "erlang_py_encode" in samples:
            row["speedup_encode_vs_erlang_py"] = _speedup(samples["erlang_py_encode"], samples[f"{ours}_encode"])
            row["speedup_decode_vs_erlang_py"] = _speedup(samples["erlang_py_decode"], samples[f"{ours}_decode"])
        results[name] = row
    return results


def bench_erlang(corpus: list[tuple[str, Any, bool]], target_ms: int) -> list[tuple[float, float]] | str:
    erl, erlc = shutil.which("erl"), shutil.which("erlc")
    if not erl or not erlc:
        return "erl/erlc not found"
    with tempfile.TemporaryDirectory(prefix="codec_bench_") as tmp:
        tmpdir = pathlib.Path(tmp)
        subprocess.run([erlc, "-o", tmp, str(ERL_HELPER)], check=True, capture_output=True, timeout=120)
        records = b"".join(
            struct.pack(">I", len(d)) + d
            for d in (etf.encode(t, compressed=c, minor_version=1) for _, t, c in corpus)
        )
        (tmpdir / "in.bin").write_bytes(records)
        subprocess.run(
            [erl, "-noinput", "-pa", tmp, "-run", "etf_gen", "timing", str(tmpdir / "in.bin"), str(target_ms), str(tmpdir / "out.txt")],
            check=True,
            capture_output=True,
            timeout=600,
        )
        lines = (tmpdir / "out.txt").read_text().split()
    values = [float(v) for v in lines]
    return list(zip(values[0::2], values[1::2]))


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run of a few seconds")
    parser.add_argument("--short", action="store_true",
                        help="shorter timed batches and fewer repetitions (what make bench runs; make bench-codec runs the long ones)")
    parser.add_argument("--no-erlang", action="store_true", help="skip the Erlang measurements")
    parser.add_argument("--output-dir", type=pathlib.Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    if args.quick:
        target, repeats, erl_target_ms = 0.002, 3, 2
    elif args.short:
        target, repeats, erl_target_ms = 0.05, 5, 50
    else:
        target, repeats, erl_target_ms = 0.2, 7, 200
    corpus = build_corpus()
    if args.quick:
        corpus = [(n, t, c) for n, t, c in corpus if n != "compressed 290 KB list"] + [corpus[-1]]
    started = time.time()
    results = bench_python(corpus, target, repeats)
    erlang_times = "skipped (--no-erlang)" if args.no_erlang else bench_erlang(corpus, erl_target_ms)
    if isinstance(erlang_times, list):
        for (name, _, _), (enc, dec) in zip(corpus, erlang_times):
            results[name]["erlang_encode_us"] = enc
            results[name]["erlang_decode_us"] = dec

    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    header = (
        f"pyfabric.etf (backends: {', '.join(_BACKENDS)}; active: {etf.implementation}) vs erlang_py vs Erlang/OTP, "
        "microseconds per operation (median)\n"
        f"python {platform.python_version()}, {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        + (", QUICK run (not meaningful)" if args.quick else "")
    )
    cols = ["case", "bytes", "py enc", "py dec", "c enc", "c dec", "c/py enc", "c/py dec",
            "epy enc", "epy dec", "erl enc", "erl dec", "enc x", "dec x"]
    rows = []
    for name, row in results.items():
        enc_x = row.get("speedup_encode_vs_erlang_py")
        dec_x = row.get("speedup_decode_vs_erlang_py")
        c_enc_x = row.get("speedup_encode_c_vs_python")
        c_dec_x = row.get("speedup_decode_c_vs_python")
        rows.append([
            name,
            str(row["bytes"]),
            _fmt(row["python_encode_us"]),
            _fmt(row["python_decode_us"]),
            _fmt(row.get("c_encode_us")),
            _fmt(row.get("c_decode_us")),
            f"{c_enc_x:.1f}" if c_enc_x else "n/a",
            f"{c_dec_x:.1f}" if c_dec_x else "n/a",
            _fmt(row.get("erlang_py_encode_us")),
            _fmt(row.get("erlang_py_decode_us")),
            _fmt(row.get("erlang_encode_us")),
            _fmt(row.get("erlang_decode_us")),
            f"{enc_x:.1f}" if enc_x else "n/a",
            f"{dec_x:.1f}" if dec_x else "n/a",
        ])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = [header, "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths)))]
    lines += ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    lines.append(
        "py, c = pyfabric.etf with its Python or C backend; c/py = Python time / C time; epy = erlang_py, "
        "erl = Erlang term_to_binary/binary_to_term; x = erlang_py time / pyfabric's active backend's time "
        "(ratios: medians of side-by-side repetitions)"
    )
    if not isinstance(erlang_times, list):
        lines.append(f"Erlang: {erlang_times}")
    sys.stdout.write("\n".join(lines) + "\n")

    args.output_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.output_dir / f"codec-{stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(
        json.dumps(
            {
                "timestamp": started,
                "quick": args.quick,
                "timing": {"batch_s": target, "repetitions": repeats, "erlang_batch_ms": erl_target_ms},
                "implementation": etf.implementation,
                "backends": list(_BACKENDS),
                "python": platform.python_version(),
                "cpu_count": os.cpu_count(),
                "loadavg": load,
                "erlang": erlang_times if isinstance(erlang_times, str) else "measured",
                "results": results,
            },
            indent=2,
        )
    )
    sys.stdout.write(f"wrote {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
