"""The project's Adam (search_space/optim.py) against torch.optim.Adam (fused, and foreach), over a whole `make run`.

torch.optim's optimizers import torch._dynamo on construction (a one-off cost in each process that trains); the
fused step is faster per step. This prints both, measured in one run, and the balance over the optimizer steps
and training processes of the default `make run` (quick profile, car, its trials, width line and retraining
workers), so that the choice between them rests on a measurement:
- `import_s`: CPU seconds of the first torch.optim.Adam construction in a fresh process (median of 3 processes);
- `step_ms`: per optimizer step on the quick profile's nets (gradients present), in this process;
- `make_run`: optimizer steps and processes of the default run, and the seconds each choice costs there.
Usage: python benchmarks/optimizer.py [--repeats N]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from search_space.acla import parameter_groups
from search_space.backbone import build_network
from search_space.genotype import Genotype
from search_space.optim import Adam
from workers.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]
FIRST_CONSTRUCTION = """
import time, torch
p = [torch.nn.Parameter(torch.zeros(4))]
start = time.process_time()
torch.optim.Adam(p, lr=1e-3, fused=True)
print(time.process_time() - start)
"""


def import_seconds(repeats: int) -> float:
    times = [float(subprocess.run([sys.executable, "-c", FIRST_CONSTRUCTION], capture_output=True, text=True,
                                  check=True).stdout) for _ in range(repeats)]
    return statistics.median(times)


def step_ms(make, model: torch.nn.Module, steps: int = 60) -> float:
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    optimizer = make(parameter_groups(model.parameters(), model, 5e-4))
    optimizer.step()  # state allocated
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1000


def make_run_steps(profile) -> tuple[int, int]:
    """Optimizer steps and training processes of the default `make run`: each trial searches (a weight and an
    architecture step per search step) and proxy-trains; the width line trains; the winner's retraining runs
    its inherited schedule on 2 Ray Train workers."""
    trials, workers = profile.trials, 2
    steps = trials * (2 * profile.search_steps + profile.train_steps) + profile.train_steps \
        + workers * profile.inherit_steps
    return steps, trials + 1 + workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    profile = get_profile("quick")
    searched = Genotype.from_json((ROOT / "benchmarks/results/fidelity/car-acla-0-5.json").read_text())
    nets = {"acla_32x8": searched, "plain_64x8": searched.bare().replace(attention="none", adaptive=False,
                                                                          channels=64)}
    makers = {"project": lambda groups: Adam(groups, lr=5e-4),
              "torch_fused": lambda groups: torch.optim.Adam(groups, lr=5e-4, fused=True),
              "torch_foreach": lambda groups: torch.optim.Adam(groups, lr=5e-4, foreach=True)}
    per_step = {net: {name: round(statistics.median(step_ms(make, build_network(g)) for _ in range(args.repeats)), 3)
                      for name, make in makers.items()} for net, g in nets.items()}
    seconds = import_seconds(args.repeats)
    steps, processes = make_run_steps(profile)
    acla = per_step["acla_32x8"]
    run = {"optimizer_steps": steps, "training_processes": processes,
           "project_s": round(steps * acla["project"] / 1000, 2),
           "torch_fused_s": round(steps * acla["torch_fused"] / 1000 + processes * seconds, 2)}
    run["fused_saves_s"] = round(run["project_s"] - run["torch_fused_s"], 2)
    print(json.dumps({"import_s": round(seconds, 3), "step_ms": per_step, "make_run": run,
                      "threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
