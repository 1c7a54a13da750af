"""Scale: memory per live proxy and connect+handshake rate (part of `make bench`).

Memory per proxy: a fresh connection to the erlang_peer server asks its ``bench_pids``
process for N distinct live pids, shipped in messages of ``chunk`` pids; every pid becomes
one live proxy on the receiving side, on that one connection.

- pyfabric: the growth of a fresh Python process (``python bench/scale.py proxies ...``,
  so that what the messaging runs allocated and freed does not blur its RSS) over the N
  proxies, measured twice, each in its own process: resident set size (after
  ``gc.collect()``), then ``tracemalloc`` (Python allocations only; apart because tracing
  inflates RSS). The lists the pids arrived in are dropped before measuring: only what
  the proxies keep is counted.
- erlang_peer: ``erlang:memory()`` delta on the Erlang client node (every process garbage
  collected before and after), measured inside Erlang, right after creation and again
  after the proxies sat idle for ``idle_ms`` (the original hibernates a proxy idle for
  1.1 s, erlang_peer one idle for a whole 1 s period; issue 15 asks for at most 1 KiB per
  idle proxy); and ``erlang:process_info(P, memory)`` of a sample of 1,000 of the proxies,
  live and idle, with how many of them hibernated.

Handshake rate: connect + full handshake + close, sequentially and with a few concurrent
connectors, for each client -> server pairing: Python -> Python, Python -> erlang_peer,
erlang_peer -> erlang_peer (extended; legacy MD5) and erlang_peer -> Python. The rounds
interleave the pairings; results are medians over rounds.
"""

from __future__ import annotations

import asyncio
import gc
import json
import pathlib
import sys
import time
import tracemalloc
from typing import Any

BENCH = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # run as a script: the pyfabric of this checkout

from harness import Env  # noqa: E402
from measure import rss_bytes, summarize  # noqa: E402

import pyfabric  # noqa: E402
from pyfabric import Atom  # noqa: E402

BENCH_PIDS = Atom("bench_pids")
CHUNK_TAG = Atom("bench_pids_chunk")
DONE_TAG = Atom("bench_pids_done")

HANDSHAKE_PAIRINGS: dict[str, str] = {
    "py_py": "Python -> Python",
    "py_erlpeer": "Python -> erlang_peer",
    "erlpeer_ext": "erlang_peer -> erlang_peer (extended)",
    "erlpeer_legacy": "erlang_peer -> erlang_peer (legacy)",
    "erlpeer_py": "erlang_peer -> Python",
}


async def python_proxies_subprocess(env: Env, n: int, chunk: int, method: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(BENCH / "scale.py"), "proxies", str(env.ext_port), env.secret, str(n), str(chunk), method,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(600):
            stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"scale.py proxies exited {proc.returncode}: {stderr.decode()[-2000:]}")
    return json.loads(stdout.decode().strip().splitlines()[-1])


async def python_proxies(port: int, secret: str, n: int, chunk: int, use_tracemalloc: bool) -> dict[str, Any]:
    client = await pyfabric.aconnect("127.0.0.1", port, secret, reconnect=False, max_proxies=n + 1000)
    try:
        box = client.mailbox(max_mailbox=10_000_000)
        # the bench_pids proxy and the first frames exist before measuring
        client.send(BENCH_PIDS, (BENCH_PIDS, box.pid, 0, chunk))
        await box.receive(match=(DONE_TAG, 0), timeout=10)
        before = client.statistics()["proxies"]
        gc.collect()
        if use_tracemalloc:
            tracemalloc.start()
            mem0 = tracemalloc.get_traced_memory()[0]
        else:
            mem0 = rss_bytes()
        start = time.perf_counter()
        client.send(BENCH_PIDS, (BENCH_PIDS, box.pid, n, chunk))
        got = 0
        while True:
            msg = await box.receive(timeout=120)
            if msg[0] == DONE_TAG:
                break
            got += len(msg[1])
            del msg
        created = time.perf_counter() - start
        gc.collect()
        mem1 = tracemalloc.get_traced_memory()[0] if use_tracemalloc else rss_bytes()
        proxies = client.statistics()["proxies"] - before
    finally:
        if use_tracemalloc and tracemalloc.is_tracing():
            tracemalloc.stop()
        await client.close()
    return {
        "n": got,
        "proxies": proxies,
        "bytes_per_proxy": (mem1 - mem0) / got,
        "total_delta": mem1 - mem0,
        "create_s": created,
        "proxies_per_s": got / created,
        "method": "tracemalloc" if use_tracemalloc else "rss",
    }


async def python_handshakes(port: int, secret: str, n: int, conc: int) -> dict[str, Any]:
    per = max(1, n // conc)

    async def worker() -> None:
        for _ in range(per):
            client = await pyfabric.aconnect("127.0.0.1", port, secret, reconnect=False)
            await client.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    elapsed = time.perf_counter() - start
    return {"n": per * conc, "concurrency": conc, "elapsed_s": elapsed, "per_s": per * conc / elapsed}


async def handshake_one(env: Env, pairing: str, n: int, conc: int) -> dict[str, Any]:
    assert env.cli is not None and env.pysrv is not None
    try:
        async with asyncio.timeout(600):
            if pairing == "py_py":
                return await python_handshakes(env.pysrv.port, env.secret, n, conc)
            if pairing == "py_erlpeer":
                return await python_handshakes(env.ext_port, env.secret, n, conc)
            port, mode = {
                "erlpeer_ext": (env.ext_port, "extended"),
                "erlpeer_legacy": (env.legacy_port, "legacy"),
                "erlpeer_py": (env.pysrv.port, "extended"),
            }[pairing]
            return await env.cli.command(f'{{handshakes, {port}, "{env.secret}", {mode}, {n}, {conc}}}', timeout=600)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


async def run_scale(env: Env, proxies: int, chunk: int, idle_ms: int, handshakes: int, concurrency: int, repeat: int,
                    log: Any = None) -> dict[str, Any]:
    assert env.cli is not None
    env.place("scale")
    out: dict[str, Any] = {"proxy_memory": {}, "handshakes": {}}
    try:
        erl = await env.cli.command(f'{{proxies, {env.ext_port}, "{env.secret}", {proxies}, {chunk}, {idle_ms}}}', timeout=600)
    except Exception as exc:
        erl = {"error": f"{type(exc).__name__}: {exc}"}
    out["proxy_memory"]["erlang_peer"] = erl
    for method in ("rss", "tracemalloc"):
        try:
            res = await python_proxies_subprocess(env, proxies, chunk, method)
        except Exception as exc:
            res = {"error": f"{type(exc).__name__}: {exc}"}
        out["proxy_memory"][f"pyfabric_{method}"] = res
        if log is not None:
            log(f"  proxies    pyfabric ({method}): {res.get('bytes_per_proxy', res.get('error'))}")
    if log is not None:
        log(f"  proxies    erlang_peer: {erl.get('bytes_per_proxy', erl.get('error'))}")

    pairings = list(HANDSHAKE_PAIRINGS)
    for conc in (1, concurrency):
        for pairing in pairings:  # warm-up
            await handshake_one(env, pairing, max(conc, handshakes // 10), conc)
        samples: dict[str, list[dict[str, Any]]] = {p: [] for p in pairings}
        for rnd in range(repeat):
            order = pairings[rnd % len(pairings):] + pairings[: rnd % len(pairings)]
            for pairing in order:
                sample = await handshake_one(env, pairing, handshakes, conc)
                samples[pairing].append(sample)
                if log is not None:
                    log(f"  handshake  {pairing:<15} x{conc} round {rnd + 1}/{repeat}: "
                        f"{sample.get('per_s', sample.get('error'))}")
        out["handshakes"][f"concurrency_{conc}"] = {
            p: {"label": HANDSHAKE_PAIRINGS[p], "summary": summarize(s), "samples": s} for p, s in samples.items()
        }
    return out


if __name__ == "__main__":
    # python bench/scale.py proxies PORT SECRET N CHUNK rss|tracemalloc: one JSON line
    from measure import new_event_loop

    _, what, port_s, secret_s, n_s, chunk_s, method_s = sys.argv
    assert what == "proxies" and method_s in ("rss", "tracemalloc")
    loop = new_event_loop()
    result = loop.run_until_complete(python_proxies(int(port_s), secret_s, int(n_s), int(chunk_s), method_s == "tracemalloc"))
    loop.close()
    print(json.dumps(result))
