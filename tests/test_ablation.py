"""The ablation's variants (workers/ablation.py) against their definitions, and its summary against formulas."""
import math

import pytest

from search_space.budget import BudgetError
from search_space.cost import genotype_macs
from search_space.genotype import Genotype
from workers.ablation import (VARIANTS, AblationError, build_variants, markdown_table, matched_plain, paired_interval,
                              position_keys,
                              summarise_variants)

SEARCHED = Genotype(task="car", scale=1, in_channels=3, channels=16, blocks=4, stages=2, attention="acla", max_keys=4,
                    adaptive=True, positions=(0, 3), keys=((2,), (3, 1)))
BARE = genotype_macs(Genotype(task="car", scale=1, in_channels=3, channels=16, blocks=4, stages=2))


def test_the_cli_lists_the_same_variants():
    from orchestrator.cli.main import VARIANT_NAMES
    assert VARIANT_NAMES == VARIANTS


def test_six_variants_by_definition():
    budget = genotype_macs(SEARCHED) * 1.02
    variants = {v.name: v for v in build_variants(SEARCHED, budget)}
    assert list(variants) == list(VARIANTS)
    plain, matched = variants["plain"].genotype, variants["plain-matched"].genotype
    assert plain.attention == "none" and plain.positions == () and (plain.channels, plain.blocks) == (16, 4)
    assert matched.attention == "none" and matched.positions == ()
    assert abs(genotype_macs(matched) - genotype_macs(SEARCHED)) <= 0.05 * genotype_macs(SEARCHED)
    grid = variants["nonlocal"].genotype.nonlocal_grid
    assert variants["nonlocal"].macs <= budget and (grid == 16 or genotype_macs(Genotype.from_dict(
        {**variants["nonlocal"].genotype.to_dict(), "nonlocal_grid": grid + 1})) > budget)  # the largest that fits
    for name in ("nonlocal", "cla"):
        assert variants[name].genotype.positions == SEARCHED.positions
        assert variants[name].genotype.attention == name
    cla = variants["cla"].genotype
    assert not cla.adaptive and len({k for ks in cla.keys for k in ks}) == 1  # one fixed K everywhere
    assert variants["acla-all"].genotype.positions == (0, 1, 2, 3)
    assert variants["acla-searched"].genotype == SEARCHED
    for v in variants.values():
        assert v.macs == genotype_macs(v.genotype)
        assert v.within_budget == (v.macs <= budget)
        assert v.within_budget or v.name == "acla-all"  # the unconstrained reference alone may exceed it


def test_cla_takes_the_largest_fixed_k_that_fits():
    budget = genotype_macs(SEARCHED) * 1.02
    cla = next(v for v in build_variants(SEARCHED, budget) if v.name == "cla").genotype
    k = cla.keys[0][0]
    assert genotype_macs(cla) <= budget
    if k < SEARCHED.max_keys:
        bigger = Genotype.from_dict({**cla.to_dict(), "max_keys": k + 1, "keys": [[k + 1] * len(x) for x in cla.keys]})
        assert genotype_macs(bigger) > budget


def test_matched_plain_is_the_wider_net_closest_in_macs():
    bare = Genotype(task="car", scale=1, in_channels=3, channels=16, blocks=4, stages=2)
    target = int(BARE * 1.3)
    matched = matched_plain(target, bare)
    gap = abs(genotype_macs(matched) - target)
    assert gap <= 0.05 * target and matched.blocks == bare.blocks  # widened, at the same depth
    for channels in range(8, 65):  # brute force over the widths at that depth: nothing is closer
        assert abs(genotype_macs(bare.replace(channels=channels)) - target) >= gap
    capped = matched_plain(target, bare, limit=target)  # never above the budget
    assert genotype_macs(capped) <= target
    with pytest.raises(AblationError, match="plain-matched"):
        matched_plain(target, bare, tolerance=1e-9)


def test_matched_plain_deepens_only_where_no_width_fits():
    """On a narrow net one channel more is a coarse step: where no width at the same depth comes within the
    tolerance, every depth is tried and the closest shape wins (brute force)."""
    bare = Genotype(task="car", scale=1, in_channels=3, channels=4, blocks=4, stages=2)
    target = genotype_macs(bare.replace(channels=5, blocks=8))  # no width at 4 blocks within 2% of it (6% off)
    assert all(abs(genotype_macs(bare.replace(channels=c)) - target) > 0.02 * target for c in range(2, 17))
    matched = matched_plain(target, bare, tolerance=0.02)
    gap = abs(genotype_macs(matched) - target)
    assert gap <= 0.02 * target and matched.blocks != bare.blocks
    for blocks in range(2, 17, 2):
        for channels in range(2, 17):
            assert abs(genotype_macs(bare.replace(channels=channels, blocks=blocks)) - target) >= gap


def test_variants_that_cannot_fit_say_which_and_by_how_much():
    with pytest.raises(BudgetError, match="below the smallest feasible network, the bare 16ch x 4 backbone"):
        build_variants(SEARCHED, BARE - 1)
    with pytest.raises(AblationError, match="variant acla-searched exceeds the budget by"):
        build_variants(SEARCHED, genotype_macs(SEARCHED) - 1)
    # nonlocal and cla shrink their keys to fit: with one key each they cost less than ACLA with one key, so they
    # fit whenever acla-searched does
    cheap = Genotype.from_dict({**SEARCHED.to_dict(), "positions": [0, 1, 2, 3], "keys": [[1], [1], [1, 1], [1, 1]]})
    tight = {v.name: v for v in build_variants(cheap, genotype_macs(cheap))}
    assert tight["nonlocal"].within_budget and tight["cla"].within_budget


def test_summary_means_and_spreads():
    runs = [{"name": n, "seed": s, "genotype": {"positions": []}, "macs": 10, "params": 5, "psnr_y": p, "ssim_y": q,
             "input_psnr_y": 29.0, "train_seconds": 2.0 * (s + 1), "checkpoint": f"{n}-{s}"}
            for n, s, p, q in [("plain", 0, 30.0, 0.8), ("plain", 1, 30.5, 0.9), ("acla-searched", 1, 31.0, 0.95),
                               ("acla-searched", 0, 30.0, 0.85)]]
    rows = summarise_variants(runs)
    assert [r["name"] for r in rows] == ["plain", "acla-searched"]  # VARIANTS order
    plain, searched = rows
    assert plain["psnr_y"] == pytest.approx(30.25) and plain["psnr_y_spread"] == pytest.approx(0.5)
    assert searched["psnr_y_seeds"] == [30.0, 31.0]  # by seed
    assert searched["ssim_y"] == pytest.approx(0.9) and searched["train_seconds"] == pytest.approx(3.0)
    table = markdown_table(rows, budget_macs=20)
    assert table.count("\n| ") == 2 and "30.250" in table and "50%" in table and "29.000 dB" in table
    assert not math.isnan(rows[0]["psnr_y"])



def test_random_placements_match_the_searched_cost_kind_and_key_rule():
    budget = genotype_macs(SEARCHED) * 1.02
    variants = [v for v in build_variants(SEARCHED, budget, names=("acla-random",), seed=3)]
    assert [v.placement for v in variants] == [0, 1, 2]
    keys_at = position_keys(SEARCHED, None)
    target = genotype_macs(SEARCHED)
    placements = set()
    for v in variants:
        g = v.genotype
        assert g.attention == SEARCHED.attention and g.adaptive
        assert g.positions != SEARCHED.positions and g.positions
        assert [list(k) for k in g.keys] == [keys_at[p] for p in g.positions]  # the same key rule
        assert abs(v.macs - target) <= 0.05 * target and v.macs <= budget
        placements.add(g.positions)
    assert len(placements) == 3
    again = build_variants(SEARCHED, budget, names=("acla-random",), seed=3)
    assert [v.genotype for v in again] == [v.genotype for v in variants]  # seeded
    # The key rule without the search's caps: the searched module's own keys where it stands, its mean cap elsewhere.
    assert keys_at == [[2], [2], [2, 2], [3, 1]]


def test_random_placement_that_cannot_fit_says_by_how_much():
    lone = Genotype.from_dict({**SEARCHED.to_dict(), "positions": [0], "keys": [[2]]})
    with pytest.raises(AblationError, match=r"variant acla-random: 1 random placement\(s\) .* closest other misses by"):
        build_variants(lone, genotype_macs(lone), names=("acla-random",))


def test_paired_interval_against_the_t_formula():
    gap = paired_interval([0.1, 0.2, 0.3])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2 df) x sd / sqrt(n)
    assert gap["mean"] == pytest.approx(0.2) and gap["pairs"] == 3
    assert gap["low"] == pytest.approx(0.2 - half) and gap["high"] == pytest.approx(0.2 + half)
    assert paired_interval([0.4])["low"] is None


def test_summary_pairs_seeds_and_averages_random_placements():
    def run(name, seed, psnr, placement=None, positions=()):
        return {"name": name, "seed": seed, "genotype": {"positions": list(positions)}, "macs": 100, "params": 5,
                "psnr_y": psnr, "ssim_y": 0.9, "input_psnr_y": 29.0, "psnr_rgb": psnr - 3, "input_psnr_rgb": 26.0,
                "train_seconds": 1.0, "checkpoint": "c", "placement": placement}
    runs = [run("plain-matched", 0, 30.0), run("plain-matched", 1, 31.0), run("plain-matched", 2, 30.5),
            run("acla-searched", 0, 30.1), run("acla-searched", 1, 31.2), run("acla-searched", 2, 30.5)]
    runs += [run("acla-random", s, base + d, p, [p]) for s, base in enumerate((30.0, 31.0, 30.5))
             for p, d in enumerate((-0.3, 0.0, 0.3))]
    rows = {r["name"]: r for r in summarise_variants(runs)}
    searched = rows["acla-searched"]["gap_y"]
    assert searched["mean"] == pytest.approx(0.1) and searched["pairs"] == 3  # (0.1 + 0.2 + 0.0) / 3
    assert rows["acla-searched"]["gap_rgb"]["mean"] == pytest.approx(0.1)
    random_row = rows["acla-random"]
    assert random_row["psnr_y_seeds"] == pytest.approx([30.0, 31.0, 30.5])  # mean over placements per seed
    assert random_row["gap_y"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert random_row["placement_spread"] == pytest.approx(0.6)
    assert [p["placement"] for p in random_row["placements"]] == [0, 1, 2]
    assert [p["psnr_rgb"] for p in random_row["placements"]] == pytest.approx([27.2, 27.5, 27.8])  # RGB = Y - 3
    assert "gap_y" not in rows["plain-matched"]
    table = markdown_table(list(rows.values()), budget_macs=200)
    assert "+0.100 [" in table and "acla-random placement 2" in table and "spread over placements 0.600" in table
    assert "30.200 dB PSNR-Y, 27.200 dB PSNR-RGB (means over seeds)" in table  # placement 0: mean(30.0/31.0/30.5) - 0.3
