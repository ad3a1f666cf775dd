"""An ablation's trained networks scored on a second test set: each variant's and seed's checkpoint, kept in the
ablation's store, evaluated on every whole image of `--benchmark` exactly as `ablate` scores its own set
(workers/train.py's `evaluate`, fp32, seed 0), and the paired gaps over plain-matched computed from those scores.
Nothing is trained. The result is one more JSON line in the fidelity record (its `benchmark` the new set, its
`rescored_from` the ablation), so the fidelity table and plot show it as a cell of its own.

The field scores each task on more than one set: SR on Set5 and Set14, demosaicing on McMaster and Kodak24.

Usage: python benchmarks/rescore.py ABLATION_ID --benchmark Kodak24 --home DIR [--datasets DIR]
       [--out benchmarks/results/fidelity]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCORES = ("psnr_y", "ssim_y", "input_psnr_y", "psnr_rgb", "input_psnr_rgb")


def trained_runs(home: Path, report: dict) -> list[tuple[Path, dict]]:
    """(checkpoint, the training's result) for every variant and seed the ablation kept, and for the variants it
    took from an earlier ablation (`fidelity.py --reuse-reference`: plain-matched, `reused_from`), theirs: the
    paired gaps on the second set need them scored there too."""
    from orchestrator.analysis.ablation_plan import ablation_prefix
    from orchestrator.runtime.records import experiment_name
    folder = home / "artifacts" / ablation_prefix(experiment_name(report["task"]), report["ablation_id"])
    runs = []
    for manifest in sorted(folder.glob("*/manifest.json")):
        runs.append((manifest.parent / "model.pt", json.loads((manifest.parent / "result.json").read_text())))
    if not runs:
        raise SystemExit(f"no trainings of ablation {report['ablation_id']} under {folder}")
    for variant in report["variants"]:
        for checkpoint in variant.get("checkpoints", []) if variant.get("reused_from") else []:
            path = home / "artifacts" / checkpoint
            if not (path.parent / "result.json").exists():
                raise SystemExit(f"the reused {variant['name']} training {path.parent} is not under {home}")
            runs.append((path, json.loads((path.parent / "result.json").read_text())))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ablation_id")
    parser.add_argument("--benchmark", required=True, help="the second test set, e.g. Set14 or Kodak24")
    parser.add_argument("--home", required=True, help="the ACLA_HOME the ablation ran under (its store)")
    parser.add_argument("--datasets", help="the test sets' folder (default: $ACLA_DATASETS, else the per-user one)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fidelity"))
    args = parser.parse_args()
    from workers.data import BENCHMARKS, benchmark_set
    lines = Path(args.out) / "ablations.jsonl"
    reports = [json.loads(line) for line in lines.read_text().splitlines() if line.strip()]
    report = next((r for r in reports if r.get("ablation_id") == args.ablation_id and "rescored_from" not in r), None)
    if report is None:
        raise SystemExit(f"no ablation {args.ablation_id} in {lines}")
    if args.benchmark not in BENCHMARKS:
        raise SystemExit(f"unknown test set {args.benchmark}; expected one of {', '.join(BENCHMARKS)}")
    image_set = benchmark_set(args.datasets, args.benchmark)
    runs = trained_runs(Path(args.home), report)

    import torch

    from workers.ablation import markdown_table, summarise_variants
    from workers.checkpoint import model_from_checkpoint
    from workers.train import evaluate
    started = time.perf_counter()
    scored = []
    for checkpoint, result in runs:
        model, _, task, _ = model_from_checkpoint(str(checkpoint))
        with torch.no_grad():
            metrics = evaluate(model, task, image_set, crop=0, seed=0)
        scored.append({**result, **{k: metrics[k] for k in SCORES if k in metrics},
                       "checkpoint": str(checkpoint.relative_to(Path(args.home) / "artifacts"))})
        print(f"{checkpoint.parent.name}: {args.benchmark} Y {metrics['psnr_y']:.3f} RGB "
              f"{metrics.get('psnr_rgb', float('nan')):.3f}", file=sys.stderr)
    rows = summarise_variants(scored)
    budget = {v["name"]: v.get("within_budget", True) for v in report["variants"]}
    for row in rows:
        row["within_budget"] = budget.get(row["name"], True)
    rescored = {**{k: v for k, v in report.items() if k not in ("variants", "wall_seconds", "command")},
                "benchmark": args.benchmark, "eval_data": f"$ACLA_DATASETS/{BENCHMARKS[args.benchmark]}",
                "variants": rows, "rescored_from": report["ablation_id"],
                "wall_seconds": time.perf_counter() - started,
                "command": ["python", "benchmarks/rescore.py", args.ablation_id, "--benchmark", args.benchmark]}
    with lines.open("a") as handle:
        handle.write(json.dumps(rescored) + "\n")
    print(markdown_table(rows, report["budget_macs"]))


if __name__ == "__main__":
    main()
