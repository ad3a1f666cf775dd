"""The shared supernet of a sweep: a narrow width is the widest network with its other channels
switched off, its gradients reach only its own channels, sandwich sampling, a resumed shared search equal to an
uninterrupted one, and one genotype per budget from the scores measured at that budget's width."""
import random

import pytest
import torch

from search_space.cost import genotype_macs
from search_space.elastic import ElasticSupernet, sandwich_widths
from search_space.genotype import Genotype
from search_space.registry import SEARCHABLE_KINDS, get_kind
from search_space.shared_search import SharedSupernetSearch, derive_for_budget, measure_width
from search_space.supernet import Supernet

TASKS = {"sr": (2, 3), "car": (1, 3), "denoise": (1, 3), "demosaic": (1, 3)}  # task: (scale, input channels)


def base(task="sr", kind="acla", channels=12):
    scale, in_channels = TASKS[task]
    return Genotype(task=task, scale=scale, in_channels=in_channels, channels=channels, blocks=4, stages=2,
                    attention=kind, max_keys=3, adaptive=get_kind(kind).adaptive)


def sample(task="sr", batch=2, side=8, seed=0):
    scale, in_channels = TASKS[task]
    out = 3
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, in_channels, side, side, generator=g),
            torch.rand(batch, out, side * scale, side * scale, generator=g))


def zeroed_beyond(widest_state, narrow_state):
    """The oracle's weights: the widest network's, with every entry outside the narrow network's leading block
    set to zero, so that its extra channels stay zero through every layer."""
    masked = {}
    for name, value in widest_state.items():
        keep = torch.zeros_like(value)
        block = tuple(slice(0, n) for n in narrow_state[name].shape)
        keep[block] = value[block]
        masked[name] = keep
    return masked


@pytest.mark.parametrize("kind", SEARCHABLE_KINDS)
@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_narrow_width_is_the_widest_network_with_its_other_channels_off(kind, task):
    torch.manual_seed(0)
    elastic = ElasticSupernet(base=base(task, kind), widths=[8, 12]).eval()
    with torch.no_grad():  # random, nonzero everywhere (the fusions and gates start small or zero)
        for p in elastic.parameters():
            p.uniform_(-0.3, 0.3)
    narrow = elastic.at(8).eval()
    oracle = Supernet(base=base(task, kind, channels=12)).eval()
    oracle.load_state_dict(zeroed_beyond(elastic.widest.state_dict(), Supernet(base=base(task, kind, 8)).state_dict()))
    x, _ = sample(task)
    with torch.no_grad():
        expected = oracle(x)
        # the same sums in another order (8 channels against 12 with 4 zero): equal up to float32 rounding, which
        # reached 7 units in the last place of the output's largest value (about 80) on an AMD host; allow 32.
        # A wrong or missing channel moves the output by O(1).
        assert torch.allclose(narrow(x), expected, rtol=0, atol=4e-6 * expected.abs().max().item())
        assert not torch.allclose(elastic.at(12)(x), expected, atol=1e-3)  # the widest uses all its channels
        assert torch.equal(elastic.at(12)(x), elastic.widest(x))


@pytest.mark.parametrize("kind", SEARCHABLE_KINDS)
def test_a_width_trains_only_its_own_channels_with_the_gradient_of_a_net_of_that_width(kind):
    torch.manual_seed(1)
    elastic = ElasticSupernet(base=base("sr", kind), widths=[8, 12]).eval()
    with torch.no_grad():
        for p in elastic.parameters():
            p.uniform_(-0.3, 0.3)
    x, y = sample("sr")
    view = elastic.at(8).eval()
    torch.nn.functional.l1_loss(view(x), y).backward()
    alone = Supernet(base=base("sr", kind, 8)).eval()  # an independent network of that width, same weights
    alone.load_state_dict(view.state_dict())
    torch.nn.functional.l1_loss(alone(x), y).backward()
    own = dict(alone.named_parameters())
    for name, p in elastic.widest.named_parameters():
        grad = torch.zeros_like(p) if p.grad is None else p.grad
        block = tuple(slice(0, n) for n in own[name].shape)
        expected = torch.zeros_like(own[name]) if own[name].grad is None else own[name].grad
        assert torch.allclose(grad[block], expected, atol=1e-6), name
        outside = grad.clone()
        outside[block] = 0
        assert not outside.any(), f"{name} has a gradient outside width 8"


def by_hand(elastic, width, depth, blocks):
    """The oracle's weights for a network of `width` x `depth`: the deepest supernet's, its blocks `blocks` taken
    and renumbered, every tensor cut to its leading channels, alpha's entries picked."""
    own = Supernet(base=elastic.base.replace(channels=width, blocks=depth)).state_dict()
    holder = elastic.widest.state_dict()
    picked = {}
    for name, value in own.items():
        parts = name.split(".")
        if parts[0] == "net" and parts[1] in ("body", "attention"):
            parts[2] = str(blocks[int(parts[2])])
        source = holder["alpha"][blocks] if name == "alpha" else holder[".".join(parts)]
        picked[name] = source[tuple(slice(0, n) for n in value.shape)].clone()
    return picked


@pytest.mark.parametrize("kind", SEARCHABLE_KINDS)
@pytest.mark.parametrize("task", ["sr", "car"])
def test_a_shallow_size_runs_the_first_blocks_of_each_stage_of_the_deepest(kind, task):
    """Elastic depth (Once-for-All): 2 blocks in 2 stages run the deepest's blocks 0 and 2, with their positions'
    modules and logits, at the narrow width; an independent network with those weights copied computes the same,
    and the gradients land only on those blocks' leading channels, equal to the independent network's."""
    torch.manual_seed(2)
    elastic = ElasticSupernet(base=base(task, kind), sizes=[(8, 2), (12, 4)]).eval()
    assert elastic.sizes == ((8, 2), (12, 4)) and elastic.base.blocks == 4
    with torch.no_grad():
        for p in elastic.parameters():
            p.uniform_(-0.3, 0.3)
    view = elastic.at(8, 2).eval()
    alone = Supernet(base=base(task, kind, 8).replace(blocks=2)).eval()
    alone.load_state_dict(by_hand(elastic, 8, 2, [0, 2]))
    x, y = sample(task)
    out, expected = view(x), alone(x)
    assert torch.allclose(out, expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    assert not torch.allclose(elastic.at(12, 4)(x), expected, atol=1e-3)
    torch.nn.functional.l1_loss(out, y).backward()
    torch.nn.functional.l1_loss(expected, y).backward()
    own = dict(alone.named_parameters())
    for name, p in elastic.widest.named_parameters():
        grad = torch.zeros_like(p) if p.grad is None else p.grad
        parts = name.split(".")
        if name == "alpha":
            assert torch.allclose(grad[[0, 2]], own["alpha"].grad, atol=1e-6) and not grad[[1, 3]].any()
            continue
        if parts[1] in ("body", "attention") and parts[2] in ("1", "3"):
            assert not grad.any(), f"{name}: a block the shallow network does not run got a gradient"
            continue
        if parts[1] in ("body", "attention"):
            parts[2] = str([0, 2].index(int(parts[2])))
        mine = own[".".join(parts)]
        block = tuple(slice(0, n) for n in mine.shape)
        reference = torch.zeros_like(mine) if mine.grad is None else mine.grad
        assert torch.allclose(grad[block], reference, atol=1e-6), name
        outside = grad.clone()
        outside[block] = 0
        assert not outside.any(), f"{name} has a gradient outside width 8"
    with pytest.raises(ValueError, match="not a part of"):
        ElasticSupernet(base=base(), sizes=[(8, 3), (12, 4)])


def test_the_sandwich_of_sizes_trains_the_largest_and_the_smallest_by_macs():
    elastic = ElasticSupernet(base=base(), sizes=[(12, 2), (8, 4), (12, 4), (8, 2)])
    macs = [genotype_macs(base("sr", "acla", w).replace(blocks=d).bare()) for w, d in elastic.sizes]
    assert macs == sorted(macs) and elastic.sizes[0] == (8, 2) and elastic.sizes[-1] == (12, 4)
    rng = random.Random(1)
    draws = [sandwich_widths(elastic.sizes, rng) for _ in range(100)]
    assert all(d[:2] == [(12, 4), (8, 2)] and set(d[2:]) <= {(12, 2), (8, 4)} for d in draws)
    search = SharedSupernetSearch(elastic, {size: 1.3 * m for size, m in zip(elastic.sizes, macs)}, seed=1)
    losses = search.weight_step(sample("sr"))
    assert set(losses) <= set(elastic.sizes) and {(12, 4), (8, 2)} <= set(losses)
    records = [search.arch_step(sample("sr", seed=s)) for s in range(4)]
    assert [(r["width"], r["depth"]) for r in records] == list(elastic.sizes)  # each size in turn
    scores = measure_width(elastic.at(12, 2), [sample("sr", seed=s) for s in range(3)])
    assert (scores.width, scores.depth) == (12, 2) and len(scores.position_scores) == 2
    target = base("sr", "acla", 24).replace(blocks=2).bare()
    genotype = derive_for_budget(scores, target, 1.5 * genotype_macs(target))
    assert genotype.blocks == 2 and all(p < 2 for p in genotype.positions)
    assert genotype_macs(genotype) <= 1.5 * genotype_macs(target)


def test_sandwich_sampling_trains_the_widest_the_narrowest_and_two_between():
    rng = random.Random(0)
    widths = [8, 12, 16, 20, 24]
    draws = [sandwich_widths(widths, rng) for _ in range(200)]
    assert all(d[:2] == [24, 8] and len(d) == 4 and set(d[2:]) <= {12, 16, 20} for d in draws)
    assert {w for d in draws for w in d[2:]} == {12, 16, 20}  # every width between is drawn
    assert sandwich_widths([16], rng) == [16]
    assert sandwich_widths([8, 16], rng)[:2] == [16, 8]
    with pytest.raises(ValueError, match="not one of"):
        ElasticSupernet(base=base(), widths=[8, 12]).at(10)


def budgets(widths, share=1.3):
    """Each width's budget: its bare backbone's MACs times `share`."""
    return {w: share * genotype_macs(base("sr", "acla", w).bare()) for w in widths}


def run_steps(search, steps, seed):
    for step in range(steps):
        search.weight_step(sample("sr", seed=seed + 2 * step))
        search.arch_step(sample("sr", seed=seed + 2 * step + 1), update=step >= 1)


def test_a_resumed_shared_search_equals_an_uninterrupted_one():
    def fresh():
        torch.manual_seed(3)
        elastic = ElasticSupernet(base=base("sr", "acla"), widths=[8, 12, 16])
        return SharedSupernetSearch(elastic, budgets([8, 12, 16]), seed=3)
    uninterrupted = fresh()
    torch.manual_seed(4)  # the hard-concrete gates' noise
    run_steps(uninterrupted, 4, seed=0)
    after = uninterrupted.elastic.state_dict()

    first = fresh()
    torch.manual_seed(4)
    run_steps(first, 2, seed=0)
    saved, rng = first.state_dict(), torch.get_rng_state()
    resumed = fresh()  # a new process: new objects, then the saved state
    resumed.load_state_dict(saved)
    torch.set_rng_state(rng)
    for step in range(2, 4):
        resumed.weight_step(sample("sr", seed=2 * step))
        resumed.arch_step(sample("sr", seed=2 * step + 1), update=True)
    for name, value in resumed.elastic.state_dict().items():
        assert torch.equal(value, after[name]), name
    assert resumed.steps_done == uninterrupted.steps_done == 4


def test_the_shared_search_moves_weights_and_architecture_of_every_width():
    torch.manual_seed(5)
    elastic = ElasticSupernet(base=base("sr", "acla"), widths=[8, 12])
    search = SharedSupernetSearch(elastic, budgets([8, 12]), seed=5, arch_lr=0.05)
    before = {k: v.clone() for k, v in elastic.state_dict().items()}
    for step in range(3):
        losses = search.weight_step(sample("sr", seed=step))
        assert sorted(losses) == [(8, 4), (12, 4)]  # two widths: the widest and the narrowest, each step
        record = search.arch_step(sample("sr", seed=10 + step))
        assert record["width"] == [8, 12][step % 2]
    after = elastic.state_dict()
    assert not torch.equal(before["widest.alpha"], after["widest.alpha"])
    widest_only = after["widest.net.head.weight"][8:] - before["widest.net.head.weight"][8:]
    assert widest_only.abs().sum() > 0  # the widest's own channels train too (it is in every sandwich)


def test_each_budget_gets_its_genotype_from_the_scores_at_its_own_width():
    torch.manual_seed(6)
    elastic = ElasticSupernet(base=base("sr", "acla"), widths=[8, 12])
    with torch.no_grad():
        for p in elastic.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batches = [sample("sr", seed=20 + i) for i in range(4)]
    narrow, wide = measure_width(elastic.at(8), batches), measure_width(elastic.at(12), batches)
    assert narrow.width == 8 and wide.width == 12
    assert len(narrow.position_scores) == len(narrow.score_errors) == 4 == len(narrow.active_keys)
    assert narrow.position_scores != wide.position_scores  # each width is scored on its own network
    assert all(e >= 0 for e in narrow.score_errors)
    # an independent check of one score: the loss with position 0 off minus the loss with all on, at width 8
    view = elastic.at(8).eval()
    weights = view.position_probs().detach()
    off = weights.clone()
    off[0] = 0
    with torch.no_grad():
        by_hand = sum(torch.nn.functional.l1_loss(view.net(x, position_weights=off), y).item()
                      - torch.nn.functional.l1_loss(view.net(x, position_weights=weights), y).item()
                      for x, y in batches) / len(batches)
    assert narrow.position_scores[0] == pytest.approx(by_hand, abs=1e-7)
    for scores, channels in ((narrow, 16), (wide, 24)):  # each width proxies a backbone twice as wide
        target = base("sr", "acla", channels).bare()
        bare = genotype_macs(target)
        for budget in (bare, bare * 1.05, bare * 2):
            genotype = derive_for_budget(scores, target, budget)
            assert genotype.channels == channels and genotype_macs(genotype) <= budget


def test_two_data_parallel_workers_step_as_one_worker_on_their_whole_batch():
    """Each worker takes half of the batch, and their gradients are averaged before every step (as DDP does):
    the weights and architecture move exactly as one worker's on the whole batch (CLA: no gate noise)."""
    import threading

    def fresh(reduce=None):
        torch.manual_seed(8)
        elastic = ElasticSupernet(base=base("sr", "cla"), widths=[8, 12])
        return SharedSupernetSearch(elastic, budgets([8, 12]), seed=8, arch_lr=0.05, reduce_gradients=reduce)
    batches = [sample("sr", batch=4, seed=30 + i) for i in range(4)]
    alone = fresh()
    for i in range(0, 4, 2):
        alone.weight_step(batches[i])
        alone.arch_step(batches[i + 1])

    barrier, posted = threading.Barrier(2), {}

    def reducer(rank):
        def reduce(tensors):
            posted[rank] = [t.clone() for t in tensors]
            barrier.wait()
            for t, a, b in zip(tensors, posted[0], posted[1]):
                t.copy_((a + b) / 2)
            barrier.wait()
        return reduce
    workers = [fresh(reducer(0)), fresh(reducer(1))]

    def run(rank):
        half = slice(2 * rank, 2 * rank + 2)
        for i in range(0, 4, 2):
            workers[rank].weight_step(tuple(t[half] for t in batches[i]))
            workers[rank].arch_step(tuple(t[half] for t in batches[i + 1]))
    threads = [threading.Thread(target=run, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, value in alone.elastic.state_dict().items():
        assert torch.allclose(workers[0].elastic.state_dict()[name], value, atol=1e-6), name
        assert torch.equal(workers[0].elastic.state_dict()[name], workers[1].elastic.state_dict()[name]), name
