"""The fused CPU attention core equals the torch/grid_sample reference, forward and gradients, within float32
tolerance, and a float64 naive loop exactly."""
import pytest
import torch

from search_space.fast_sampling import attend, fast_path_available, reference_attend
from tests.oracles import naive_deformable_sample

pytestmark = pytest.mark.skipif(not fast_path_available(torch.zeros(1)), reason="fast CPU kernel could not be built")


def case(batch, channels, layers, keys, height, width, spread, seed, gated=True, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    refs = [torch.randn(batch, channels, height, width, generator=gen, dtype=dtype) for _ in range(layers)]
    shape = (batch, height, width, layers * keys)
    offsets = (torch.rand(*shape, 2, generator=gen, dtype=dtype) * 2 - 1) * spread
    logits = torch.randn(*shape, generator=gen, dtype=dtype)
    gates = (torch.rand(*shape, generator=gen) < 0.6).to(dtype) if gated else None
    if gated:
        gates[0, 0, 0] = 0  # one query with every key off: zero output, finite gate gradients
    return refs, offsets, logits, gates


def run(fn, refs, offsets, logits, gates, keys, grad, **kwargs):
    leaves = [t.clone().requires_grad_(True) for t in (*refs, offsets, logits)]
    gate_leaf = None if gates is None else gates.clone().requires_grad_(True)
    out = fn(leaves[:len(refs)], leaves[-2], leaves[-1], gate_leaf, keys, **kwargs)
    out.backward(grad)
    grads = [t.grad for t in leaves] + ([] if gate_leaf is None else [gate_leaf.grad])
    return out, grads


SHAPES = [(2, 5, 2, 3, 6, 7), (1, 64, 3, 9, 9, 8), (3, 1, 1, 1, 4, 5), (1, 33, 2, 2, 1, 6), (2, 16, 1, 4, 5, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spread", [0.7, 4.0])
@pytest.mark.parametrize("gated", [True, False])
def test_forward_and_gradients_match_reference(shape, spread, gated):
    for seed in range(2):
        refs, offsets, logits, gates = case(*shape, spread=spread, seed=seed, gated=gated)
        keys = shape[3]
        grad = torch.randn(shape[0], shape[4], shape[5], shape[2] * (shape[1] + 1))
        fast, fast_grads = run(attend, refs, offsets, logits, gates, keys, grad)
        ref, ref_grads = run(reference_attend, refs, offsets, logits, gates, keys, grad)
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
        for index, (a, b) in enumerate(zip(fast_grads, ref_grads)):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=f"gradient {index}")


def test_off_key_gradients_skipped_for_a_derived_module():
    refs, offsets, logits, gates = case(2, 8, 2, 4, 5, 6, spread=2.0, seed=5)
    grad = torch.randn(2, 5, 6, 2 * 9)
    fast, fast_grads = run(attend, refs, offsets, logits, gates, 4, grad, off_key_grads=False)
    ref, ref_grads = run(reference_attend, refs, offsets, logits, gates, 4, grad)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    on = gates.bool()
    for a, b in zip(fast_grads[:-1], ref_grads[:-1]):  # values, offsets and logits: exact, off keys included
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(fast_grads[-1][on], ref_grads[-1][on], rtol=1e-3, atol=1e-4)  # gates: on keys


def test_float64_matches_naive_loop_and_gradcheck():
    refs, offsets, logits, gates = case(1, 3, 2, 2, 4, 5, spread=2.5, seed=3, dtype=torch.float64)
    gates[0, 0, 0] = 1  # at least one key on everywhere checked below
    weights = torch.softmax(logits.masked_fill(gates == 0, float("-inf")), dim=-1).nan_to_num()
    got = attend(refs, offsets, logits, gates, 2)
    for layer, ref in enumerate(refs):
        off = offsets[..., 2 * layer:2 * layer + 2, :].permute(0, 3, 1, 2, 4)
        w = weights[..., 2 * layer:2 * layer + 2].permute(0, 3, 1, 2)
        want = (naive_deformable_sample(ref, off) * w.unsqueeze(1)).sum(2).permute(0, 2, 3, 1)
        torch.testing.assert_close(got[..., 3 * layer:3 * layer + 3], want, rtol=1e-10, atol=1e-10)
        mass = (naive_deformable_sample(torch.ones_like(ref[:, :1]), off) * w.unsqueeze(1)).sum(2)
        torch.testing.assert_close(got[..., 6 + layer], mass[:, 0], rtol=1e-10, atol=1e-10)
    offsets = offsets.round() + 0.2 + 0.6 * torch.rand_like(offsets)  # away from the bilinear kinks
    leaves = [t.requires_grad_(True) for t in (*refs, offsets, logits, gates)]
    assert torch.autograd.gradcheck(lambda a, b, o, lg, g: attend([a, b], o, lg, g, 2), leaves, eps=1e-6, atol=1e-6)


def test_integer_offsets_shift_exactly_in_float32():
    value = torch.arange(2 * 5 * 6, dtype=torch.float32).view(1, 2, 5, 6)
    offsets = torch.zeros(1, 5, 6, 1, 2)
    offsets[..., 0], offsets[..., 1] = 1, -2
    got = attend([value], offsets, torch.zeros(1, 5, 6, 1), None, 1)
    want = torch.zeros_like(value)
    want[:, :, 2:, :5] = value[:, :, :3, 1:]
    assert torch.equal(got[..., :2], want.permute(0, 2, 3, 1))
    assert torch.equal(got[..., 2], (want[:, 0] != 0).float() + (want[:, 0] == 0) * 0)  # mass: 1 inside, 0 out


def test_top_k_mask_matches_torch_topk():
    from search_space.fast_sampling import reference_sampling, top_k_mask
    scores = torch.randn(2, 5, 6, 3, 9, generator=torch.Generator().manual_seed(7))
    fast = top_k_mask(scores, (1, 4, 9))
    with reference_sampling():
        ref = top_k_mask(scores, (1, 4, 9))
    assert torch.equal(fast, ref)
    assert fast.sum(-1).mean(dim=(0, 1, 2)).tolist() == [1.0, 4.0, 9.0]
