
import pytest
import torch

from search_space.budget import parse_budget
from search_space.cost import genotype_macs
from search_space.genotype import Genotype
from search_space.budget import BudgetError
from search_space.search import (derive_genotype, measure_position_scores, module_macs, score_steps,
                                 search_architecture)
from search_space.supernet import Supernet

BASE = Genotype(task="denoise", scale=1, in_channels=3, channels=8, blocks=4, stages=2, attention="acla",
                max_keys=4, adaptive=True)
BARE = genotype_macs(Genotype(task="denoise", scale=1, in_channels=3, channels=8, blocks=4, stages=2))


@pytest.mark.parametrize("text,value", [("50GFLOPs", 50e9), ("25GMACs", 25e9), ("50G", 50e9), ("5e10", 5e10),
                                        ("800M", 800e6), ("1.5 GFLOPs", 1.5e9), ("2t", 2e12), ("123456", 123456)])
def test_parse_budget(text, value):
    assert parse_budget(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "fifty", "-5G", "0", "0G", "nan", "inf", "5X", "1e400"])
def test_parse_budget_rejects(text):
    with pytest.raises(ValueError, match="budget"):
        parse_budget(text)


def test_supernet_parameter_split_and_state_dict():
    supernet = Supernet(base=BASE)
    arch, weights = supernet.arch_parameters(), supernet.weight_parameters()
    assert {id(p) for p in arch}.isdisjoint({id(p) for p in weights})
    assert len(arch) + len(weights) == len(list(supernet.parameters()))
    assert "alpha" in supernet.state_dict()
    assert any("gate_proj" in name for name in supernet.state_dict())


def test_expected_macs_is_differentiable_and_matches_cost():
    supernet = Supernet(base=BASE, alpha_init=50.0)  # p = 1 everywhere
    supernet.eval()
    supernet(torch.rand(1, 3, 8, 8))
    with torch.no_grad():
        for module in supernet.net.attention:  # make every gate certainly on: expected keys = K
            module.gate_proj.bias.fill_(50.0)
    supernet(torch.rand(1, 3, 8, 8))
    full = Genotype.from_dict({**BASE.to_dict(), "positions": [0, 1, 2, 3], "keys": [[4], [4], [4, 4], [4, 4]]})
    expected = supernet.expected_macs()
    assert expected.item() == pytest.approx(genotype_macs(full), rel=1e-5)
    supernet.alpha.data.fill_(0.0)
    supernet(torch.rand(1, 3, 8, 8))
    expected = supernet.expected_macs()
    expected.backward()
    assert supernet.alpha.grad.abs().sum() > 0


def test_derive_ranks_by_gain_and_rounds_keys():
    # positions with a positive measured gain are kept (a negative or zero gain never is); keys are rounded
    genotype = derive_genotype(base=BASE, position_scores=[0.02, -0.01, 0.005, 0.0],
                               active_keys=[[2.6], [4.0], [0.2, 3.4], [1.5, 4.0]], budget_macs=1e12)
    assert genotype.positions == (0, 2)
    assert genotype.keys == ((3,), (1, 3))


def test_derive_keeps_only_positions_whose_gain_is_significant_among_all_tested():
    keys = [[4.0], [4.0], [4.0, 4.0], [4.0, 4.0]]
    genotype = derive_genotype(base=BASE, position_scores=[0.02, 0.01, 0.005, 0.004], active_keys=keys,
                               budget_macs=1e12, score_errors=[0.001, 0.02, 0.004, 0.004])
    # z = 20 passes; z = 0.5, 1.25 and 1.0 do not at 5% family-wise over 4 positions (1.25 would pass a
    # one-standard-error rule: a coin flip among 4)
    assert genotype.positions == (0,)
    strong = derive_genotype(base=BASE, position_scores=[0.02, 0.01, 0.012, 0.004], active_keys=keys,
                             budget_macs=1e12, score_errors=[0.001, 0.02, 0.004, 0.004])
    assert strong.positions == (0, 2)  # z = 3: p = 0.0013, below Holm's 0.05 / 3 at the second step
    plain = derive_genotype(base=BASE, position_scores=[1e-6] * 4, active_keys=keys, budget_macs=1e12,
                            score_errors=[1e-5] * 4)
    assert plain.positions == ()  # nothing measurable: the plain backbone (the outer search spends on width)


def _greedy_oracle(scores, costs, room):
    """Independent oracle: every subset, ordered by gain per MAC, taken greedily."""
    order = sorted((i for i in range(len(scores)) if scores[i] > 0), key=lambda i: (-scores[i] / costs[i], i))
    kept = []
    for i in order:
        if costs[i] <= room:
            kept.append(i)
            room -= costs[i]
    return sorted(kept)


def test_derive_fills_a_binding_budget_by_gain_per_mac():
    keys = [[4.0], [1.0], [4.0, 4.0], [1.0, 1.0]]
    scores = [0.04, 0.01, 0.05, 0.012]
    costs = [module_macs(BASE, i, [int(k) for k in keys[i]]) for i in range(4)]
    assert len(set(costs)) == 4  # the key counts make the modules cost different amounts
    for fraction in (0.0, 0.3, 0.5, 0.7, 0.9, 1.0, 1.2):
        budget = BARE + fraction * sum(costs)
        genotype = derive_genotype(base=BASE, position_scores=scores, active_keys=keys, budget_macs=budget)
        assert genotype_macs(genotype) <= budget
        assert list(genotype.positions) == _greedy_oracle(scores, costs, budget - BARE)
        # what is left of the budget is smaller than every module the ranking passed over
        left = budget - genotype_macs(genotype)
        assert all(costs[i] > left for i in range(4) if i not in genotype.positions)
    # the budget binds: half the room keeps the best gain per MAC first
    half = derive_genotype(base=BASE, position_scores=scores, active_keys=keys, budget_macs=BARE + 0.5 * sum(costs))
    best = max(range(4), key=lambda i: scores[i] / costs[i])
    assert best in half.positions and len(half.positions) < 4


def test_derive_is_pure():
    args = dict(base=BASE, position_scores=[0.9, 0.2, 0.7, 0.6], active_keys=[[2.0], [1.0], [1.0, 1.0], [2.0, 2.0]],
                budget_macs=BARE * 1.2)
    assert derive_genotype(**args) == derive_genotype(**args)


def test_budget_below_bare_backbone_names_smallest():
    with pytest.raises(BudgetError, match=str(BARE)):
        derive_genotype(base=BASE, position_scores=[0.9] * 4, active_keys=[[1.0]] * 4, budget_macs=BARE - 1)


@pytest.mark.parametrize("task,scale", [("sr", 3), ("car", 1)])
def test_each_position_off_equals_a_whole_forward_with_its_weight_zero(task, scale):
    """The shared-prefix perturbation pass (what the scores run) computes, to the bit, what a whole forward with
    that position's weight zeroed computes; stage boundaries included (8 blocks, 4 stages). The keys it reports
    are those of the full pass."""
    torch.manual_seed(1)
    base = Genotype(task=task, scale=scale, in_channels=3, channels=8, blocks=8, stages=4, attention="acla",
                    max_keys=4, adaptive=True)
    supernet = Supernet(base=base, alpha_init=0.3).eval()
    for module in supernet.net.attention:
        torch.nn.init.normal_(module.fuse.weight, std=0.3)
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        weights = supernet.position_probs()
        full, keys, caps, without = supernet.perturbed_outputs(x, weights)
        assert torch.equal(full, supernet.net(x, position_weights=weights))
        assert (keys, caps) == (supernet.active_keys(), supernet.key_quantiles())
        assert len(without) == base.blocks
        for position, output in enumerate(without):
            off = weights.clone()
            off[position] = 0
            assert torch.equal(output, supernet.net(x, position_weights=off))
            assert not torch.equal(output, full)


def test_position_scores_oracle():
    """The perturbation score equals the loss with that position's weight zeroed minus the loss as it is."""
    torch.manual_seed(0)
    supernet = Supernet(base=BASE, alpha_init=0.5)
    for module in supernet.net.attention:  # give every module an effect
        torch.nn.init.normal_(module.fuse.weight, std=0.3)
    batches = [next(_random_batches(seed)) for seed in range(2)]
    scores = measure_position_scores(supernet, batches)
    supernet.eval()
    with torch.no_grad():
        weights = supernet.position_probs()
        full = sum(torch.nn.functional.l1_loss(supernet.net(x, position_weights=weights), y) for x, y in batches) / 2
        for position, score in enumerate(scores):
            off = weights.clone()
            off[position] = 0
            loss = sum(torch.nn.functional.l1_loss(supernet.net(x, position_weights=off), y) for x, y in batches) / 2
            assert score == pytest.approx((loss - full).item(), abs=1e-6)
    assert any(abs(s) > 1e-4 for s in scores)


def test_score_steps_fall_in_the_last_part_after_the_warmup():
    assert score_steps(100, 0, 0.25, 4) == [76, 84, 92, 100]
    assert score_steps(100, 90, 0.25, 4) == [91, 94, 97, 100]
    assert score_steps(3, 0, 0.25, 4) == [3]
    assert score_steps(8, 0, 0.5, 4) == [5, 6, 7, 8]
    assert score_steps(1, 0, 0.25, 4) == [1]


def _random_batches(seed=0):
    gen = torch.Generator().manual_seed(seed)
    while True:
        clean = torch.rand(2, 3, 12, 12, generator=gen)
        yield clean + 0.1 * torch.randn(clean.shape, generator=gen), clean


@pytest.mark.parametrize("attention", ["acla", "cla", "nonlocal"])
def test_search_on_random_data_respects_budget(attention):
    torch.manual_seed(0)
    base = Genotype.from_dict({**BASE.to_dict(), "attention": attention, "adaptive": attention == "acla"})
    supernet = Supernet(base=base, alpha_init=1.0)
    budget = BARE * 1.15
    reports = []
    outcome = search_architecture(supernet=supernet, batches=_random_batches(), budget_macs=budget, steps=6,
                                  arch_lr=0.05, report=reports.append, report_every=2)
    assert genotype_macs(outcome.genotype) <= budget
    assert [r["step"] for r in reports] == [2, 4, 6]
    assert len(outcome.position_probs) == 4 and len(outcome.history) == 3
    assert len(outcome.position_scores) == 4 and len(outcome.score_spread) == 4
    # the penalty is active (E[MACs] over budget at p ~ 0.73), so the arch step pushed the probabilities down
    assert max(outcome.position_probs) < torch.sigmoid(torch.tensor(1.0)).item()


def test_search_rejects_infeasible_budget():
    with pytest.raises(BudgetError):
        search_architecture(supernet=Supernet(base=BASE), batches=_random_batches(), budget_macs=BARE / 2, steps=1)


def test_warmup_steps_train_weights_only():
    torch.manual_seed(0)
    supernet = Supernet(base=BASE, alpha_init=1.0)
    gates_before = [p.detach().clone() for p in supernet.arch_parameters()]
    weights_before = [p.detach().clone() for p in supernet.weight_parameters()]
    reports = []
    search_architecture(supernet=supernet, batches=_random_batches(), budget_macs=BARE * 1.15, steps=3,
                        arch_lr=0.05, warmup_steps=3, report=reports.append, report_every=1)
    assert all(torch.equal(a, b) for a, b in zip(supernet.arch_parameters(), gates_before))
    assert any(not torch.equal(a, b) for a, b in zip(supernet.weight_parameters(), weights_before))
    assert [r["position_probs"] for r in reports] == [[round(torch.sigmoid(torch.tensor(1.0)).item(), 4)] * 4] * 3
    # after the warm-up the architecture moves (the penalty is active over the budget)
    search_architecture(supernet=supernet, batches=_random_batches(), budget_macs=BARE * 1.15, steps=4,
                        arch_lr=0.05, warmup_steps=3)
    assert not torch.equal(supernet.alpha.detach(), gates_before[0])


def _searched_keys(budget, attention="acla"):
    torch.manual_seed(0)
    base = Genotype.from_dict({**BASE.to_dict(), "attention": attention})
    supernet = Supernet(base=base, alpha_init=1.0)
    outcome = search_architecture(supernet=supernet, batches=_random_batches(), budget_macs=budget, steps=12,
                                  warmup_steps=2, report_every=4)
    mean = sum(sum(k) for k in outcome.active_keys) / sum(len(k) for k in outcome.active_keys)
    return mean, outcome


@pytest.mark.parametrize("attention", ["acla", "acla-shared"])
def test_a_binding_budget_keeps_fewer_keys_than_a_loose_one(attention):
    """Keys are priced always, in units of what the budget leaves for attention: the same search under a budget
    that binds (room for about one module) keeps fewer keys than under a loose one (both start at 2.9 of 4:
    GATE_INIT = 1)."""
    module = module_macs(Genotype.from_dict({**BASE.to_dict(), "attention": attention}), 3, [4, 4])
    tight, tight_outcome = _searched_keys(BARE + 1.2 * module, attention)
    loose, loose_outcome = _searched_keys(BARE * 20, attention)
    assert tight < loose - 0.5, (tight, loose)
    assert tight_outcome.history[-1]["key_price"] > loose_outcome.history[-1]["key_price"]
    assert all("active_keys" in record and len(record["active_keys"]) == BASE.blocks
               for record in tight_outcome.history)
    # The derived adaptive genotype is costed at its caps and carries its expected keys, at most the caps.
    for outcome in (tight_outcome, loose_outcome):
        genotype = outcome.genotype
        assert len(genotype.expected_keys) == len(genotype.positions)
        assert genotype_macs(genotype, expected=True) <= genotype_macs(genotype)
