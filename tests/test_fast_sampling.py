"""The fused CPU kernel equals the grid_sample reference, forward and gradients, within float32 tolerance."""
import pytest
import torch

from search_space.fast_sampling import aggregate_keys, fast_path_available, reference_aggregate_keys
from tests.oracles import naive_deformable_sample

pytestmark = pytest.mark.skipif(not fast_path_available(torch.zeros(1)), reason="fast CPU kernel could not be built")


def case(batch, channels, keys, height, width, spread, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    value = torch.randn(batch, channels, height, width, generator=gen, dtype=dtype)
    offsets = (torch.rand(batch, keys, height, width, 2, generator=gen, dtype=dtype) * 2 - 1) * spread
    weights = torch.rand(batch, keys, height, width, generator=gen, dtype=dtype)
    weights[:, 0] = 0.0  # a gated-off key: zero weight, yet its weight gradient must be right
    return value, offsets, weights


@pytest.mark.parametrize("shape", [(2, 5, 3, 6, 7), (1, 64, 9, 9, 8), (3, 1, 1, 4, 5), (1, 33, 2, 1, 6), (2, 16, 4, 5, 1)])
@pytest.mark.parametrize("spread", [0.7, 4.0])
def test_forward_and_gradients_match_reference(shape, spread):
    for seed in range(2):
        value, offsets, weights = case(*shape, spread=spread, seed=seed)
        inputs_fast = [t.clone().requires_grad_(True) for t in (value, offsets, weights)]
        inputs_ref = [t.clone().requires_grad_(True) for t in (value, offsets, weights)]
        fast = aggregate_keys(*inputs_fast)
        ref = reference_aggregate_keys(*inputs_ref)
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
        grad = torch.randn_like(ref)
        fast.backward(grad)
        ref.backward(grad)
        for name, a, b in zip(("value", "offsets", "weights"), inputs_fast, inputs_ref):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_float64_matches_naive_loop_and_gradcheck():
    value, offsets, weights = case(1, 3, 2, 4, 5, spread=2.5, seed=3, dtype=torch.float64)
    want = (naive_deformable_sample(value, offsets) * weights.unsqueeze(1)).sum(2)
    torch.testing.assert_close(aggregate_keys(value, offsets, weights), want, rtol=1e-10, atol=1e-10)
    offsets = offsets.round() + 0.2 + 0.6 * torch.rand_like(offsets)  # away from the bilinear kinks
    args = [t.requires_grad_(True) for t in (value, offsets, weights)]
    assert torch.autograd.gradcheck(aggregate_keys, args, eps=1e-6, atol=1e-6)


def test_integer_offsets_shift_exactly_in_float32():
    value = torch.arange(2 * 5 * 6, dtype=torch.float32).view(1, 2, 5, 6)
    offsets = torch.zeros(1, 1, 5, 6, 2)
    offsets[..., 0], offsets[..., 1] = 1, -2
    got = aggregate_keys(value, offsets, torch.ones(1, 1, 5, 6))
    want = torch.zeros_like(value)
    want[:, :, 2:, :5] = value[:, :, :3, 1:]
    assert torch.equal(got, want)
