"""The ablation behind `acla-orch ablate`: does the searched placement pay for its MACs?

Six variants of one backbone, trained alike (same steps, seed and schedule) and scored on clean images that
neither the search nor the training saw:
- `plain`: the backbone alone;
- `plain-matched`: the backbone widened and/or deepened to within 5% of the MACs of `acla-searched` (the
  honest rival: what the same MACs buy without attention);
- `nonlocal`: the pooled non-local block (search_space/attention.py) at the searched positions, its keys
  pooled to the largest grid (up to 16 x 16) that fits the budget;
- `cla`: cross-layer attention with a fixed K and no gates at the searched positions, K the largest count
  (up to the profile's) that fits the budget;
- `acla-all`: ACLA at every position, with the key counts the search measured there; the one variant that
  may exceed the budget (it is the unconstrained reference), and it says so;
- `acla-searched`: the searched genotype, positions and adaptive keys.
Plain functions: the orchestrator runs `train_variant` as Ray tasks and records the results in MLflow.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Sequence

from search_space.budget import check_budget, format_macs
from search_space.cost import count_parameters, genotype_macs
from search_space.genotype import Genotype, refs_at_position

from .profiles import Profile
from .tasks import TaskSpec
from .train import DataSpec, train

VARIANTS = ("plain", "plain-matched", "nonlocal", "cla", "acla-all", "acla-searched")
MATCH_TOLERANCE = 0.05  # plain-matched lies within 5% of acla-searched's MACs


class AblationError(ValueError):
    """A variant cannot be built within the budget; the message names it and by how much it misses."""


@dataclass(frozen=True)
class Variant:
    name: str
    genotype: Genotype
    macs: int
    within_budget: bool


def matched_plain(target_macs: int, bare: Genotype, tolerance: float = MATCH_TOLERANCE) -> Genotype:
    """The plain backbone whose MACs are closest to `target_macs`, over every width from half to four times
    `bare`'s and every depth from one block per stage to four times `bare`'s (in whole stages: one channel
    more is a coarse step on a narrow net, so a deeper and slightly narrower net may match best); ties go to
    the first found, the shallowest. AblationError when none lies within `tolerance`."""
    best, best_gap = bare, abs(genotype_macs(bare) - target_macs)
    for blocks in range(bare.stages, 4 * bare.blocks + 1, bare.stages):
        for channels in range(max(1, bare.channels // 2), 4 * bare.channels + 1):
            candidate = bare.replace(channels=channels, blocks=blocks)
            macs = genotype_macs(candidate)
            if abs(macs - target_macs) < best_gap:
                best, best_gap = candidate, abs(macs - target_macs)
            if macs > target_macs:
                break  # wider only costs more
    if best_gap > tolerance * target_macs:
        raise AblationError(f"variant plain-matched: no widening or deepening of the {bare.channels}ch x "
                            f"{bare.blocks} backbone comes within {tolerance:.0%} of acla-searched's "
                            f"{format_macs(target_macs)}MACs (closest misses by {format_macs(best_gap)}MACs)")
    return best


def _fixed_key_cla(searched: Genotype, budget_macs: float) -> Genotype:
    """CLA at the searched positions with the largest uniform K that fits the budget."""
    for keys in range(searched.max_keys, 0, -1):
        candidate = searched.replace(attention="cla", adaptive=False, max_keys=keys,
                             keys=[[keys] * len(k) for k in searched.keys])
        if genotype_macs(candidate) <= budget_macs:
            return candidate
    over = genotype_macs(candidate) - budget_macs
    raise AblationError(f"variant cla: even one fixed key per layer at positions {list(searched.positions)} "
                        f"exceeds the budget by {format_macs(over)}MACs; expected a larger --budget")


def check_backbone_budget(task: TaskSpec, profile: Profile, budget_macs: float) -> None:
    """BudgetError when the budget is below the profile's bare backbone (before any search runs)."""
    bare = genotype_macs(Genotype(task=task.name, scale=task.scale, in_channels=task.in_channels,
                                  channels=profile.channels, blocks=profile.blocks, stages=profile.stages))
    check_budget(budget_macs, bare, f"the {profile.name} profile's bare {profile.channels}ch x {profile.blocks} "
                                    f"backbone for {task.label}")


def _fitting_nonlocal(searched: Genotype, budget_macs: float) -> Genotype:
    """The non-local block at the searched positions with the largest key grid (up to 16 x 16) that fits."""
    for grid in range(searched.nonlocal_grid, 0, -1):
        candidate = searched.replace(attention="nonlocal", adaptive=False, keys=[], nonlocal_grid=grid)
        if genotype_macs(candidate) <= budget_macs:
            return candidate
    over = genotype_macs(candidate) - budget_macs
    raise AblationError(f"variant nonlocal: even one pooled key at positions {list(searched.positions)} exceeds "
                        f"the budget by {format_macs(over)}MACs; expected a larger --budget")


def build_variants(searched: Genotype, budget_macs: float, all_keys: Sequence[Sequence[int]] | None = None) -> list[Variant]:
    """The six variants of `searched` (an adaptive ACLA genotype). `all_keys` gives acla-all's key counts per
    position (default: every candidate key). Raises AblationError for a variant that cannot fit the budget."""
    if searched.attention != "acla":
        raise AblationError(f"ablate compares against a searched ACLA genotype, got attention {searched.attention!r}")
    bare = searched.replace(attention="none", adaptive=False, positions=[], keys=[])
    searched_macs = genotype_macs(searched)
    check_budget(budget_macs, genotype_macs(bare), f"the bare {bare.channels}ch x {bare.blocks} backbone")
    if searched_macs > budget_macs:
        raise AblationError(f"variant acla-searched exceeds the budget by "
                            f"{format_macs(searched_macs - budget_macs)}MACs")
    every = list(range(searched.blocks))
    keys_all = [list(k) for k in all_keys] if all_keys is not None else [
        [searched.max_keys] * refs_at_position(p, searched.blocks, searched.stages) for p in every]
    genotypes = {
        "plain": bare,
        "plain-matched": matched_plain(searched_macs, bare) if searched.positions else bare,
        "nonlocal": _fitting_nonlocal(searched, budget_macs),
        "cla": _fixed_key_cla(searched, budget_macs),
        "acla-all": searched.replace(positions=every, keys=keys_all),
        "acla-searched": searched,
    }
    variants = []
    for name in VARIANTS:
        macs = genotype_macs(genotypes[name])
        if macs > budget_macs and name != "acla-all":
            raise AblationError(f"variant {name} exceeds the budget of {format_macs(budget_macs)}MACs by "
                                f"{format_macs(macs - budget_macs)}MACs; expected a larger --budget")
        variants.append(Variant(name, genotypes[name], macs, macs <= budget_macs))
    return variants


def train_variant(*, name: str, genotype: Genotype, task: TaskSpec, data: DataSpec, profile: Profile, steps: int,
                  seed: int, checkpoint_path: str | None = None) -> dict:
    """Train one variant from scratch on `data.train` and score it on every whole image of `data.valid`."""
    started = time.perf_counter()
    result = train(genotype=genotype, task=task, data=data, profile=dataclasses.replace(profile, valid_crop=0),
                   steps=steps, seed=seed, checkpoint_path=checkpoint_path)
    metrics = result.metrics
    return {"name": name, "seed": seed, "genotype": genotype.to_dict(), "macs": genotype_macs(genotype),
            "params": count_parameters(result.model), "psnr_y": metrics["psnr_y"], "ssim_y": metrics["ssim_y"],
            "input_psnr_y": metrics["input_psnr_y"], "train_seconds": round(time.perf_counter() - started, 1),
            "checkpoint": checkpoint_path}


def summarise_variants(runs: Sequence[dict]) -> list[dict]:
    """One row per variant (in VARIANTS order): the mean over seeds, each seed's score, and the spread
    (max - min) of PSNR and SSIM."""
    rows = []
    for name in VARIANTS:
        mine = sorted((r for r in runs if r["name"] == name), key=lambda r: r["seed"])
        if not mine:
            continue
        psnr, ssim = [r["psnr_y"] for r in mine], [r["ssim_y"] for r in mine]
        rows.append({"name": name, "genotype": mine[0]["genotype"], "macs": mine[0]["macs"],
                     "params": mine[0]["params"], "psnr_y": statistics.fmean(psnr), "ssim_y": statistics.fmean(ssim),
                     "psnr_y_seeds": psnr, "psnr_y_spread": max(psnr) - min(psnr),
                     "ssim_y_spread": max(ssim) - min(ssim), "input_psnr_y": mine[0]["input_psnr_y"],
                     "train_seconds": statistics.fmean(r["train_seconds"] for r in mine),
                     "checkpoint": mine[0]["checkpoint"], "checkpoints": [r["checkpoint"] for r in mine]})
    return rows


def markdown_table(rows: Sequence[dict], budget_macs: float) -> str:
    """The ablation as a Markdown table: MACs, share of the budget, mean PSNR/SSIM (Y), spread, per seed."""
    lines = ["| variant | positions | MACs | of budget | params | PSNR-Y (dB) | spread | per seed | SSIM-Y |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = ", ".join(f"{p:.3f}" for p in r["psnr_y_seeds"])
        lines.append(f"| {r['name']} | {r['genotype']['positions']} | {format_macs(r['macs'])} | "
                     f"{r['macs'] / budget_macs:.0%} | {r['params']:,} | {r['psnr_y']:.3f} | {r['psnr_y_spread']:.3f} | "
                     f"{seeds} | {r['ssim_y']:.4f} |")
    if rows:
        lines.append(f"\nDegraded input: {rows[0]['input_psnr_y']:.3f} dB PSNR-Y.")
    return "\n".join(lines) + "\n"
