"""The Pareto front of accuracy (PSNR, higher is better) against cost (MACs, lower is better), and its plot."""
from __future__ import annotations

from typing import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each (psnr, macs), whether no other point is at least as good in both and better in one."""
    flags = []
    for i, (psnr_i, macs_i) in enumerate(points):
        dominated = any(psnr_j >= psnr_i and macs_j <= macs_i and (psnr_j > psnr_i or macs_j < macs_i)
                        for j, (psnr_j, macs_j) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def axis_limits(values: Sequence[float]) -> tuple[float, float, bool]:
    """(low, high, logarithmic) that fit `values` with a margin: a log axis where they span more than 5x, so a
    sweep's cheap trials are not squeezed against the left edge."""
    low, high = min(values), max(values)
    if low > 0 and high / low > 5:
        return low / 1.2, high * 1.2, True
    pad = max((high - low) * 0.08, abs(high) * 0.02, 1e-3)
    return low - pad, high + pad, False


def point_label(row: dict) -> str:
    """A front member's label: its net and where its modules sit (e.g. 64x8 @1,3,5)."""
    net = row.get("net") or row.get("backbone", "")
    positions = row.get("positions", "")
    return f"{net} @{positions}" if positions and positions != "none" else f"{net} plain"


def plot_front(path: str, *, points: Sequence[tuple[float, float]], on_front: Sequence[bool], budget_macs: float | None,
               title: str, retrained: Sequence[tuple[float, float]] = (), labels: Sequence[str] = (),
               budgets: Sequence[float] = (), width: Sequence[tuple[float, float]] = ()) -> None:
    """PSNR against GMACs: every trial, the front highlighted, joined and labelled, the budget line, retrained
    scores, the width line (the plain net filling each budget, trained alike: does search beat width?); both
    axes fit the points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    others = [(m / 1e9, p) for (p, m), f in zip(points, on_front) if not f]
    front = sorted((m / 1e9, p) for (p, m), f in zip(points, on_front) if f)
    if others:
        axes.scatter(*zip(*others), s=22, color="0.6", label="trials")
    if front:
        axes.plot(*zip(*front), "-o", color="tab:red", ms=6, label="Pareto front (proxy)")
    if width:
        axes.plot(*zip(*sorted((m / 1e9, p) for p, m in width)), "--s", color="tab:green", ms=5,
                  label="width line (plain, widest in budget)")
    if retrained:
        axes.scatter([m / 1e9 for _, m in retrained], [p for p, _ in retrained], marker="*", s=140,
                     color="tab:blue", label="retrained", zorder=5)
    for (psnr, macs), flag, label in zip(points, on_front, labels):
        if flag and label:
            axes.annotate(label, (macs / 1e9, psnr), textcoords="offset points", xytext=(4, 5), fontsize=7)
    lines = sorted({*budgets, *([budget_macs] if budget_macs else [])})
    for index, budget in enumerate(lines):
        axes.axvline(budget / 1e9, color="k", ls="--", lw=1, label="budgets" if index == 0 and len(lines) > 1
                     else None if index else f"budget {budget / 1e9:g} GMACs")
    xs = [m / 1e9 for _, m in [*points, *retrained, *width]] + [b / 1e9 for b in lines]
    ys = [p for p, _ in [*points, *retrained, *width]]
    if xs:
        low, high, logarithmic = axis_limits(xs)
        if logarithmic:
            axes.set_xscale("log")
        axes.set_xlim(low, high)
        axes.set_ylim(*axis_limits(ys)[:2])
    axes.set_xlabel("cost (GMACs = GFLOPs as the field counts them)")
    axes.set_ylabel("validation PSNR (dB)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
