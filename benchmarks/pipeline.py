"""Quick-profile training throughput: the share of a step spent on data, and steps per second for the plain
backbone, a genotype with 2 ACLA modules and one with 7 (what a 120-step search with a 40-step warm-up derived on
car: README), on the embedded images (car, q=10); and the seconds per search
step of the quick supernet (an ACLA candidate after every block; one weight and one architecture update).
`equal_macs` sets a searched ACLA genotype (--genotype, default: positions 0-3 with 8 keys, the majority choice
of the quick search on car) beside the plain backbone widened to its MACs (the ablation's plain-matched): the
ratio of their training steps/s (target: at least 0.9) and of the trial's latency measurement (target: at most
1.25), each also as the median of paired, interleaved rounds with its sign-test interval. The bare backbone
(the searched genotype without its modules) is measured in the same rounds, and `bound` says what the modules
may cost over it for each target to hold (its allowance) against what they cost, in ms per training step and ms
of latency. `--profile-steps N` adds a per-step profile of the nets at equal MACs and of the bare backbone
(torch.profiler, self CPU time per op, summed into the convolutions, the matrix products of ACLA's 1x1
projections, ACLA's attention kernel and the rest), in ms per training step. `--equal-macs-only` measures only
those. Prints JSON.
Usage: python benchmarks/pipeline.py [--steps N] [--task car] [--genotype G.json] [--profile-steps N]
       [--equal-macs-only]"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from search_space.genotype import Genotype
from search_space.optim import Adam
from workers.data import embedded_sets
from workers.profiles import get_profile
from workers.tasks import task_from_options
from workers.train import make_sampler, train_step
from search_space.backbone import build_network
from search_space.search import search_architecture
from search_space.supernet import Supernet


def measure(genotype: Genotype, task, profile, steps: int) -> dict:
    train_set, _ = embedded_sets()
    sampler = make_sampler(task, train_set, profile, seed=0)  # decodes and caches the images once
    model = build_network(genotype).train()
    optimizer = Adam(model.parameters(), lr=profile.lr)  # the optimizer the project trains with
    train_step(model, optimizer, *next(sampler))  # warm-up
    data_s = compute_s = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(sampler)
        middle = time.perf_counter()
        train_step(model, optimizer, *batch)
        data_s += middle - start
        compute_s += time.perf_counter() - middle
    return {"steps_per_s": round(steps / (data_s + compute_s), 3), "data_share": round(data_s / (data_s + compute_s), 4)}


CATEGORIES = (("convolutions", ("convolution", "conv2d")), ("matrix_products", ("aten::mm", "aten::addmm", "aten::bmm")),
              ("attention_kernel", ("_FusedAttend",)))


def step_profile(genotype: Genotype, task, profile, steps: int) -> dict:
    """ms per training step by category of op (self CPU time, so nothing is counted twice)."""
    train_set, _ = embedded_sets()
    sampler = make_sampler(task, train_set, profile, seed=0)
    torch.manual_seed(0)
    model = build_network(genotype).train()
    optimizer = Adam(model.parameters(), lr=profile.lr)  # the optimizer the project trains with
    batches = [next(sampler) for _ in range(steps + 2)]
    for batch in batches[:2]:
        train_step(model, optimizer, *batch)  # warm-up
    with torch.profiler.profile() as prof:
        for batch in batches[2:]:
            train_step(model, optimizer, *batch)
    totals = dict.fromkeys([name for name, _ in CATEGORIES] + ["everything_else"], 0.0)
    for event in prof.key_averages():
        name = next((label for label, keys in CATEGORIES if any(key in event.key for key in keys)), "everything_else")
        totals[name] += event.self_cpu_time_total / 1000 / steps
    totals["total"] = sum(totals.values())
    return {name: round(value, 1) for name, value in totals.items()}


def measure_search(base: Genotype, task, profile, steps: int) -> dict:
    """Seconds per search step (weight update + architecture update, each on its own batch), data included."""
    train_set, _ = embedded_sets()
    sampler = make_sampler(task, train_set, profile, seed=0)
    supernet = Supernet(base=base)

    def run(count: int) -> None:
        search_architecture(supernet=supernet, batches=sampler, budget_macs=1e15, steps=count, report_every=count)
    run(1)  # warm-up
    start = time.perf_counter()
    run(steps)
    return {"seconds_per_step": round((time.perf_counter() - start) / steps, 3)}


def plain_matched(searched: Genotype) -> Genotype:
    """The ablation's plain-matched rival of `searched`: its bare backbone made wider to its MACs."""
    from search_space.cost import genotype_macs
    from workers.ablation import matched_plain
    return matched_plain(genotype_macs(searched), searched.bare().replace(attention="none", adaptive=False))


LATENCY_ROUNDS = 9  # the sign test's interval for a median of 9: the 2nd to the 8th value, 96% coverage
TRAINING_ROUNDS = 5  # and for a median of 5: the smallest to the largest, 94% coverage
TRAINING_TARGET, LATENCY_TARGET = 0.9, 1.25  # steps/s at least 0.9x plain-matched's, latency at most 1.25x


def paired(ratios: list[float], trim: int) -> dict:
    """The median of paired per-round ratios and its sign-test interval (the `trim`-th smallest and largest)."""
    ratios = sorted(ratios)
    return {"median": round(statistics.median(ratios), 3), "low": round(ratios[trim], 3),
            "high": round(ratios[-1 - trim], 3), "rounds": len(ratios)}


def equal_macs(searched: Genotype, task, profile, steps: int) -> dict:
    """acla-searched against plain-matched: training steps/s (interleaved, TRAINING_ROUNDS times each) and the
    trials' latency measure (interleaved, LATENCY_ROUNDS times each). For each, the ratio as before (of the best
    steps/s; of the median latencies) and the median of the rounds' paired ratios (each round measures both nets
    back to back, so the machine's drift between rounds cancels) with the sign test's interval: 94% for 5 rounds
    (their range), 96% for 9 (the 2nd to the 8th)."""
    from workers.latency import measure_latency_ms
    from search_space.backbone import build_network as build
    from search_space.cost import genotype_macs
    matched = plain_matched(searched)
    genotypes = {"acla_searched": searched, "plain_matched": matched, "bare_backbone": searched.bare()}
    rates = {name: [] for name in genotypes}
    for _ in range(TRAINING_ROUNDS):  # interleaved, so drift in the machine's speed hits every net alike
        for name, genotype in genotypes.items():
            rates[name].append(measure(genotype, task, profile, steps)["steps_per_s"])
    nets = {name: build(genotype) for name, genotype in genotypes.items()}
    latency = {name: [] for name in nets}
    for _ in range(LATENCY_ROUNDS):  # interleaved too: the trials' own measure (a median of 7 forwards)
        for name, net in nets.items():
            latency[name].append(round(measure_latency_ms(net, task.in_channels), 2))
    latency_paired = paired([a / b for a, b in zip(latency["acla_searched"], latency["plain_matched"])], trim=1)
    training_paired = paired([a / b for a, b in zip(rates["acla_searched"], rates["plain_matched"])], trim=0)
    latency = {name: sorted(values) for name, values in latency.items()}
    best = {name: max(values) for name, values in rates.items()}
    return {"acla_searched": {"positions": list(searched.positions), "macs": genotype_macs(searched),
                              "steps_per_s": rates["acla_searched"], "latency_ms": latency["acla_searched"]},
            "plain_matched": {"channels": matched.channels, "blocks": matched.blocks, "macs": genotype_macs(matched),
                              "steps_per_s": rates["plain_matched"], "latency_ms": latency["plain_matched"]},
            "steps_per_s_ratio": round(best["acla_searched"] / best["plain_matched"], 3),
            "steps_per_s_ratio_paired": training_paired,
            "latency_ratio": round(statistics.median(latency["acla_searched"])
                                   / statistics.median(latency["plain_matched"]), 3),
            "latency_ratio_paired": latency_paired,
            "bare_backbone": {"macs": genotype_macs(genotypes["bare_backbone"]), "steps_per_s": rates["bare_backbone"],
                              "latency_ms": latency["bare_backbone"]},
            "bound": module_bound(best, {name: statistics.median(values) for name, values in latency.items()})}


def module_bound(best_rates: dict, median_latency: dict) -> dict:
    """What the modules may cost for each target to hold, against what they cost: ms per training step (from
    the best steps/s) and ms of latency (from the medians), over the bare backbone the modules are added to.
    A module cost over its allowance means the target is out of reach until the modules get that much faster."""
    step_ms = {name: 1000 / rate for name, rate in best_rates.items()}
    return {"training_module_ms": round(step_ms["acla_searched"] - step_ms["bare_backbone"], 1),
            "training_allowance_ms": round(step_ms["plain_matched"] / TRAINING_TARGET - step_ms["bare_backbone"], 1),
            "latency_module_ms": round(median_latency["acla_searched"] - median_latency["bare_backbone"], 1),
            "latency_allowance_ms": round(median_latency["plain_matched"] * LATENCY_TARGET
                                          - median_latency["bare_backbone"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--task", default="car")
    parser.add_argument("--genotype", help="the searched genotype for the equal-MACs comparison")
    parser.add_argument("--profile-steps", type=int, default=0, help="also profile this many steps of the nets "
                                                                     "at equal MACs and of the bare backbone")
    parser.add_argument("--equal-macs-only", action="store_true", help="only the equal-MACs comparison (and profile)")
    args = parser.parse_args()
    profile = get_profile("quick")
    task = task_from_options(args.task)
    base = dict(task=task.name, scale=task.scale, in_channels=task.in_channels, channels=profile.channels,
                blocks=profile.blocks, stages=profile.stages)
    plain = Genotype(**base)
    searched = Genotype.from_json(open(args.genotype).read()) if args.genotype else Genotype(
        **base, attention="acla", adaptive=True, max_keys=profile.max_keys, positions=(0, 1, 2, 3),
        keys=((8,), (8,), (8, 8), (8, 8)))
    two_acla = Genotype(**base, attention="acla", adaptive=True, max_keys=profile.max_keys, positions=(3, 7),
                        keys=((5, 5), (5, 5, 5, 5)))
    seven_acla = Genotype(**base, attention="acla", adaptive=True, max_keys=profile.max_keys,
                          positions=tuple(range(7)), keys=((8,), (8,), (8, 8), (8, 8), (8, 8, 8), (8, 8, 8), (8,) * 4))
    header = {"profile": profile.name, "task": task.label, "batch": profile.batch_size, "patch": profile.patch,
              "threads": torch.get_num_threads()}
    if args.equal_macs_only:
        print(json.dumps({**header, "equal_macs": equal_macs(searched, task, profile, args.steps),
                          **({"step_profile_ms": profiles(searched, task, profile, args.profile_steps)}
                             if args.profile_steps else {})}, indent=2))
        return
    print(json.dumps({**header,
                      "plain": measure(plain, task, profile, args.steps),
                      "two_acla": measure(two_acla, task, profile, args.steps),
                      "seven_acla": measure(seven_acla, task, profile, args.steps),
                      "search_supernet": measure_search(Genotype(**base, attention="acla", adaptive=True,
                                                                 max_keys=profile.max_keys), task, profile, args.steps),
                      "equal_macs": equal_macs(searched, task, profile, args.steps),
                      **({"step_profile_ms": profiles(searched, task, profile, args.profile_steps)}
                         if args.profile_steps else {})}, indent=2))


def profiles(searched: Genotype, task, profile, steps: int) -> dict:
    return {"acla_searched": step_profile(searched, task, profile, steps),
            "plain_matched": step_profile(plain_matched(searched), task, profile, steps),
            "bare_backbone": step_profile(searched.bare(), task, profile, steps)}


if __name__ == "__main__":
    main()
