"""The shared supernet's quality check: at each budget, is the network a shared-supernet sweep derives, retrained, as good as the
one the budget's own search finds, within the seed spread? For each seed s: `acla-orch sweep` (one shared
supernet) and `acla-orch sweep --separate` (each budget searched on its own, from scratch), both with seed s,
the same budgets, profile and flags; then each budget's best trial from each is retrained with `acla-orch
retrain --seed s` (the product's own path: the trial's weights widened, then trained at full width). Scores are
the retrainings' own, on the validation images (never trained on), in Y and RGB.

Writes one JSON line per retraining as it finishes (shared_quality.jsonl), then a Markdown table
(shared_quality.md): per budget, both networks, their scores per seed, the paired difference shared minus
separate, and the separate search's seed spread.

Usage: python benchmarks/shared_quality.py [--budgets 13G,25G,50G,100G] [--compare 13G,25G,50G] [--seeds 2]
       [--profile quick]
       [--out benchmarks/results/shared-quality-DATE] [--home DIR]
       python benchmarks/shared_quality.py --summarise-only
"""
from __future__ import annotations

import argparse
from datetime import date
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FLAGS = ("--task", "car", "--quality", "10", "--no-retrain", "--no-width", "--json")


def acla(home: str, *args: str) -> dict:
    env = {**os.environ, "ACLA_HOME": home, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(f"acla-orch {' '.join(args[:3])} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout)


def best_trial(search: dict) -> dict:
    return max(search["trials"], key=lambda t: t["psnr"])  # what the search would retrain first


def net(trial: dict) -> str:
    backbone = trial["backbone"]
    return f"{backbone['channels']}x{backbone['blocks']} at {trial['positions']}, {trial['macs'] / 1e9:.2f}G"


def run(args) -> None:
    """Each seed's two sweeps and their retrainings, skipping what the results file already holds (a cut-off run
    continues). The shared sweep covers every budget in --budgets; the separate one, and the retrainings, only
    those in --compare."""
    from search_space.budget import parse_budget
    lines = Path(args.out) / "shared_quality.jsonl"
    compare = [parse_budget(b) for b in (args.compare or args.budgets).split(",")]
    for seed in range(args.seeds):
        home = str(Path(args.home) / f"seed-{seed}")
        Path(home).mkdir(parents=True, exist_ok=True)
        for method, budgets, extra in (("shared", args.budgets, ()),
                                       ("separate", args.compare or args.budgets, ("--separate",))):
            held = {(r["seed"], r["method"], r["budget_macs"]) for r in read(lines)}
            if all((seed, method, b) in held for b in compare):
                continue
            started = time.perf_counter()
            sweep = acla(home, "sweep", "--budgets", budgets, "--profile", args.profile, "--seed", str(seed),
                         *FLAGS, *extra)
            search_seconds = time.perf_counter() - started
            for search in sweep["searches"]:
                if search["budget_macs"] not in compare or (seed, method, search["budget_macs"]) in held:
                    continue
                trial = best_trial(search)
                started = time.perf_counter()
                retrained = acla(home, "retrain", "--run-id", trial["run_id"], "--seed", str(seed), "--json")
                record = {"seed": seed, "method": method, "budget_macs": search["budget_macs"], "net": net(trial),
                          "sweep_budgets": budgets, "trial_run_id": trial["run_id"], "proxy_psnr_y": trial["psnr"],
                          "proxy_psnr_rgb": trial.get("psnr_rgb"), "retrained_psnr": retrained["psnr"],
                          "psnr_y": retrained["psnr_y"], "psnr_rgb": retrained.get("psnr_rgb"),
                          "input_psnr_y": retrained.get("input_psnr_y"),
                          "input_psnr_rgb": retrained.get("input_psnr_rgb"),
                          "retrain_seconds": time.perf_counter() - started, "sweep_seconds": search_seconds}
                with lines.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(f"seed {seed} {method} {search['budget_macs'] / 1e9:g}G {record['net']}: "
                      f"Y {record['psnr_y']:.3f} RGB {record['psnr_rgb']:.3f}", file=sys.stderr)


def read(lines: Path) -> list[dict]:
    return [json.loads(line) for line in lines.read_text().splitlines() if line.strip()] if lines.exists() else []


def markdown(records: list[dict]) -> str:
    """Per budget: each method's net per seed, its retrained scores, and the paired difference."""
    out = ["| budget | seed | shared-supernet net | separate-search net | Y shared | Y separate | RGB shared | "
           "RGB separate |", "|---|---|---|---|---|---|---|---|"]
    by = {(r["budget_macs"], r["seed"], r["method"]): r for r in records}
    budgets, seeds = sorted({r["budget_macs"] for r in records}), sorted({r["seed"] for r in records})
    verdicts = []
    for budget in budgets:
        pairs = []
        for seed in seeds:
            shared, separate = by.get((budget, seed, "shared")), by.get((budget, seed, "separate"))
            if not (shared and separate):
                continue
            pairs.append((shared, separate))
            out.append(f"| {budget / 1e9:g}G | {seed} | {shared['net']} | {separate['net']} | {shared['psnr_y']:.3f} | "
                       f"{separate['psnr_y']:.3f} | {shared['psnr_rgb']:.3f} | {separate['psnr_rgb']:.3f} |")
        if pairs:
            verdicts.append(verdict(budget, pairs))
    return "\n".join(out + [""] + verdicts) + "\n"


def verdict(budget: float, pairs: list[tuple[dict, dict]]) -> str:
    """The mean paired difference shared minus separate, and whether the shared mean is within the separate
    search's seed spread (at or above its lowest seed) or above its mean, in Y and in RGB."""
    words = []
    for metric in ("psnr_y", "psnr_rgb"):
        diffs = [s[metric] - p[metric] for s, p in pairs]
        ours, theirs = [s[metric] for s, _ in pairs], [p[metric] for _, p in pairs]
        where = ("above" if statistics.fmean(ours) >= statistics.fmean(theirs) else
                 "within the spread" if statistics.fmean(ours) >= min(theirs) else "below the spread")
        words.append(f"{metric[5:].upper()} {statistics.fmean(diffs):+.3f} dB (per seed "
                     f"{', '.join(f'{d:+.3f}' for d in diffs)}; separate's spread {max(theirs) - min(theirs):.3f}): "
                     f"{where}")
    return f"- {budget / 1e9:g}G, shared minus separate over {len(pairs)} seeds: " + "; ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="13G,25G,50G,100G")
    parser.add_argument("--compare", help="the budgets to compare (searched separately and retrained); default: all")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"shared-quality-{date.today()}"),
                        help="results folder, named by what it holds and its date (default: shared-quality-DATE)")
    parser.add_argument("--home", default=str(ROOT / "acla-runs" / "shared-quality"))
    parser.add_argument("--summarise-only", action="store_true")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if not args.summarise_only:
        run(args)
    records = read(Path(args.out) / "shared_quality.jsonl")
    if not records:
        raise SystemExit("no results yet")
    table = markdown(records)
    (Path(args.out) / "shared_quality.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
