"""A sweep's shared supernet on task data (issue #22): the widths it covers, a resumed training equal to an
uninterrupted one, and each backbone's search result derived from it within its budget."""
import dataclasses

import pytest
import torch

from search_space.backbone import build_network
from search_space.cost import genotype_macs
from workers.backbones import check_feasible, parse_backbone
from workers.data import embedded_sets
from workers.profiles import get_profile
from workers.shared_run import (CoverageError, SharedConfig, covered_widths, derive_backbone, train_shared_supernet)
from workers.tasks import task_from_options
from workers.train import DataSpec

BUDGETS = (1.5e9, 2e9)


def config(budgets=BUDGETS, seed=0):
    return SharedConfig(task=task_from_options("car"), budgets=budgets, stages=2, max_keys=4, seed=seed)


def test_the_supernet_covers_every_backbone_of_every_budget_at_its_proxy_width():
    profile = dataclasses.replace(get_profile("smoke"), proxy_width=0.5)
    depth, priced = covered_widths(config(), profile)
    offered = {parse_backbone(label) for budget in BUDGETS for label in check_feasible(config().task, profile, budget)}
    assert depth == 4 and {blocks for _, blocks in offered} == {4}
    assert set(priced) == {profile.proxy_channels(channels) for channels, _ in offered}
    for width, budget in priced.items():  # the tightest budget offering the width, scaled as a search scales it
        cfg = config()
        scaled = [b * genotype_macs(cfg.genotype(width, 4).bare()) / genotype_macs(cfg.genotype(c, 4).bare())
                  for b in BUDGETS for label in check_feasible(cfg.task, profile, b)
                  for c, _ in [parse_backbone(label)] if profile.proxy_channels(c) == width]
        assert budget == pytest.approx(min(scaled))
    two_depths = dataclasses.replace(get_profile("smoke"), block_choices=(4, 6))
    with pytest.raises(CoverageError, match="one depth"):
        covered_widths(config(), two_depths)


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
