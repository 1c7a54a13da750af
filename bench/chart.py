"""The PNG chart of `make bench`: every in-run ratio as a bar, its goal as a mark.

Ratios are drawn as measured; absolute goals (MB/s, msgs/s, bytes per proxy) as the
measured value divided by the goal, so on every bar "1" is the goal (for a "<=" goal,
less is better: the bar is the measured fraction of the allowed maximum). Needs
matplotlib (the ``bench`` extra: ``pip install -e '.[bench]'``); without it the run says
so and writes no chart.
"""

from __future__ import annotations

import pathlib
from typing import Any


def write_chart(entries: list[dict[str, Any]], path: pathlib.Path, title: str) -> str:
    """Draw the chart into ``path``; return a line for the report (written or skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "chart: skipped (matplotlib is not installed: pip install -e '.[bench]' or make setup)"
    # an absolute figure without a goal (a rate, a total) is in the table only: no scale to draw it on
    shown = [e for e in entries if e["value"] is not None and not (e["kind"] == "absolute" and e["goal"] is None)]
    if not shown:
        return "chart: skipped (no ratio was measured)"
    labels, values, goals, colors = [], [], [], []
    for e in shown:
        if e["kind"] == "absolute":
            labels.append(f"{e['label']} / goal ({e['value']:,.0f} {e['unit']}, goal {e['op']} {e['goal']:,g})")
            values.append(e["value"] / e["goal"])
            goals.append(1.0)
        else:
            goal_text = f" (goal {e['op']} {e['goal']:g})" if e["goal"] is not None else ""
            labels.append(f"{e['label']}{goal_text}")
            values.append(e["value"])
            goals.append(e["goal"])
        colors.append("tab:gray" if e["goal"] is None else ("tab:green" if e["met"] else "tab:red"))
    lo = min(0.05, min(values) / 1.5)
    hi = max(5.0, max(values) * 1.6, *(g * 1.2 for g in goals if g is not None))
    fig, ax = plt.subplots(figsize=(12, 0.42 * len(shown) + 1.6))
    y = list(range(len(shown)))[::-1]
    ax.barh(y, [v - lo for v in values], left=lo, color=colors, height=0.6)
    for yi, v, g in zip(y, values, goals):
        ax.text(v, yi, f" {v:.2f}", va="center", fontsize=8)
        if g is not None:
            ax.plot([g, g], [yi - 0.4, yi + 0.4], color="black", linewidth=2)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if lo <= t <= hi]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.axvline(1.0, color="black", linewidth=0.5, linestyle=":")
    ax.set_xlabel("ratio (log scale); black mark: goal; green: met, red: not met, grey: no goal")
    ax.set_title(title, fontsize=9, loc="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart: {path}"
