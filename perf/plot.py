"""How are the performance measurements drawn? PNG charts with matplotlib (Agg, no display).

``bytes_per_param`` draws the static audit beside the floor and the peers
(``perf/audit.py --plot PATH``); ``bandwidth`` draws GB/s against size from a GPU run
(``perf/bench.py --plot PATH``). matplotlib is imported only when a chart is drawn, so the
tools run without it when no plot is asked for (it is in the ``perf`` extra).
"""

from __future__ import annotations

import os

from floors import FLOORS, PEER_GRAD_PASSES, floor_bytes, peer_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: CI machines have no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def bytes_per_param(measured: dict[str, float], path: str,
                    label: str = "triton_adam (SASS audit, worst variant)") -> None:
    """Grouped bars per mode: the floor, ``measured`` (mode -> B/param) and each peer."""
    plt = _pyplot()
    modes = [m for m in FLOORS if m in measured]
    series = {"floor": [floor_bytes(m) for m in modes], label: [measured[m] for m in modes]}
    series.update({peer: [peer_bytes(peer, m) for m in modes] for peer in PEER_GRAD_PASSES})
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(modes))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%g", fontsize=8)
    ax.set_xticks(range(len(modes)), modes)
    ax.set_ylabel("bytes per parameter per step")
    ax.set_title("Bytes moved per parameter per Adam step (lower is better)")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(0, max(max(v) for v in series.values()) * 1.2)
    fig.text(0.01, 0.01, "floor and torch bars: docs/performance.md section 1 (the floor + "
             "3 passes over g for clip_grad_norm_); triton_adam: compiled SASS, sm_80 and sm_90",
             fontsize=7, color="0.4")
    _save(fig, path)


def bandwidth(rows: list[dict], path: str) -> None:
    """GB/s (from the floors) against parameter count, one line per implementation."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name in dict.fromkeys(r["impl"] for r in rows):
        points = sorted((r["params"], r["gb_per_s"]) for r in rows if r["impl"] == name)
        ax.plot(*zip(*points), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("GB/s (floor bytes / time)")
    ax.set_title("Adam step bandwidth against size")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    _save(fig, path)
