"""Tables and in-run ratios of `make bench`, with the goals of issue 15 next to them.

Every ratio divides two figures measured in the same run (interleaved batches), never a
figure from another run: the machine's speed drifts too much over minutes for that.
"""

from __future__ import annotations

from typing import Any

from messaging import NO_FLOW, PAIRINGS
from scale import HANDSHAKE_PAIRINGS

OURS_STREAMING = ("erlpeer_ext", "erlpeer_legacy", "py_erlpeer", "py_py")
WITH_ERLANG_PEER = ("erlpeer_ext", "erlpeer_legacy", "py_erlpeer")
SHORT = {
    "orig": "original<->original",
    "erlpeer_ext": "erlang_peer<->erlang_peer",
    "erlpeer_legacy": "erlang_peer<->erlang_peer legacy",
    "erlpeer_send": "erlang_peer<->erlang_peer blocking send/2",
    "py_erlpeer": "Python->erlang_peer",
    "py_py": "Python<->Python",
    "erlpeer_plain": "erlang_peer<->erlang_peer without acks/credit",
    "py_erlpeer_plain": "Python->erlang_peer without acks/credit",
    "py_py_plain": "Python<->Python without acks/credit",
    "erl_dist": "Erlang distribution",
    "gen_tcp": "gen_tcp echo",
    "asyncio": "asyncio echo",
}


def _get(res: dict[str, Any], scenario: str, pairing: str, key: str) -> float | None:
    summary = res.get(scenario, {}).get(pairing, {}).get("summary", {})
    value = summary.get(key)
    return value if isinstance(value, (int, float)) and value > 0 else None


def _why(res: dict[str, Any], scenario: str, *pairings: str) -> str:
    for p in pairings:
        summary = res.get(scenario, {}).get(p, {}).get("summary", {})
        if "skipped" in summary:
            return f"{SHORT[p]} not run"
        if summary.get("errors") and not summary.get("batches", 1):
            return f"{SHORT[p]} failed (see above)"
    return "not measured"


def _entry(label: str, num: float | None, den: float | None, goal: float | None, op: str, why: str,
           kind: str = "ratio", unit: str = "") -> dict[str, Any]:
    value = None if num is None or den is None else num / den
    e: dict[str, Any] = {"label": label, "value": value, "goal": goal, "op": op, "kind": kind, "unit": unit}
    if value is None:
        e["why"] = why
    if goal is not None and value is not None:
        e["met"] = value >= goal if op == ">=" else value <= goal
    return e


def ratios(out: dict[str, Any]) -> list[dict[str, Any]]:
    """The in-run ratios (and the absolute goals), each with its goal when issue 15 sets one."""
    m = out.get("messaging", {})
    burst = out.get("burst", {})
    scale = out.get("scale", {})
    e: list[dict[str, Any]] = []

    def rt(p: str) -> float | None:
        return _get(m, "pingpong", p, "rt_per_s")

    for p in ("erlpeer_ext", "erlpeer_legacy"):
        e.append(_entry(f"{SHORT[p]} rt/s / original rt/s", rt(p), rt("orig"), 1.5, ">=", _why(m, "pingpong", p, "orig")))
    e.append(_entry("Python->erlang_peer rt/s / original rt/s", rt("py_erlpeer"), rt("orig"), 1.0, ">=",
                    _why(m, "pingpong", "py_erlpeer", "orig")))
    e.append(_entry("erlang_peer<->erlang_peer CPU/rt (both sides) / Erlang distribution's",
                    _get(m, "pingpong", "erlpeer_ext", "cpu_total_us"), _get(m, "pingpong", "erl_dist", "cpu_total_us"),
                    2.0, "<=", _why(m, "pingpong", "erlpeer_ext", "erl_dist")))
    e.append(_entry("Python<->Python rt/s / bare asyncio echo rt/s", rt("py_py"), rt("asyncio"), 0.5, ">=",
                    _why(m, "pingpong", "py_py", "asyncio")))
    for p in OURS_STREAMING:
        e.append(_entry(f"{SHORT[p]} small-stream msgs/s / Erlang distribution's", _get(m, "stream", p, "msgs_per_s"),
                        _get(m, "stream", "erl_dist", "msgs_per_s"), 1.0, ">=", _why(m, "stream", p, "erl_dist")))
    for p in WITH_ERLANG_PEER:
        e.append(_entry(f"{SHORT[p]} 10 KiB stream MB/s", _get(m, "stream_10k", p, "mb_per_s"), 1.0, 900.0, ">=",
                        _why(m, "stream_10k", p), kind="absolute", unit="MB/s"))
    # no goal: a blocking send/2 per message waits for each write (the `!' rows above stream)
    e.append(_entry(f"{SHORT['erlpeer_send']} small-stream msgs/s / Erlang distribution's",
                    _get(m, "stream", "erlpeer_send", "msgs_per_s"), _get(m, "stream", "erl_dist", "msgs_per_s"), None, "",
                    _why(m, "stream", "erlpeer_send", "erl_dist")))
    e.append(_entry(f"{SHORT['erlpeer_send']} 10 KiB stream MB/s", _get(m, "stream_10k", "erlpeer_send", "mb_per_s"), 1.0,
                    None, "", _why(m, "stream_10k", "erlpeer_send"), kind="absolute", unit="MB/s"))
    # issue 12: acks and credit cost at most 10% of the throughput of the same connection without
    for p, plain in NO_FLOW.items():
        e.append(_entry(f"{SHORT[p]} small-stream msgs/s, acks+credit on / off", _get(m, "stream", p, "msgs_per_s"),
                        _get(m, "stream", plain, "msgs_per_s"), 0.9, ">=", _why(m, "stream", p, plain)))
        e.append(_entry(f"{SHORT[p]} 10 KiB stream MB/s, acks+credit on / off", _get(m, "stream_10k", p, "mb_per_s"),
                        _get(m, "stream_10k", plain, "mb_per_s"), 0.9, ">=", _why(m, "stream_10k", p, plain)))
    ext_burst = burst.get("erlpeer_ext", {}).get("summary", {})
    e.append(_entry("200k Proxy ! Msg burst on erlang_peer, msgs/s", ext_burst.get("msgs_per_s"), 1.0, 100_000.0, ">=",
                    _why({"burst": burst}, "burst", "erlpeer_ext"), kind="absolute", unit="msgs/s"))
    erl_px = scale.get("proxy_memory", {}).get("erlang_peer", {})
    e.append(_entry("erlang_peer bytes per idle proxy (process_info memory)", erl_px.get("idle_process_bytes_per_proxy"),
                    1.0, 1024.0, "<=", erl_px.get("error", "scale part not run"), kind="absolute", unit="B"))
    e.append(_entry("erlang_peer bytes per idle proxy, erlang:memory() delta (tables included)",
                    erl_px.get("idle_bytes_per_proxy"), 1.0, None, "", erl_px.get("error", "scale part not run"),
                    kind="absolute", unit="B"))
    e.append(_entry("erlang_peer proxies created per s", erl_px.get("proxies_per_s"), 1.0, None, "",
                    erl_px.get("error", "scale part not run"), kind="absolute", unit="/s"))
    route = out.get("route", {})
    rp = route.get("pingpong", {})
    e.append(_entry("routed C1->S->C2 / direct C1->S median round trip (Python nodes; 2 hops each way)",
                    rp.get("routed_median_us"), rp.get("direct_median_us"), None, "",
                    route.get("error", "route part not run")))
    cluster = out.get("cluster", {})
    cp = cluster.get("ping_pong", {})
    e.append(_entry("across two clustered servers / same server, client-to-client median round trip",
                    cp.get("across_servers_median_us"), cp.get("same_server_median_us"), None, "",
                    cluster.get("error", "cluster part not run")))
    growth = cluster.get("growth") or [{}]
    first, last = growth[0], growth[-1]
    n = last.get("servers", "?")
    e.append(_entry(f"cluster of {n} servers / of 3, across-servers median round trip",
                    last.get("ping_pong", {}).get("across_servers_median_us"),
                    first.get("ping_pong", {}).get("across_servers_median_us"), None, "",
                    cluster.get("error", "cluster growth not run")))
    e.append(_entry(f"cluster of {n} servers / of 3, routed round trips per s",
                    last.get("scale", {}).get("round_trips_per_s"), first.get("scale", {}).get("round_trips_per_s"),
                    None, "", cluster.get("error", "cluster growth not run")))
    e.append(_entry("cluster scale run, clients in several Python processes / in one, round trips per s",
                    cluster.get("scale_procs", {}).get("round_trips_per_s"),
                    cluster.get("scale", {}).get("round_trips_per_s"), None, "",
                    cluster.get("error", "cluster part not run")))
    # references without a goal: how far from the ceilings each implementation is
    for p in ("orig", "erlpeer_ext", "py_erlpeer", "erl_dist"):
        e.append(_entry(f"{SHORT[p]} rt/s / gen_tcp echo rt/s", rt(p), rt("gen_tcp"), None, "", _why(m, "pingpong", p, "gen_tcp")))
    e.append(_entry("erlang_peer<->erlang_peer rt/s / Erlang distribution rt/s", rt("erlpeer_ext"), rt("erl_dist"), None, "",
                    _why(m, "pingpong", "erlpeer_ext", "erl_dist")))
    e.append(_entry("original CPU/rt (both sides) / Erlang distribution's", _get(m, "pingpong", "orig", "cpu_total_us"),
                    _get(m, "pingpong", "erl_dist", "cpu_total_us"), None, "", _why(m, "pingpong", "orig", "erl_dist")))
    return e


# -- tables ------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def fmt(r: list[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def _cpu(s: dict[str, Any]) -> str:
    if "cpu_client_us" not in s:
        return "-"
    return f"{s['cpu_client_us']:.1f} + {s['cpu_server_us']:.1f}"


def _status(s: dict[str, Any]) -> str | None:
    if "skipped" in s:
        return "skipped"
    if s.get("errors") and not s.get("batches", 1):
        return "ERROR"
    return None


def messaging_table(res: dict[str, Any], counts: dict[str, Any]) -> str:
    pp = res.get("pingpong", {})
    rows = []
    for p, r in pp.items():
        s = r["summary"]
        status = _status(s)
        rows.append([PAIRINGS[p][0]] + ([status, "", "", ""] if status else
                    [_num(s.get("rt_per_s")), _num(s.get("median_us"), 1), _num(s.get("p99_us"), 1), _cpu(s)]))
    lines = [table([f"ping-pong ({counts['pingpong_rounds']} batches of {counts['pingpong_batch']:,} per pairing)",
                    "rt/s", "median us", "p99 us", "CPU us/rt client + server"], rows)]
    rows = []
    for p, r in res.get("stream", {}).items():
        s, s10 = r["summary"], res.get("stream_10k", {}).get(p, {}).get("summary", {})
        status = _status(s)
        rows.append([PAIRINGS[p][0]] + ([status, "", "", ""] if status else
                    [_num(s.get("msgs_per_s")), _cpu(s), _num(s10.get("mb_per_s"), 1), _cpu(s10)]))
    lines += ["", table([(f"streaming ({counts['stream_rounds']} batches of {counts['stream_batch']:,} small / "
                         f"{counts['stream_10k_rounds']} of {counts['stream_10k_batch']:,} x 10 KiB)"),
                         "small msgs/s", "CPU us/msg", "10 KiB MB/s", "CPU us/msg"], rows)]
    for scenario, by_pairing in res.items():
        for p, r in by_pairing.items():
            for err in sorted(set(r["summary"].get("errors", [])))[:2]:
                lines.append(f"  {scenario} / {p}: {err}")
    return "\n".join(lines)


def burst_table(res: dict[str, Any], n: int) -> str:
    rows = []
    for p, r in res.items():
        s = r["summary"]
        if "skipped" in s or "msgs_per_s" not in s:
            rows.append([PAIRINGS[p][0], "skipped" if "skipped" in s else "ERROR", "", ""])
            continue
        note = f"cap {s['cap_s']:.0f} s hit, {s['delivered']:,} delivered" if s["timed_out"] else "all delivered"
        rows.append([PAIRINGS[p][0], _num(s["msgs_per_s"]), _cpu(s), note])
    lines = [table([f"burst: {n:,} x Proxy ! Msg, nothing holding the sender back", "msgs/s", "CPU us/msg", ""], rows)]
    for p, r in res.items():
        for err in r["summary"].get("errors", []):
            lines.append(f"  burst / {p}: {err}")
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
            extra = (f"; {r['idle_bytes_per_proxy']:,.0f} B after {r['idle_ms'] / 1000:.1f} s idle"
                     f" (processes {r['processes_delta'] / r['n']:,.0f} B, ets {r['ets_delta'] / r['n']:,.0f} B per proxy)")
            if "idle_process_bytes_per_proxy" in r:
                extra += (f"\n  {'erlang_peer, process_info memory':<36} {r['process_bytes_per_proxy']:>8,.0f} B/proxy live, "
                          f"{r['idle_process_bytes_per_proxy']:,.0f} B idle ({r['sample_hibernated']:,} of a sample of "
                          f"{r['sample']:,} hibernated)")
        lines.append(f"  {label:<36} {r['bytes_per_proxy']:>8,.0f} B/proxy, created at {r['proxies_per_s']:>9,.0f}/s{extra}")
    hs = res["handshakes"]
    rows = []
    for p, label in HANDSHAKE_PAIRINGS.items():
        rows.append([label] + [_num(by_pairing[p]["summary"].get("per_s")) for by_pairing in hs.values()])
    header = [f"connect + handshake + close ({counts['handshakes']} per round), per s"]
    header += [f"{key.split('_')[1]} at a time" for key in hs]
    lines.append(table(header, rows))
    for key, by_pairing in hs.items():
        for p, r in by_pairing.items():
            for err in r["summary"].get("errors", []):
                lines.append(f"  {key} / {p}: {err}")
    return "\n".join(lines)


def route_table(res: dict[str, Any]) -> str:
    """The route part (bench/route_bench.py's JSON)."""
    if "error" in res:
        return f"ERROR {res['error']}"
    pp, sc = res["pingpong"], res["scale"]
    rows = [
        ["direct C1 -> S echo", f"{pp['direct_median_us']:,.1f}"],
        ["routed C1 -> S -> C2 echo", f"{pp['routed_median_us']:,.1f}"],
        ["routed / direct", f"{pp['routed_over_direct']:.2f}"],
    ]
    lines = [table([f"ping-pong, {pp['rounds']} rounds of {pp['batch']} interleaved", "median us"], rows)]
    lines.append(
        f"{sc['clients']:,} clients x {sc['pids_each']:,} pids to one client in {sc['seconds']:,.2f} s: "
        f"{sc['proxies_at_c1']:,} proxies at C1, RSS +{sc['c1_bytes_per_proxy']:,} B per proxy at C1, "
        f"+{sc['server_bytes_per_pid']:,} B per pid at the server (RSS {sc['server_rss_mib']:,.1f} MiB, "
        f"C1 {sc['c1_rss_mib']:,.1f} MiB); load {res['load_before'][0]} -> {res['load_after'][0]}"
    )
    return "\n".join(lines)


def cluster_table(res: dict[str, Any]) -> str:
    """The cluster part (bench/cluster_bench.py's JSON)."""
    if "error" in res:
        return f"ERROR {res['error']}"
    pp = res["ping_pong"]
    rows = [
        ["C1 -> A -> C2 echo (same server)", f"{pp['same_server_median_us']:,.1f}"],
        ["C1 -> A -> C -> C3 echo (across servers)", f"{pp['across_servers_median_us']:,.1f}"],
        ["across / same", f"{pp['across_over_same']:.2f}"],
    ]
    lines = [table([f"ping-pong, 3 servers, {pp['round_trips_each']:,} round trips each, interleaved", "median us"], rows)]
    runs = [res["scale"], *([res["scale_procs"]] if "scale_procs" in res else [])]
    rows = [[(f"{sc['clients']:,} clients over {sc['servers']} servers, in {sc['processes']} Python "
              f"process{'es' if sc['processes'] > 1 else ''}"),
             f"{sc['messages']:,}", f"{sc['seconds']:,.2f}", f"{sc['round_trips_per_s']:,}",
             ", ".join(f"{b / 1024:,.0f}" for b in sc["server_memory_per_client_bytes"])] for sc in runs]
    lines += ["", table(["scale: routed round trips", "messages", "s", "round trips/s", "KiB per local client, each server"],
                        rows)]
    if "procs_over_one" in res:
        lines.append(f"{res['scale_procs']['processes']} driver processes / 1: {res['procs_over_one']:.2f} x the round trips/s")
    if res.get("growth"):
        g0 = res["growth"][0]
        rows = [[f"{g['servers']} servers", f"{g['ping_pong']['across_servers_median_us']:,.1f}",
                 f"{g['across_median_vs_first']:.2f}", f"{g['ping_pong']['across_over_same']:.2f}",
                 f"{g['scale']['round_trips_per_s']:,}", f"{g['round_trips_per_s_vs_first']:.2f}",
                 f"{g['memory_per_client_mean_bytes'] / 1024:,.0f}", f"{g['memory_per_client_vs_first']:.2f}"]
                for g in res["growth"]]
        per = g0["scale"]["messages"] // g0["scale"]["clients"]
        lines += ["", table([f"growth ({g0['scale']['clients']} clients x {per} messages, one process)", "across us", "x 3", "across/same",
                             "round trips/s", "x 3", "KiB/client", "x 3"], rows)]
    return "\n".join(lines)


def ratio_table(entries: list[dict[str, Any]]) -> str:
    rows = []
    for e in entries:
        if e["value"] is None:
            measured, verdict = "n/a", e.get("why", "")
        else:
            digits = 2 if e["kind"] == "ratio" else 0
            measured = _num(e["value"], digits) + (f" {e['unit']}" if e["unit"] else "")
            verdict = "" if e["goal"] is None else ("met" if e["met"] else "NOT met")
        goal = "" if e["goal"] is None else f"goal {e['op']} {e['goal']:,g}{' ' + e['unit'] if e['unit'] else ''}"
        rows.append([e["label"], measured, goal, verdict])
    return table(["in-run ratios and goals (issue 15)", "measured", "goal", ""], rows)
