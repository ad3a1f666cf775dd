"""A sweep's shared supernet on task data: the widths it covers, a resumed training equal to an
uninterrupted one, and each backbone's search result derived from it within its budget."""
import dataclasses

import pytest
import torch

from search_space.backbone import build_network
from search_space.cost import genotype_macs
from workers.backbones import check_feasible, parse_backbone
from workers.data import embedded_sets
from workers.profiles import get_profile
from workers.shared_config import SharedConfig, covered_sizes
from workers.shared_run import derive_backbone, train_shared_supernet
from workers.tasks import task_from_options
from workers.train import DataSpec, train

BUDGETS = (1.5e9, 2e9)


def config(budgets=BUDGETS, seed=0):
    return SharedConfig(task=task_from_options("car"), budgets=budgets, stages=2, max_keys=4, seed=seed)


def test_the_supernet_covers_every_backbone_of_every_budget_at_its_proxy_size():
    profile = dataclasses.replace(get_profile("smoke"), proxy_width=0.5)
    priced = covered_sizes(config(), profile)
    offered = {parse_backbone(label) for budget in BUDGETS for label in check_feasible(config().task, profile, budget)}
    assert {blocks for _, blocks in offered} == {4}
    assert set(priced) == {(profile.proxy_channels(channels), blocks) for channels, blocks in offered}
    for (width, depth), budget in priced.items():  # the tightest budget offering the size, scaled as a search does
        cfg = config()
        scaled = [b * genotype_macs(cfg.genotype(width, depth).bare()) / genotype_macs(cfg.genotype(c, d).bare())
                  for b in BUDGETS for label in check_feasible(cfg.task, profile, b)
                  for c, d in [parse_backbone(label)] if (profile.proxy_channels(c), d) == (width, depth)]
        assert budget == pytest.approx(min(scaled))


def test_budgets_whose_backbones_differ_in_depth_share_one_supernet():
    """The paper profile offers 8, 12 and 16 blocks at each budget: one supernet covers them all (elastic depth)."""
    profile = get_profile("paper")
    cfg = SharedConfig(task=task_from_options("car"), budgets=(50e9, 100e9), stages=profile.stages)
    priced = covered_sizes(cfg, profile)
    offered = {parse_backbone(label) for budget in cfg.budgets for label in check_feasible(cfg.task, profile, budget)}
    assert {d for _, d in priced} == {8, 12, 16} and set(priced) == offered  # proxy width 1: the backbones themselves


def test_a_sweeps_budgets_are_checked_without_importing_torch():
    """A sweep's configuration and coverage are plain arithmetic: the driver builds them without torch (about 2 s
    of every sweep's start)."""
    import subprocess
    import sys
    script = ("import sys; from workers.shared_config import SharedConfig, covered_sizes; "
              "from workers.profiles import get_profile; from workers.tasks import task_from_options; "
              "print(len(covered_sizes(SharedConfig(task=task_from_options('car'), budgets=(1.5e9, 2e9), stages=2), "
              "get_profile('smoke'))), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(len(covered_sizes(config(), get_profile("smoke")))), "False"]


def test_a_resumed_shared_supernet_equals_an_uninterrupted_one(tmp_path):
    profile, data = get_profile("smoke"), DataSpec(*embedded_sets())
    whole = train_shared_supernet(config(), data, profile, steps=4)
    path = str(tmp_path / "shared.pt")
    cut = train_shared_supernet(config(), data, profile, steps=4, checkpoint_path=path, checkpoint_every=1,
                                stop_after=2)
    assert cut.steps_done == 2
    records = []
    resumed = train_shared_supernet(config(), data, profile, steps=4, checkpoint_path=path, report=records.append)
    assert resumed.steps_done == 4 and [r["step"] for r in records] == [4]  # the smoke profile logs every 2 steps
    for name, value in whole.elastic.state_dict().items():
        assert torch.equal(value, resumed.elastic.state_dict()[name]), name


def test_each_backbone_is_derived_from_the_shared_supernet_within_its_budget():
    profile, data = get_profile("smoke"), DataSpec(*embedded_sets())
    search = train_shared_supernet(config(), data, profile, steps=3)
    for budget in BUDGETS:
        for label in check_feasible(config().task, profile, budget):
            found = derive_backbone(search, config(), data, profile, label, budget)
            channels, blocks = parse_backbone(label)
            assert (found.genotype.channels, found.genotype.blocks) == (channels, blocks)
            assert genotype_macs(found.genotype) <= budget
            assert found.proxy_genotype.channels == profile.proxy_channels(channels)
            assert len(found.outcome.position_scores) == blocks == len(found.outcome.score_errors)
            # the proxy training inherits the supernet's weights at this width: every tensor the derived network
            # has in common with the supernet has its shape (nothing is dropped for a mismatch)
            own = build_network(found.proxy_genotype).state_dict()
            shared = [k for k in own if k in found.supernet_state]
            assert shared and all(own[k].shape == found.supernet_state[k].shape for k in shared)
            assert all(k in found.supernet_state for k in own if not k.startswith("attention."))


def test_a_sweep_trial_derives_from_the_shared_supernet_and_proxy_trains_what_it_derived(tmp_path):
    """A trial given the sweep's supernet searches nothing: its genotype is the one derived from the supernet at
    its backbone's width, within its budget, and it proxy-trains that genotype as any trial does."""
    import json

    import workers.search_run as search_module
    from orchestrator.search.trial import TrialSettings, run_trial
    from search_space.genotype import Genotype
    from workers.shared_run import load_shared_search
    profile, data = get_profile("smoke"), DataSpec(*embedded_sets())
    path = str(tmp_path / "shared.pt")
    train_shared_supernet(config(), data, profile, steps=3, checkpoint_path=path)
    budget = BUDGETS[1]
    backbone = check_feasible(config().task, profile, budget)[-1]
    settings = TrialSettings(task=config().task, budget_macs=budget, profile=profile, data=data, shared_supernet=path)
    params = {"backbone": backbone, "penalty_weight": 1.0, "weight_lr": profile.weight_lr, "arch_lr": profile.arch_lr,
              "gate_temperature": 1.0}
    searched = []
    real = search_module.run_search
    search_module.run_search = lambda *a, **k: searched.append(1) or real(*a, **k)
    try:
        result = run_trial(params, settings)
    finally:
        search_module.run_search = real
    assert searched == []  # derived, not searched
    shared, shared_config = load_shared_search(path, config().task, profile)
    derived = derive_backbone(shared, shared_config, data, profile, backbone, budget)
    expected = derived.genotype
    got = Genotype.from_json(result["genotype"])
    assert got.replace(expected_keys=[]) == expected.replace(expected_keys=[])  # keys re-measured after training
    # fine-tuned from the supernet's weights at its width for the sweep's steps: the same training called directly,
    # on weights sliced from the widest supernet by hand (oracle)
    own = build_network(derived.proxy_genotype).state_dict()
    widest = {k.removeprefix("net."): v for k, v in shared.elastic.widest.state_dict().items()}
    by_hand = {k: widest[k][tuple(slice(0, n) for n in v.shape)] for k, v in own.items()}
    direct = train(genotype=derived.proxy_genotype, task=config().task, data=data, profile=profile,
                   steps=profile.sweep_steps(), init_state=by_hand, seed=0).metrics
    assert result["psnr"] == direct["psnr_y"] and profile.sweep_steps() != profile.train_steps
    assert result["macs"] <= budget and result["psnr"] == result["psnr"]
    assert len(json.loads(result["position_scores"])) == got.blocks
    with pytest.raises(ValueError, match="trained for car"):
        load_shared_search(path, task_from_options("denoise"), profile)


def test_a_supernet_of_two_depths_derives_each_backbone_at_its_own_depth(tmp_path):
    """Elastic depth: budgets offering 2- and 4-block backbones share one supernet; each backbone's genotype is
    derived at its own depth, within its budget, and a trial of the shallow one proxy-trains it."""
    from orchestrator.search.trial import TrialSettings, run_trial
    from search_space.genotype import Genotype
    profile, data = dataclasses.replace(get_profile("smoke"), block_choices=(2, 4)), DataSpec(*embedded_sets())
    offered = {budget: [parse_backbone(label) for label in check_feasible(config().task, profile, budget)]
               for budget in BUDGETS}
    assert {d for backbones in offered.values() for _, d in backbones} == {2, 4}
    path = str(tmp_path / "shared.pt")
    search = train_shared_supernet(config(), data, profile, steps=2, checkpoint_path=path)
    assert {d for _, d in search.elastic.sizes} == {2, 4} and search.elastic.base.blocks == 4
    for budget, backbones in offered.items():
        for channels, blocks in backbones:
            found = derive_backbone(search, config(), data, profile, f"c{channels}-b{blocks}", budget)
            assert (found.genotype.channels, found.genotype.blocks) == (channels, blocks)
            assert genotype_macs(found.genotype) <= budget and all(p < blocks for p in found.genotype.positions)
            assert found.proxy_genotype.blocks == blocks
    budget = BUDGETS[1]
    channels, blocks = next((c, d) for c, d in offered[budget] if d == 2)
    settings = TrialSettings(task=config().task, budget_macs=budget, profile=profile, data=data, shared_supernet=path)
    result = run_trial({"backbone": f"c{channels}-b{blocks}", "penalty_weight": 1.0, "weight_lr": profile.weight_lr,
                        "arch_lr": profile.arch_lr, "gate_temperature": 1.0}, settings)
    assert Genotype.from_json(result["genotype"]).blocks == 2 and result["macs"] <= budget
