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
- `cla`: for a shared-value genotype, the shared-value CLA (the registry's `fixed` kind);
- `acla-all`: ACLA at every position, with the key counts the search measured there; the one variant that
  may exceed the budget (it is the unconstrained reference), and it says so;
- `acla-random`: RANDOM_PLACEMENTS placements drawn at random (seeded), of the same kind and key rule, each
  within 5% of acla-searched's MACs and within the budget: does the search beat chance? (Li and Talwalkar,
  UAI 2019; Yang et al., ICLR 2020, found that many published searches do not);
- `acla-searched`: the searched genotype, positions and adaptive keys.
Seeds are paired: seed s is the same patch stream (and initialisation seed) for every variant, so each
variant's gain over plain-matched is measured per seed, and reported as the mean paired difference with its
95% t-interval.
Plain functions: the orchestrator runs `train_variant` as Ray tasks and records the results in MLflow.
"""
from __future__ import annotations

import dataclasses
import math
import random
import statistics
import time
from dataclasses import dataclass
from typing import Sequence

from search_space.budget import check_budget, format_macs
from search_space.cost import count_parameters, genotype_macs
from search_space.genotype import Genotype, refs_at_position
from search_space.registry import get_kind

from .profiles import Profile
from .tasks import TaskSpec
from .data import DataSpec

VARIANTS = ("plain", "plain-matched", "nonlocal", "cla", "acla-all", "acla-random", "acla-searched")
MATCH_TOLERANCE = 0.05  # plain-matched and each random placement lie within 5% of acla-searched's MACs
RANDOM_PLACEMENTS = 3
RANDOM_DRAWS = 5000  # random subsets of positions looked at for placements of the right cost


class AblationError(ValueError):
    """A variant cannot be built within the budget; the message names it and by how much it misses."""


@dataclass(frozen=True)
class Variant:
    name: str
    genotype: Genotype
    macs: int
    within_budget: bool
    placement: int | None = None  # acla-random's placement index


def matched_plain(target_macs: int, bare: Genotype, tolerance: float = MATCH_TOLERANCE,
                  limit: float = math.inf) -> Genotype:
    """The plain backbone made wider to within `tolerance` of `target_macs`: the rival "a plain net made wider".
    At `bare`'s depth, the width whose MACs are closest to the target. Only where no width at that depth comes
    within `tolerance` (a coarse step on a narrow net), every depth from one block per stage to four times
    `bare`'s (in whole stages) is tried, and the closest shape wins, ties to the shallowest. A deep, narrow net
    that matches the MACs more closely trains more slowly at a short schedule (21 x 24 against 35 x 8 at 12.7
    GMACs: 0.2 dB lower at 400 steps), so it is never preferred to a width that fits. AblationError when nothing
    lies within `tolerance`. No shape above `limit` (the budget) is considered."""
    def closest(depths):
        best, best_gap = bare, abs(genotype_macs(bare) - target_macs)
        for blocks in depths:
            for channels in range(max(1, bare.channels // 2), 4 * bare.channels + 1):
                candidate = bare.replace(channels=channels, blocks=blocks)
                macs = genotype_macs(candidate)
                if macs > limit:
                    break  # wider only costs more
                if abs(macs - target_macs) < best_gap:
                    best, best_gap = candidate, abs(macs - target_macs)
                if macs > target_macs:
                    break
        return best, best_gap
    best, best_gap = closest([bare.blocks])
    if best_gap > tolerance * target_macs:
        best, best_gap = closest(range(bare.stages, 4 * bare.blocks + 1, bare.stages))
    if best_gap > tolerance * target_macs:
        raise AblationError(f"variant plain-matched: no widening or deepening of the {bare.channels}ch x "
                            f"{bare.blocks} backbone comes within {tolerance:.0%} of acla-searched's "
                            f"{format_macs(target_macs)}MACs (closest misses by {format_macs(best_gap)}MACs)")
    return best


def _fixed_key_cla(searched: Genotype, budget_macs: float) -> Genotype:
    """CLA at the searched positions with the largest uniform K that fits the budget."""
    for keys in range(searched.max_keys, 0, -1):
        candidate = searched.replace(attention=get_kind(searched.attention).fixed, adaptive=False, max_keys=keys,
                                     keys=[[keys] * len(k) for k in searched.keys], expected_keys=[])
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
        candidate = searched.replace(attention="nonlocal", adaptive=False, keys=[], expected_keys=[], nonlocal_grid=grid)
        if genotype_macs(candidate) <= budget_macs:
            return candidate
    over = genotype_macs(candidate) - budget_macs
    raise AblationError(f"variant nonlocal: even one pooled key at positions {list(searched.positions)} exceeds "
                        f"the budget by {format_macs(over)}MACs; expected a larger --budget")


def position_keys(searched: Genotype, all_keys: Sequence[Sequence[int]] | None) -> list[list[int]]:
    """The key caps a module would get at each position: the search's (`all_keys`), else the searched genotype's
    own at its positions and, elsewhere, its mean cap rounded (at least 1) on every reference layer."""
    if all_keys is not None:
        return [list(k) for k in all_keys]
    caps = [k for ks in searched.keys for k in ks]
    mean = max(1, round(sum(caps) / len(caps))) if caps else searched.max_keys
    own = dict(zip(searched.positions, searched.keys))
    return [list(own.get(p, [mean] * refs_at_position(p, searched.blocks, searched.stages)))
            for p in range(searched.blocks)]


def random_placements(searched: Genotype, budget_macs: float, keys_at: Sequence[Sequence[int]], *,
                      count: int = RANDOM_PLACEMENTS, seed: int = 0,
                      tolerance: float = MATCH_TOLERANCE) -> list[Genotype]:
    """`count` placements of the searched kind at random positions (each with the key caps `keys_at` gives it),
    other than the searched one, each within `tolerance` of acla-searched's MACs and within the budget: drawn
    from RANDOM_DRAWS seeded random subsets. AblationError, saying by how much the closest misses, when fewer
    than `count` exist."""
    target = genotype_macs(searched)
    rng = random.Random(seed)
    seen, fitting, closest = {tuple(searched.positions)}, [], math.inf
    for _ in range(RANDOM_DRAWS):
        size = rng.randint(1, searched.blocks)
        positions = tuple(sorted(rng.sample(range(searched.blocks), size)))
        if positions in seen:
            continue
        seen.add(positions)
        candidate = searched.replace(positions=positions, keys=[keys_at[p] for p in positions], expected_keys=[])
        macs = genotype_macs(candidate)
        miss = max(abs(macs - target) - tolerance * target, macs - budget_macs, 0)
        if miss == 0:
            fitting.append(candidate)
        closest = min(closest, miss)
    if len(fitting) < count:
        raise AblationError(
            f"variant acla-random: {len(fitting)} random placement(s) other than the searched one lie within "
            f"{tolerance:.0%} of acla-searched's {format_macs(target)}MACs and within the budget of "
            f"{format_macs(budget_macs)}MACs, {count} needed; the closest other misses by {format_macs(closest)}MACs")
    return rng.sample(fitting, count)


def build_variants(searched: Genotype, budget_macs: float, all_keys: Sequence[Sequence[int]] | None = None,
                   names: Sequence[str] = VARIANTS, seed: int = 0) -> list[Variant]:
    """The variants `names` of `searched` (an adaptive genotype: acla or acla-shared). `all_keys` gives the
    search's key caps per position (acla-all's, and acla-random's key rule). Raises AblationError for a variant
    that cannot fit the budget. acla-random gives RANDOM_PLACEMENTS variants, one per placement."""
    if not get_kind(searched.attention).adaptive:
        raise AblationError(f"ablate compares against a searched adaptive genotype (acla or acla-shared), got "
                            f"attention {searched.attention!r}")
    bare = searched.replace(attention="none", adaptive=False, positions=[], keys=[], expected_keys=[])
    searched_macs = genotype_macs(searched)
    check_budget(budget_macs, genotype_macs(bare), f"the bare {bare.channels}ch x {bare.blocks} backbone")
    if searched_macs > budget_macs:
        raise AblationError(f"variant acla-searched exceeds the budget by "
                            f"{format_macs(searched_macs - budget_macs)}MACs")
    every = list(range(searched.blocks))
    keys_all = [list(k) for k in all_keys] if all_keys is not None else [
        [searched.max_keys] * refs_at_position(p, searched.blocks, searched.stages) for p in every]
    builders = {
        "plain": lambda: [bare],
        "plain-matched": lambda: [matched_plain(searched_macs, bare, limit=budget_macs) if searched.positions else bare],
        "nonlocal": lambda: [_fitting_nonlocal(searched, budget_macs)],
        "cla": lambda: [_fixed_key_cla(searched, budget_macs)],
        "acla-all": lambda: [searched.replace(positions=every, keys=keys_all, expected_keys=[])],
        "acla-random": lambda: random_placements(searched, budget_macs, position_keys(searched, all_keys), seed=seed),
        "acla-searched": lambda: [searched],
    }
    variants = []
    for name in (n for n in VARIANTS if n in names):
        genotypes = builders[name]()
        for index, genotype in enumerate(genotypes):
            macs = genotype_macs(genotype)
            if macs > budget_macs and name != "acla-all":
                raise AblationError(f"variant {name} exceeds the budget of {format_macs(budget_macs)}MACs by "
                                    f"{format_macs(macs - budget_macs)}MACs; expected a larger --budget")
            variants.append(Variant(name, genotype, macs, macs <= budget_macs,
                                    index if name == "acla-random" else None))
    return variants


def train_variant(*, name: str, genotype: Genotype, task: TaskSpec, data: DataSpec, profile: Profile, steps: int,
                  seed: int, checkpoint_path: str | None = None, placement: int | None = None) -> dict:
    """Train one variant from scratch on `data.train` and score it on every whole image of `data.valid`."""
    started = time.perf_counter()
    from .train import train  # torch, here: the CLI builds and checks the variants without it
    result = train(genotype=genotype, task=task, data=data, profile=dataclasses.replace(profile, valid_crop=0),
                   steps=steps, seed=seed, checkpoint_path=checkpoint_path)
    metrics = result.metrics
    return {"name": name, "seed": seed, "genotype": genotype.to_dict(), "macs": genotype_macs(genotype),
            "params": count_parameters(result.model), "psnr_y": metrics["psnr_y"], "ssim_y": metrics["ssim_y"],
            "input_psnr_y": metrics["input_psnr_y"], "psnr_rgb": metrics["psnr_rgb"],
            "input_psnr_rgb": metrics["input_psnr_rgb"], "placement": placement,
            "train_seconds": round(time.perf_counter() - started, 1), "checkpoint": checkpoint_path}


def paired_interval(differences: Sequence[float], confidence: float = 0.95) -> dict:
    """The mean of paired differences and its two-sided t-interval (None bounds with fewer than 2 pairs)."""
    from scipy import stats
    n = len(differences)
    mean = statistics.fmean(differences) if n else math.nan
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "pairs": n}
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "pairs": n}


def _per_seed(runs: Sequence[dict], metric: str) -> dict[int, float]:
    """A variant's score per seed: the mean over its placements (acla-random), else its one run."""
    seeds: dict[int, list[float]] = {}
    for run in runs:
        seeds.setdefault(run["seed"], []).append(run[metric])
    return {seed: statistics.fmean(values) for seed, values in sorted(seeds.items())}


def summarise_variants(runs: Sequence[dict], reference: str = "plain-matched") -> list[dict]:
    """One row per variant (in VARIANTS order): the mean over seeds, each seed's score (acla-random's: the mean
    over its placements), the spread (max - min) of PSNR and SSIM, and, against `reference` where it ran, the
    mean paired difference per seed in PSNR-Y and PSNR-RGB with its 95% interval. acla-random's row also lists
    its placements, each with its mean over seeds, and their spread."""
    reference_runs = [r for r in runs if r["name"] == reference]
    rows = []
    for name in VARIANTS:
        mine = sorted((r for r in runs if r["name"] == name), key=lambda r: (r["seed"], r.get("placement") or 0))
        if not mine:
            continue
        psnr, ssim = _per_seed(mine, "psnr_y"), _per_seed(mine, "ssim_y")
        rgb = _per_seed(mine, "psnr_rgb") if all("psnr_rgb" in r for r in mine) else {}
        row = {"name": name, "genotype": mine[0]["genotype"], "macs": mine[0]["macs"],
               "params": mine[0]["params"], "psnr_y": statistics.fmean(psnr.values()),
               "ssim_y": statistics.fmean(ssim.values()), "psnr_y_seeds": list(psnr.values()),
               "seeds": list(psnr), "psnr_y_spread": max(psnr.values()) - min(psnr.values()),
               "ssim_y_spread": max(ssim.values()) - min(ssim.values()), "input_psnr_y": mine[0]["input_psnr_y"],
               "train_seconds": statistics.fmean(r["train_seconds"] for r in mine),
               "checkpoint": mine[0]["checkpoint"], "checkpoints": [r["checkpoint"] for r in mine]}
        if rgb:
            row.update({"psnr_rgb": statistics.fmean(rgb.values()), "psnr_rgb_seeds": list(rgb.values()),
                        "input_psnr_rgb": mine[0].get("input_psnr_rgb")})
        if reference_runs and name != reference:
            for metric, key in (("psnr_y", "gap_y"), ("psnr_rgb", "gap_rgb")):
                if metric == "psnr_rgb" and not rgb:
                    continue
                theirs, ours = _per_seed(reference_runs, metric), _per_seed(mine, metric)
                row[key] = paired_interval([ours[s] - theirs[s] for s in ours if s in theirs])
        if name == "acla-random":
            placements = {}
            for run in mine:
                placements.setdefault(run["placement"], []).append(run)
            row["placements"] = []
            for index, group in sorted(placements.items()):
                placement = {"placement": index, "positions": group[0]["genotype"]["positions"],
                             "macs": group[0]["macs"], "psnr_y": statistics.fmean(r["psnr_y"] for r in group)}
                if rgb:  # a colour task's headline may be RGB (denoise): each placement's mean there too
                    placement["psnr_rgb"] = statistics.fmean(r["psnr_rgb"] for r in group)
                row["placements"].append(placement)
            means = [p["psnr_y"] for p in row["placements"]]
            row["placement_spread"] = max(means) - min(means)
            row["macs"] = round(statistics.fmean(p["macs"] for p in row["placements"]))
        rows.append(row)
    return rows


def _interval_text(gap: dict | None) -> str:
    if not gap:
        return "-"
    if gap["low"] is None:
        return f"{gap['mean']:+.3f} (1 seed)"
    return f"{gap['mean']:+.3f} [{gap['low']:+.3f}, {gap['high']:+.3f}]"


def markdown_table(rows: Sequence[dict], budget_macs: float) -> str:
    """The ablation as a Markdown table: MACs, share of the budget, mean PSNR/SSIM (Y), spread, per seed, and the
    paired gap to plain-matched (mean [95% interval]) in Y and RGB; acla-random's placements below it."""
    lines = ["| variant | positions | MACs | of budget | params | PSNR-Y (dB) | spread | per seed | SSIM-Y | "
             "vs plain-matched, Y (dB) [95%] | PSNR-RGB (dB) | vs plain-matched, RGB (dB) [95%] |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = ", ".join(f"{p:.3f}" for p in r["psnr_y_seeds"])
        positions = "3 random" if r["name"] == "acla-random" else r["genotype"]["positions"]
        rgb = f"{r['psnr_rgb']:.3f}" if "psnr_rgb" in r else "-"
        lines.append(f"| {r['name']} | {positions} | {format_macs(r['macs'])} | "
                     f"{r['macs'] / budget_macs:.0%} | {r['params']:,} | {r['psnr_y']:.3f} | {r['psnr_y_spread']:.3f} | "
                     f"{seeds} | {r['ssim_y']:.4f} | {_interval_text(r.get('gap_y'))} | {rgb} | "
                     f"{_interval_text(r.get('gap_rgb'))} |")
    if rows:
        lines.append(f"\nDegraded input: {rows[0]['input_psnr_y']:.3f} dB PSNR-Y"
                     + (f", {rows[0]['input_psnr_rgb']:.3f} dB PSNR-RGB." if rows[0].get("input_psnr_rgb") else "."))
    for r in rows:
        for p in r.get("placements", []):
            lines.append(f"- acla-random placement {p['placement']}: positions {p['positions']}, "
                         f"{format_macs(p['macs'])}MACs, {p['psnr_y']:.3f} dB PSNR-Y"
                         + (f", {p['psnr_rgb']:.3f} dB PSNR-RGB" if "psnr_rgb" in p else "") + " (means over seeds)")
        if "placement_spread" in r:
            lines.append(f"- acla-random: spread over placements {r['placement_spread']:.3f} dB")
    return "\n".join(lines) + "\n"
