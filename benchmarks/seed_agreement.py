"""Does the search decide? Runs the differentiable search (workers.search_run.run_search, the trial's own
search) with several seeds at one setting and prints, as JSON, each seed's position scores, their spread over
the last quarter of the search, the derived positions, and how often the seeds agree: `same_set` (how many
seeds chose the most common position set), `kept_share` (per position, the share of seeds that keep it) and
`positions_decided_alike` (positions that every seed keeps, or every seed drops).

Usage: python benchmarks/seed_agreement.py [--task car] [--channels 64] [--budget 50G] [--steps N]
       [--warmup N] [--seeds 3] [--profile quick]
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profile = get_profile(args.profile)
    profile = dataclasses.replace(profile, search_steps=args.steps or profile.search_steps,
                                  search_warmup=profile.search_warmup if args.warmup is None else args.warmup)
    task = task_from_options(args.task)
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
    print(json.dumps({"task": task.label, "profile": profile.name, "target_channels": args.channels,
                      "proxy_channels": profile.proxy_channels(args.channels), "budget_macs": budget,
                      "steps": profile.search_steps, "warmup": profile.search_warmup, "runs": runs,
                      "kept_share": kept_share, "same_set": f"{count}/{len(runs)}", "majority_set": list(majority),
                      "positions_decided_alike": sum(s in (0.0, 1.0) for s in kept_share)}, indent=1))


if __name__ == "__main__":
    main()
