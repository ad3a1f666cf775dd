"""Does ACLA earn its place, at a fidelity that can resolve 0.1 dB? Runs `acla-orch ablate` (paired seeds,
plain-matched against cla, acla-random and acla-searched) for each task and schedule, and writes, as results
come in, one JSON line per ablation, then a Markdown table and a plot of each variant's paired gap over
plain-matched (mean and 95% interval, in the task's headline PSNR) against the number of training steps
(orchestrator/fidelity.py, which `acla-orch report` also shows from MLflow).

Defaults: car q=10 scored on LIVE1 and denoise sigma=25 scored on CBSD68 (`--tasks` adds sr x4 scored on Set5
and demosaic scored on McMaster), the quick profile's backbone at a 13 GMACs budget (sr x4: 23G), 400 and 1600
steps, 3 seeds; `--long 3200` adds denoise at 3200 steps (plain-matched against
acla-searched only). Each ablation searches with the same seed, so a task's searched genotype is the same at
every schedule. Every run is also recorded in MLflow by `ablate` itself, under the run directory. Each ablation's
messages go to `ablate-<task>-<steps>.log` in the output folder as it runs; one cut off (the machine stopped, a
session ended) goes on where it stopped with `--resume ID` (its ID is on the log's first line) and the same
arguments: only the trainings it had not kept are trained.

Usage: python benchmarks/fidelity.py [--tasks car,denoise] [--steps 400,1600] [--long 3200] [--seeds 3]
       [--budget 13G] [--attention acla] [--precision auto|fp32|bf16] [--variants plain-matched,cla,acla-random,acla-searched]
       [--out benchmarks/results/fidelity] [--home DIR] [--genotype G.json] [--reuse-reference] [--resume ID]
       [--datasets DIR]
       python benchmarks/fidelity.py --summarise-only   (table and plot from the JSON lines already written)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from orchestrator.analysis.fidelity import markdown, pair_with_earlier_reference, plot  # noqa: E402  (the table and plot that `report` shows too)
from workers.data import BENCHMARKS  # noqa: E402  (each set's folder under the datasets folder: Set5/HR, ...)
TASKS = {"car": (["--task", "car", "--quality", "10"], "LIVE1"),
         "denoise": (["--task", "denoise", "--sigma", "25"], "CBSD68"),
         "sr": (["--task", "sr", "--scale", "4"], "Set5"),
         "demosaic": (["--task", "demosaic"], "McMaster")}
# Each task's budget: the quick backbone (32x8) with ACLA after blocks 0-5 and 6 keys per reference layer fits
# it with about 2% to spare (car and demosaic 12.70 GMACs, sr x4 22.52: its upsampler is costed at 1280x720).
BUDGETS = {"car": "13G", "denoise": "13G", "sr": "23G", "demosaic": "13G"}
VARIANTS = ("plain-matched", "cla", "acla-random", "acla-searched")


def run_ablation(task: str, steps: int, variants, args, resume: str | None = None) -> dict:
    flags, benchmark = TASKS[task]
    budget = args.budget or BUDGETS[task]
    command = [sys.executable, "-m", "orchestrator.cli", "ablate", *flags, "--budget", budget, "--profile",
               args.profile, "--steps", str(steps), "--seeds", str(args.seeds), "--attention", args.attention,
               "--variants", ",".join(variants), "--eval-data", str(Path(args.datasets) / BENCHMARKS[benchmark]),
               "--precision", args.precision, "--json"]
    if args.genotype:  # a fixed placement instead of the search's: the module measured where the search keeps none
        command += ["--genotype", args.genotype]
    if resume:  # the ablation of this plan that was cut off
        command += ["--resume", resume]
    started = time.perf_counter()
    env = {**os.environ, "ACLA_HOME": args.home, "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = Path(args.out) / f"ablate-{task}-{steps}.log"  # as it runs: its first line names the ablation's ID
    with log.open("a") as errors:
        out = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
    if out.returncode != 0:
        raise SystemExit(f"ablate failed for {task} at {steps} steps: {log.read_text().strip().splitlines()[-1:]}")
    report = json.loads(out.stdout)
    report["benchmark"], report["wall_seconds"], report["command"] = benchmark, time.perf_counter() - started, command
    return report


def portable(report: dict, home: str, datasets: str) -> dict:
    """The report as the record keeps it, without this machine's paths: checkpoints relative to the ablation's
    artifact root, test sets under $ACLA_DATASETS, the command as a user types it."""
    artifacts, datasets = str(Path(home).resolve() / "artifacts") + "/", str(Path(datasets).resolve())

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, str):
            return value.replace("file://" + artifacts, "").replace(artifacts, "").replace(datasets, "$ACLA_DATASETS")
        return value
    report = clean(report)
    if report.get("command") and report["command"][0] == sys.executable:
        report["command"] = ["python", *report["command"][1:]]
    return report


def read_reports(lines: Path) -> list[dict]:
    """The ablations written so far, one JSON line each (none where the file is not there yet)."""
    return [json.loads(line) for line in lines.read_text().splitlines() if line.strip()] if lines.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="car,denoise")
    parser.add_argument("--steps", default="400,1600")
    parser.add_argument("--long", type=int, default=0, help="also denoise at this many steps (plain-matched "
                                                             "against acla-searched), e.g. 3200")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", help=f"the budget (default per task: {BUDGETS})")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--attention", default="acla")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="the trainings' precision (ablate's --precision; the results before 2026-12-07 are fp32)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"the variants of each ablation (default {','.join(VARIANTS)})")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fidelity"))
    parser.add_argument("--home", default=str(ROOT / "acla-runs" / "fidelity"))
    parser.add_argument("--genotype", help="ablate this genotype instead of searching (its task must match)")
    parser.add_argument("--reuse-reference", action="store_true",
                        help="with --variants lacking plain-matched: pair each variant, seed by seed, with the "
                             "plain-matched runs of the latest earlier ablation of the same setting in the results "
                             "(seeded runs reproduce to the digit), instead of training plain-matched again")
    parser.add_argument("--resume", metavar="ID", help="go on with the first ablation of this plan, cut off "
                                                        "earlier: the ID on the first line of its ablate-*.log")
    parser.add_argument("--datasets", help="the test sets' folder (default: $ACLA_DATASETS, else the per-user data "
                                           "folder; docs/datasets.md); on the build machines ../shared/datasets")
    parser.add_argument("--summarise-only", action="store_true")
    args = parser.parse_args()
    from workers.data import datasets_root
    args.datasets = str(datasets_root(args.datasets)[0].resolve())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = out / "ablations.jsonl"
    variants = tuple(args.variants.split(","))
    plan = [(task, int(steps), variants) for steps in args.steps.split(",") for task in args.tasks.split(",")]
    if args.long:
        plan.append(("denoise", args.long, ("plain-matched", "acla-searched")))
    if not args.summarise_only:
        for index, (task, steps, variants) in enumerate(plan):
            report = run_ablation(task, steps, variants, args, resume=args.resume if index == 0 else None)
            if args.reuse_reference:
                try:
                    report = pair_with_earlier_reference(report, read_reports(lines))
                except ValueError as err:  # kept unpaired rather than lost: hours of training went into it
                    print(f"{task} {steps} steps: written without gaps: {err}", file=sys.stderr)
            with lines.open("a") as handle:  # each result as it comes in
                handle.write(json.dumps(portable(report, args.home, args.datasets)) + "\n")
            print(f"{task} {steps} steps: done in {report['wall_seconds']:.0f} s", file=sys.stderr)
    reports = read_reports(lines)
    if not reports:
        raise SystemExit("no ablation results yet")
    table = markdown(reports)
    (out / "fidelity.md").write_text(table)
    plot(reports, out / "fidelity.png")
    print(table)


if __name__ == "__main__":
    main()
