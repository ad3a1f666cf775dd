"""Does the search decide? Runs the differentiable search (workers.search_run.run_search, the trial's own
search) with several seeds at one setting and prints, as JSON, each seed's position scores, their spread over
the last quarter of the search, the derived positions, and how often the seeds agree: `same_set` (how many
seeds chose the most common position set), `kept_share` (per position, the share of seeds that keep it) and
`positions_decided_alike` (positions that every seed keeps, or every seed drops). `errors` sets the two errors of
a position's score side by side: `within` (the standard error one search measures, over its validation
measurements; the mean over the seeds) and `between` (the standard deviation of the score's mean from one
search's seed to the next), per position, and the ratio between / within (search_space/significance.py's test
uses the larger). `--precision` runs the searches in fp32 or bf16 (default: auto, as the CLI).

Usage: python benchmarks/seed_agreement.py [--task car] [--channels 64] [--budget 50G] [--steps N]
       [--warmup N] [--seeds 3] [--profile quick] [--precision auto|fp32|bf16]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import Counter

import torch

from search_space.budget import parse_budget
from search_space.cost import genotype_macs
from search_space.precision import resolve_precision
from workers.data import embedded_sets
from workers.profiles import get_profile
from workers.search_run import SearchConfig, position_scores, run_search
from workers.tasks import task_from_options
from workers.train import DataSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="car")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--channels", type=int, default=64, help="target width (the search runs at the proxy width)")
    parser.add_argument("--budget", default="50G")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", type=int, default=4, help="sr's scale (default 4)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profile = get_profile(args.profile)
    profile = dataclasses.replace(profile, search_steps=args.steps or profile.search_steps,
                                  search_warmup=profile.search_warmup if args.warmup is None else args.warmup,
                                  precision=resolve_precision(args.precision, "cpu"))
    task = task_from_options(args.task, **({"scale": args.scale} if args.task == "sr" else {}))
    data = DataSpec(*embedded_sets())
    budget = parse_budget(args.budget)
    runs = []
    for seed in range(args.seeds):
        config = SearchConfig(task=task, budget_macs=budget, channels=args.channels, blocks=profile.blocks,
                              stages=profile.stages, max_keys=profile.max_keys, weight_lr=profile.weight_lr,
                              arch_lr=profile.arch_lr, seed=seed)
        started = time.perf_counter()
        found = run_search(config, data, profile)
        runs.append({"seed": seed, "positions": list(found.genotype.positions), "keys": [list(k) for k in found.genotype.keys],
                     "macs": genotype_macs(found.genotype), "seconds": round(time.perf_counter() - started, 1),
                     "scores": position_scores(found.outcome)})
    sets = Counter(tuple(r["positions"]) for r in runs)
    majority, count = sets.most_common(1)[0]
    kept_share = [sum(p in r["positions"] for r in runs) / len(runs) for p in range(profile.blocks)]
    print(json.dumps({"task": task.label, "profile": profile.name, "precision": profile.precision,
                      "target_channels": args.channels,
                      "proxy_channels": profile.proxy_channels(args.channels), "budget_macs": budget,
                      "steps": profile.search_steps, "warmup": profile.search_warmup, "runs": runs,
                      "kept_share": kept_share, "same_set": f"{count}/{len(runs)}", "majority_set": list(majority),
                      "positions_decided_alike": sum(s in (0.0, 1.0) for s in kept_share),
                      "errors": two_errors(runs, profile.blocks)}, indent=1))


def two_errors(runs: list[dict], blocks: int) -> dict:
    """Per position: the within-search standard error (mean over seeds) and the between-search standard deviation
    of the mean score, and their ratio; and the median ratio over the positions."""
    import statistics
    within = [statistics.fmean(r["scores"][p]["stderr"] for r in runs) for p in range(blocks)]
    between = [statistics.stdev(r["scores"][p]["score"] for r in runs) for p in range(blocks)]
    ratio = [b / w if w > 0 else float("inf") for b, w in zip(between, within)]
    return {"within": [float(f"{w:.4g}") for w in within], "between": [float(f"{b:.4g}") for b in between],
            "ratio": [round(r, 2) for r in ratio], "median_ratio": round(statistics.median(ratio), 2),
            "passed_per_seed": [sum(s["passed"] for s in r["scores"]) for r in runs]}


if __name__ == "__main__":
    main()
