"""The fidelity view (orchestrator/fidelity.py): paired gaps against steps, as `report` and
benchmarks/fidelity.py show them."""
from orchestrator.analysis.fidelity import fidelity_rows, gap_key, markdown, meets_target, plot
from workers.ablation import summarise_variants


def _report(task, steps, gains):
    """An ablation report as `ablate --json` writes it, from runs whose acla-searched gain per seed is `gains`."""
    runs = []
    for seed, gain in enumerate(gains):
        for name, psnr in (("plain-matched", 30.0 + 0.1 * seed), ("acla-searched", 30.0 + 0.1 * seed + gain)):
            runs.append({"name": name, "seed": seed, "genotype": {"positions": [0]}, "macs": 10, "params": 1,
                         "psnr_y": psnr, "ssim_y": 0.9, "input_psnr_y": 28.0, "psnr_rgb": psnr - 2,
                         "input_psnr_rgb": 26.0, "train_seconds": 1.0, "checkpoint": "c", "placement": None})
    return {"task": task, "steps": steps, "seeds": len(gains), "eval_data": "LIVE1",
            "searched_genotype": {"positions": [0]}, "position_scores": [{"position": 0}],
            "variants": summarise_variants(runs)}


def test_gaps_against_steps_in_the_headline_metric(tmp_path):
    reports = [_report("car-q10", 1600, [0.15, 0.12, 0.13]), _report("car-q10", 400, [-0.05, 0.02, -0.01]),
               _report("denoise-sigma25", 400, [0.3, 0.2, 0.25])]
    assert gap_key("car-q10") == "gap_y" and gap_key("denoise-sigma25") == "gap_rgb"
    rows = [r for r in fidelity_rows(reports) if r["variant"] == "acla-searched"]
    assert [(r["task"], r["steps"]) for r in rows] == [("car-q10", 400), ("car-q10", 1600), ("denoise-sigma25", 400)]
    assert rows[1]["gap"]["mean"] == pytest_approx(0.1333333)
    assert meets_target(rows[1]["gap"]) and not meets_target(rows[0]["gap"])
    table = markdown(reports)
    assert "| car-q10 | LIVE1 | 1600 | 3 | acla | searched [0] | acla-searched |" in table and "| yes |" in table and "| no |" in table
    plot(reports, tmp_path / "fidelity.png")
    assert (tmp_path / "fidelity.png").stat().st_size > 5000
    # one row per cell: a second ablation of the same setting that shares the reference runs adds its own variant
    # rows, and the shared reference once
    again = _report("car-q10", 1600, [0.15, 0.12, 0.13])
    again["variants"] = [{**v, "reused_from": "r1"} if v["name"] == "plain-matched" else v for v in again["variants"]]
    rows = [line for line in markdown([*reports, again]).splitlines() if "| car-q10 | LIVE1 | 1600 |" in line]
    assert sum("plain-matched" in line for line in rows) == 1 and sum("acla-searched" in line for line in rows) == 1


def pytest_approx(value):
    import pytest
    return pytest.approx(value, abs=1e-6)


def test_a_variant_run_alone_is_paired_with_the_earlier_reference_of_the_same_setting():
    from orchestrator.analysis.fidelity import pair_with_earlier_reference
    earlier = _report("car-q10", 1600, [0.15, 0.12, 0.13])
    earlier.update(parent_run_id="first", budget_macs=13, attention="acla", benchmark="LIVE1", seed=0)
    other = {**earlier, "steps": 400, "parent_run_id": "other"}  # another schedule: never paired with
    later = {**earlier, "parent_run_id": "second",
             "variants": [dict(v) for v in earlier["variants"] if v["name"] == "acla-searched"]}
    for v in later["variants"]:
        v.pop("gap_y"), v.pop("gap_rgb")
    paired = pair_with_earlier_reference(later, [earlier, other])
    assert paired["reference_from"] == "first"
    assert [v["name"] for v in paired["variants"]] == ["plain-matched", "acla-searched"]
    gap = paired["variants"][1]["gap_y"]
    # the oracle: the gains the earlier ablation computed in one run, from the same per-seed scores
    assert gap == next(v for v in earlier["variants"] if v["name"] == "acla-searched")["gap_y"]
    assert gap["mean"] == pytest_approx(0.1333333) and gap["pairs"] == 3
    assert "plain-matched (earlier run)" in markdown([paired])
    import pytest
    with pytest.raises(ValueError, match="no earlier ablation"):
        pair_with_earlier_reference(later, [other])
