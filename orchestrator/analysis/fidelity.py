"""The fidelity view of a set of ablations: each variant's paired gap over plain-matched (mean and 95% interval,
in the task's headline PSNR: Y for car and sr, RGB for denoise and demosaic) against the number of training steps,
as a table and a plot. Used by `report` (every finished ablation of a task variant) and benchmarks/fidelity.py."""
from __future__ import annotations

from pathlib import Path

GAPS = ("cla", "acla-random", "acla-searched", "nonlocal", "acla-all", "plain")
TARGET_DB = 0.10  # P7: acla-searched at least +0.10 dB over plain-matched, its interval above zero


def headline(task_label: str) -> str:
    from search_space.registry import get_task
    return get_task(task_label.split("-")[0]).headline_metric


def gap_key(task_label: str) -> str:
    return "gap_y" if headline(task_label) == "psnr_y" else "gap_rgb"


def gap_text(gap: dict | None) -> str:
    if not gap:
        return "-"
    if gap.get("low") is None:
        return f"{gap['mean']:+.3f} (1 seed)"
    return f"{gap['mean']:+.3f} [{gap['low']:+.3f}, {gap['high']:+.3f}]"


def meets_target(gap: dict | None) -> bool:
    return bool(gap) and gap["mean"] >= TARGET_DB and gap.get("low") is not None and gap["low"] > 0


def same_setting(a: dict, b: dict) -> bool:
    """Two ablations that trained alike: task, steps, seeds, budget, attention kind, scored-on set, placement and
    precision (a report from before precisions existed trained in fp32)."""
    keys = ("task", "steps", "seeds", "seed", "budget_macs", "attention", "benchmark")
    genotype = lambda r: {k: v for k, v in r.get("searched_genotype", {}).items() if k != "expected_keys"}
    precision = lambda r: r.get("precision", "fp32")
    return all(a.get(k) == b.get(k) for k in keys) and genotype(a) == genotype(b) and precision(a) == precision(b)


def pair_with_earlier_reference(report: dict, earlier: list[dict], reference: str = "plain-matched") -> dict:
    """`report`, an ablation run without `reference`, with each variant's paired gaps (Y and RGB, 95% interval)
    against the `reference` runs of the latest earlier ablation of the same setting. Every run is seeded (seed s
    is the same data stream in each), so a reference rerun reproduces its scores to the digit (docs/measurements.md): this
    saves retraining it. The report says which ablation the reference came from. Raises ValueError if none ran."""
    from workers.ablation import paired_interval
    if any(v["name"] == reference for v in report["variants"]):
        return report
    source = next((r for r in reversed(earlier) if same_setting(r, report)
                   and any(v["name"] == reference for v in r["variants"])), None)
    if source is None:
        raise ValueError(f"no earlier ablation of the same setting ran {reference}")
    theirs = next(v for v in source["variants"] if v["name"] == reference)
    variants = []
    for variant in report["variants"]:
        variant = dict(variant)
        for metric, key in (("psnr_y", "gap_y"), ("psnr_rgb", "gap_rgb")):
            ours, base = variant.get(f"{metric}_seeds"), theirs.get(f"{metric}_seeds")
            if ours and base:
                by_seed = dict(zip(theirs["seeds"], base))
                variant[key] = paired_interval([o - by_seed[s] for s, o in zip(variant["seeds"], ours) if s in by_seed])
        variants.append(variant)
    reused = {**theirs, "reused_from": source.get("parent_run_id")}
    return {**report, "variants": [reused, *variants], "reference_from": source.get("parent_run_id")}


def fidelity_rows(reports: list[dict]) -> list[dict]:
    """One row per ablation and variant with a gap: task, scored-on, steps, seeds, variant, score, gap."""
    rows = []
    for report in sorted(reports, key=lambda r: (r["task"], r["steps"], r.get("attention", "acla"))):
        metric, key = headline(report["task"]), gap_key(report["task"])
        positions = report.get("searched_genotype", {}).get("positions", [])
        # searched (position scores recorded) or a placement given with --genotype
        placement = f"{'searched' if report.get('position_scores') else 'given'} {positions}"
        for variant in report["variants"]:
            rows.append({"task": report["task"], "eval_data": report.get("benchmark") or report.get("eval_data"),
                         "placement": placement,
                         "steps": report["steps"], "seeds": report["seeds"], "attention": report.get("attention", "acla"),
                         "variant": variant["name"] + (" (earlier run)" if variant.get("reused_from") else ""),
                         "metric": metric, "psnr": variant.get(metric),
                         "seed_scores": variant.get(f"{metric}_seeds", []), "gap": variant.get(key)})
    return rows


def markdown(reports: list[dict]) -> str:
    """The table, one row per cell: a reference run that several ablations of one setting share (trained once,
    or reused from an earlier ablation) is listed once."""
    lines = ["| task | scored on | steps | seeds | kind | placement | variant | PSNR (dB) | per seed | "
             "gap vs plain-matched [95%] | P7 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    shown = set()
    for row in fidelity_rows(reports):
        cell = (row["task"], row["eval_data"], row["steps"], row["seeds"], row["attention"], row["placement"],
                row["variant"].removesuffix(" (earlier run)"), tuple(row["seed_scores"]), repr(row["gap"]))
        if cell in shown:
            continue
        shown.add(cell)
        psnr = "-" if row["psnr"] is None else f"{row['psnr']:.3f} ({row['metric']})"
        seeds = ", ".join(f"{p:.3f}" for p in row["seed_scores"])
        p7 = ("yes" if meets_target(row["gap"]) else "no") if row["variant"] == "acla-searched" and row["gap"] else ""
        lines.append(f"| {row['task']} | {row['eval_data']} | {row['steps']} | {row['seeds']} | {row['attention']} | "
                     f"{row['placement']} | {row['variant']} | {psnr} | {seeds} | {gap_text(row['gap'])} | {p7} |")
    return "\n".join(lines) + "\n"


def plot(reports: list[dict], path: str | Path) -> None:
    """One panel per task: each variant's gap (mean, 95% interval as error bars) against the steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = fidelity_rows(reports)
    tasks = sorted({r["task"] for r in rows})
    figure, axes = plt.subplots(1, max(1, len(tasks)), figsize=(6 * max(1, len(tasks)), 4.2), dpi=110, squeeze=False)
    for axis, task in zip(axes[0], tasks):
        mine = [r for r in rows if r["task"] == task and r["gap"]]
        sets = sorted({r["eval_data"] for r in mine})  # a task scored on two sets: a series per set, the second dashed
        # one series per variant, placement, attention kind (acla-shared's runs are not acla's) and test set
        series = sorted({(r["variant"], r["placement"], r["attention"], r["eval_data"]) for r in mine},
                        key=lambda v: (GAPS.index(v[0]) if v[0] in GAPS else 99, v[1], v[2], sets.index(v[3])))
        for shift, (name, placement, kind, scored_on) in enumerate(series):
            points = sorted(((r["steps"], r["gap"]) for r in mine
                             if (r["variant"], r["placement"], r["attention"], r["eval_data"]) ==
                             (name, placement, kind, scored_on)), key=lambda point: point[0])
            xs = [steps * (1 + 0.04 * (shift - 1)) for steps, _ in points]
            means = [gap["mean"] for _, gap in points]
            below = [gap["mean"] - gap["low"] if gap.get("low") is not None else 0 for _, gap in points]
            above = [gap["high"] - gap["mean"] if gap.get("high") is not None else 0 for _, gap in points]
            on = f", on {scored_on}" if len(sets) > 1 else ""
            axis.errorbar(xs, means, yerr=[below, above], fmt="o-" if sets.index(scored_on) == 0 else "s--",
                          capsize=4, label=f"{name}{'' if kind == 'acla' else f' ({kind})'}, {placement}{on}")
        axis.axhline(0, color="k", lw=1)
        axis.axhline(TARGET_DB, color="g", ls="--", lw=1, label=f"P7 target +{TARGET_DB:.2f} dB")
        axis.set_xscale("log", base=2)
        steps = [r["steps"] for r in mine] or [1]
        axis.set_xlim(min(steps) / 1.6, max(steps) * 1.6)
        axis.set_xticks(sorted(set(steps)), [str(s) for s in sorted(set(steps))])
        axis.set_xlabel("training steps")
        axis.set_ylabel(f"gap over plain-matched, {headline(task)} (dB)")
        axis.set_title(f"{task}: mean paired gap and 95% interval")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
