"""The fused CPU attention equals the torch/grid_sample reference, forward and gradients, within float32
tolerance, and a float64 naive loop exactly."""
import pytest
import torch

from search_space.ops import attend, cpu_kernel_available, reference_attend, top_k_mask, use_reference
from tests.oracles import naive_deformable_sample

pytestmark = pytest.mark.skipif(not cpu_kernel_available(torch.zeros(1)), reason="fast CPU kernel could not be built")


def case(batch, channels, layers, keys, height, width, spread, seed, gated=True, dtype=torch.float32):
    """values, offsets, logits, gates, bias."""
    gen = torch.Generator().manual_seed(seed)
    values = [torch.randn(batch, channels, height, width, generator=gen, dtype=dtype) for _ in range(layers)]
    shape = (batch, height, width, layers * keys)
    offsets = (torch.rand(*shape, 2, generator=gen, dtype=dtype) * 2 - 1) * spread
    logits = torch.randn(*shape, generator=gen, dtype=dtype)
    gates = (torch.rand(*shape, generator=gen) < 0.6).to(dtype) if gated else None
    if gated:
        gates[0, 0, 0] = 0  # one query with every key off: the bias alone, finite gate gradients
    return values, offsets, logits, gates, torch.randn(channels, generator=gen, dtype=dtype)


def run(fn, values, offsets, logits, gates, bias, keys, grad, **kwargs):
    leaves = [t.clone().requires_grad_(True) for t in (*values, offsets, logits, bias)]
    gate_leaf = None if gates is None else gates.clone().requires_grad_(True)
    out = fn(leaves[:len(values)], leaves[-3], leaves[-2], gate_leaf, keys, leaves[-1], **kwargs)
    out.backward(grad)
    return out, [t.grad for t in leaves] + ([] if gate_leaf is None else [gate_leaf.grad])


SHAPES = [(2, 5, 2, 3, 6, 7), (1, 64, 3, 9, 9, 8), (3, 1, 1, 1, 4, 5), (1, 33, 2, 2, 1, 6), (2, 16, 1, 4, 5, 1)]


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """The kernel's parallel loops split the work across threads; both the one-thread path and a split one are
    checked, whatever OMP_NUM_THREADS the suite runs with (`make test` sets 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spread", [0.7, 4.0])
@pytest.mark.parametrize("gated", [True, False])
def test_forward_and_gradients_match_reference(shape, spread, gated, threads):
    for seed in range(2):
        values, offsets, logits, gates, bias = case(*shape, spread=spread, seed=seed, gated=gated)
        grad = torch.randn(shape[0], shape[4], shape[5], shape[1])
        fast, fast_grads = run(attend, values, offsets, logits, gates, bias, shape[3], grad)
        ref, ref_grads = run(reference_attend, values, offsets, logits, gates, bias, shape[3], grad)
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
        for index, (a, b) in enumerate(zip(fast_grads, ref_grads)):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=f"gradient {index}")


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_a_residual_is_added_in_the_kernel_with_its_gradient_the_identity(shape, threads):
    """`attend(..., residual=r)` (the module's skip connection, summed in the kernel) equals r + the reference's
    output, forward and every gradient, the residual's included; a non-contiguous residual too."""
    values, offsets, logits, gates, bias = case(*shape, spread=2.0, seed=11)
    batch, channels, height, width = shape[0], shape[1], shape[4], shape[5]
    residual = torch.randn(batch, channels, height, width).permute(0, 2, 3, 1)  # (B, H, W, C), strided
    grad = torch.randn(batch, height, width, channels)
    outputs = []
    for fused in (True, False):
        leaf = residual.clone().requires_grad_(True)
        fn = (lambda *a, **k: attend(*a, **k, residual=leaf)) if fused else (lambda *a: leaf + reference_attend(*a))
        out, grads = run(fn, values, offsets, logits, gates, bias, shape[3], grad)
        outputs.append((out, grads + [leaf.grad]))
    (fast, fast_grads), (ref, ref_grads) = outputs
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_grads[-1], grad)  # the residual's gradient: the output's, unchanged
    for index, (a, b) in enumerate(zip(fast_grads, ref_grads)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=f"gradient {index}")


def test_value_gradients_are_computed_only_where_a_value_needs_one(monkeypatch):
    """The kernel's backward is asked for the value gradients only where some value map requires a gradient:
    not where only the residual (or the offsets) does."""
    from search_space.ops import acla_attend
    kernel, asked = acla_attend.load_extension(), []

    class Recording:
        forward = staticmethod(kernel.forward)

        @staticmethod
        def backward(*args):
            asked.append(args[8])  # value_grad
            return kernel.backward(*args)
    monkeypatch.setattr(acla_attend, "load_extension", lambda: Recording)
    values, offsets, logits, gates, bias = case(1, 4, 2, 3, 5, 6, spread=1.0, seed=3)
    residual = torch.randn(1, 5, 6, 4, requires_grad=True)
    offsets.requires_grad_(True)
    attend(values, offsets, logits, gates, 3, bias, residual=residual).sum().backward()
    values[1].requires_grad_(True)
    attend(values, offsets, logits, gates, 3, bias, residual=residual).sum().backward()
    assert asked == [False, True]
    assert values[0].grad is None and values[1].grad is not None and residual.grad is not None


def test_off_key_gradients_skipped_for_a_derived_module():
    values, offsets, logits, gates, bias = case(2, 8, 2, 4, 5, 6, spread=2.0, seed=5)
    grad = torch.randn(2, 5, 6, 8)
    fast, fast_grads = run(attend, values, offsets, logits, gates, bias, 4, grad, off_key_grads=False)
    ref, ref_grads = run(reference_attend, values, offsets, logits, gates, bias, 4, grad)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(fast_grads[:-1], ref_grads[:-1]):  # all but the gates: equal, off keys included
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    on = gates.bool()
    torch.testing.assert_close(fast_grads[-1][on], ref_grads[-1][on], rtol=1e-3, atol=1e-4)  # gates: on keys


def test_float64_matches_naive_loop_and_gradcheck():
    values, offsets, logits, gates, bias = case(1, 3, 2, 2, 4, 5, spread=2.5, seed=3, dtype=torch.float64)
    weights = torch.softmax(logits.masked_fill(gates == 0, float("-inf")), dim=-1).nan_to_num()  # all off: 0
    want = bias.clone()
    for layer, value in enumerate(values):  # independent oracle: the naive bilinear loop
        off = offsets[..., 2 * layer:2 * layer + 2, :].permute(0, 3, 1, 2, 4)
        w = weights[..., 2 * layer:2 * layer + 2].permute(0, 3, 1, 2).unsqueeze(1)
        want = want + (naive_deformable_sample(value, off) * w).sum(2).permute(0, 2, 3, 1)
    torch.testing.assert_close(attend(values, offsets, logits, gates, 2, bias), want, rtol=1e-10, atol=1e-10)
    offsets = offsets.round() + 0.2 + 0.6 * torch.rand_like(offsets)  # away from the bilinear kinks
    gates[0, 0, 0, 0] = 1  # and away from the all-off query, where the weights jump as a gate leaves 0
    leaves = [t.requires_grad_(True) for t in (*values, offsets, logits, gates, bias)]
    assert torch.autograd.gradcheck(lambda a, b, o, lg, g, bi: attend([a, b], o, lg, g, 2, bi), leaves,
                                    eps=1e-6, atol=1e-6)
    residual = torch.randn(1, 4, 5, 3, dtype=torch.float64, requires_grad=True)  # with the skip connection summed in
    assert torch.autograd.gradcheck(lambda a, b, o, lg, g, bi, r: attend([a, b], o, lg, g, 2, bi, residual=r),
                                    leaves + [residual], eps=1e-6, atol=1e-6)


def test_integer_offsets_shift_exactly_in_float32():
    value = torch.arange(2 * 5 * 6, dtype=torch.float32).view(1, 2, 5, 6)
    offsets = torch.zeros(1, 5, 6, 1, 2)
    offsets[..., 0], offsets[..., 1] = 1, -2
    got = attend([value], offsets, torch.zeros(1, 5, 6, 1), None, 1, torch.zeros(2))
    want = torch.zeros_like(value)
    want[:, :, 2:, :5] = value[:, :, :3, 1:]
    assert torch.equal(got, want.permute(0, 2, 3, 1))


def test_top_k_mask_matches_torch_topk():
    scores = torch.randn(2, 5, 6, 3, 9, generator=torch.Generator().manual_seed(7))
    fast = top_k_mask(scores, (1, 4, 9))
    with use_reference():
        ref = top_k_mask(scores, (1, 4, 9))
    assert torch.equal(fast, ref)
    assert fast.sum(-1).mean(dim=(0, 1, 2)).tolist() == [1.0, 4.0, 9.0]
    # positive: of those, only the keys scored above 0 (a derived module's gated-on keys), in the same pass
    positive = top_k_mask(scores, (1, 4, 9), positive=True)
    with use_reference():
        assert torch.equal(positive, top_k_mask(scores, (1, 4, 9), positive=True))
    assert torch.equal(positive, fast * (scores > 0))
    assert 0 < positive.sum() < fast.sum()


@pytest.mark.parametrize("channels", [16, 24, 28, 32, 40, 48, 56, 64, 96, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_every_compiled_channel_count_matches_the_reference(channels, dtype):
    """The kernel compiles its channel loops for these counts (dispatch_channels): each one, forward and gradients,
    against the float64 reference on the same inputs (bf16 within its tolerance)."""
    values, offsets, logits, gates, bias = case(2, channels, 2, 3, 4, 5, spread=2.0, seed=channels, dtype=torch.float64)
    grad = torch.randn(2, 4, 5, channels, dtype=torch.float64, generator=torch.Generator().manual_seed(channels))
    values, grad = [v.to(dtype) for v in values], grad.to(dtype)
    keys32 = [offsets.float(), logits.float(), gates.float(), bias.float()]
    ref, ref_grads = run(reference_attend, [v.double() for v in values], offsets, logits, gates, bias, 3, grad.double())
    out, grads = run(attend, values, *keys32[:3], keys32[3], 3, grad)
    tol = {"rtol": 1.6e-2, "atol": 1e-3} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(out.double(), ref, **tol)
    for index, (a, b) in enumerate(zip(grads, ref_grads)):
        torch.testing.assert_close(a.double(), b, **(tol if index < 2 else {"rtol": 1e-3, "atol": 1e-4}),
                                   msg=f"gradient {index}")
