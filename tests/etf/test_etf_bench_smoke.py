"""Smoke test: bench/codec_bench.py --quick runs end to end (timings not asserted)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_codec_bench_quick(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "codec_bench.py"), "--quick", "--no-erlang", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "control message" in proc.stdout
    (result,) = tmp_path.glob("codec-*.json")
    data = json.loads(result.read_text())
    assert data["quick"] is True and "1 MB binary" in data["results"]
    for row in data["results"].values():
        assert row["pyfabric_encode_us"] > 0 and row["pyfabric_decode_us"] > 0
