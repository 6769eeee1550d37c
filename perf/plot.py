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


def _save(fig, path: str, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)


# Modes the peers have no counterpart of (torch's fused Adam keeps no remainder, rounds
# nothing stochastically and has no moment dtype of its own): no peer bar there.
_NO_PEER_WORDS = ("remainder", "stochastic", "bf16-moments")


def bytes_per_param(measured: dict[str, float], path: str,
                    label: str = "triton_adam (SASS audit, worst variant)") -> None:
    """Grouped horizontal bars per mode: the floor, ``measured`` (mode -> B/param) and each
    peer where the peer has the mode."""
    plt = _pyplot()
    modes = [m for m in FLOORS if m in measured]
    series = {"floor": [floor_bytes(m) for m in modes], label: [measured[m] for m in modes]}
    series.update({peer: [None if any(w in m for w in _NO_PEER_WORDS) else peer_bytes(peer, m)
                          for m in modes] for peer in PEER_GRAD_PASSES})
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.42 * len(modes)))
    height = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        shown = [(j, v) for j, v in enumerate(values) if v is not None]
        ys = [j + (i - (len(series) - 1) / 2) * height for j, _ in shown]
        bars = ax.barh(ys, [v for _, v in shown], height, label=name)
        ax.bar_label(bars, fmt="%g", fontsize=7, padding=2)
    ax.set_yticks(range(len(modes)), modes, fontsize=8)
    ax.invert_yaxis()  # FLOORS order, top to bottom
    ax.set_xlabel("bytes per parameter per step")
    ax.set_title("Bytes moved per parameter per Adam step (lower is better)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlim(0, max(v for vs in series.values() for v in vs if v is not None) * 1.15)
    fig.text(0.01, 0.005, "floor and torch bars: docs/performance.md section 1 (the floor + "
             "3 passes over g for clip_grad_norm_;\nnone where torch has no such mode); "
             "triton_adam: compiled SASS, sm_80 and sm_90", fontsize=7, color="0.4")
    _save(fig, path, rect=(0, 0.03, 1, 1))  # room for the two-line note below the axes


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
