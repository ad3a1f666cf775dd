"""The Triton kernels (search_space/ops/triton_attend.py) equal the torch/grid_sample reference, forward and every
gradient, within float32 tolerance: on CUDA tensors where there is a GPU, and on CPU tensors through Triton's
interpreter (TRITON_INTERPRET=1, set in conftest.py) where there is not. And the dispatcher picks Triton for CUDA,
the C++ kernel for the CPU, the reference otherwise, visibly."""
import logging
import os

import pytest
import torch

from search_space.acla import ACLA
from search_space.ops import acla_attend, attend, attention_backend, reference_attend, triton_module, use_backend
from tests.test_cpu_kernel import case, run

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    triton_module() is None or (DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1"),
    reason="Triton is not installed, or there is neither a GPU nor its interpreter")



def random_shapes(count: int, seed: int) -> list[tuple[int, ...]]:
    gen = torch.Generator().manual_seed(seed)
    bounds = ((1, 3), (1, 40), (1, 3), (1, 6), (1, 7), (1, 7))
    return [tuple(int(torch.randint(lo, hi + 1, (1,), generator=gen)) for lo, hi in bounds) for _ in range(count)]


# (batch, channels, layers, keys, height, width): odd sizes, one channel, K=1, one-row and one-column images,
# and seeded random shapes.
SHAPES = [(2, 5, 2, 3, 6, 7), (1, 64, 2, 9, 5, 6), (3, 1, 1, 1, 4, 5), (1, 33, 2, 2, 1, 6),
          (2, 16, 1, 4, 5, 1)] + random_shapes(3, seed=2026)


def on_device(tensors):
    return [None if t is None else t.to(DEVICE) for t in tensors]


def triton(*args, **kwargs):
    with use_backend("triton"):
        return attend(*args, **kwargs)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gated", [True, False])
def test_forward_and_every_gradient_match_reference(shape, gated):
    """Offsets up to 3 pixels leave these small images; the gated cases hold a query with every key off."""
    values, offsets, logits, gates, bias = case(*shape, spread=3.0, seed=sum(shape), gated=gated)
    grad = torch.randn(shape[0], shape[4], shape[5], shape[1], generator=torch.Generator().manual_seed(1))
    ref, ref_grads = run(reference_attend, values, offsets, logits, gates, bias, shape[3], grad)
    values, (offsets, logits, gates, bias, grad) = on_device(values), on_device([offsets, logits, gates, bias, grad])
    out, grads = run(triton, values, offsets, logits, gates, bias, shape[3], grad)
    assert out.device.type == DEVICE
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-5)
    names = [f"value {i}" for i in range(shape[2])] + ["offsets", "logits", "bias"] + (["gates"] if gated else [])
    assert len(grads) == len(ref_grads) == len(names)
    for name, got, want in zip(names, grads, ref_grads):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-4, msg=name)


def test_channels_last_and_contiguous_values_agree():
    values, offsets, logits, gates, bias = case(2, 8, 2, 3, 5, 6, spread=2.0, seed=11)
    grad = torch.randn(2, 5, 6, 8)
    results = []
    for layout in (torch.channels_last, torch.contiguous_format):
        maps = [v.to(DEVICE).contiguous(memory_format=layout) for v in values]
        results.append(run(triton, maps, *on_device([offsets, logits, gates, bias]), 3, grad.to(DEVICE)))
    (a, a_grads), (b, b_grads) = results
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for x, y in zip(a_grads, b_grads):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_derived_module_skips_off_keys_and_matches_on_keys():
    """off_key_grads=False (a top-k module): every gradient but the gates' equals the reference; the gates' on
    the kept keys."""
    values, offsets, logits, gates, bias = case(2, 8, 2, 4, 5, 6, spread=2.0, seed=5)
    grad = torch.randn(2, 5, 6, 8)
    ref, ref_grads = run(reference_attend, values, offsets, logits, gates, bias, 4, grad)
    out, grads = run(triton, on_device(values), *on_device([offsets, logits, gates, bias]), 4, grad.to(DEVICE),
                     off_key_grads=False)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-5)
    for got, want in zip(grads[:-1], ref_grads[:-1]):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-4)
    on = gates.bool()
    torch.testing.assert_close(grads[-1].cpu()[on], ref_grads[-1][on], rtol=1e-3, atol=1e-4)


def test_value_gradient_is_deterministic():
    """The value gradient is gathered per pixel after a stable sort, with no atomics: bitwise equal run to run,
    with every key converging on one pixel (the case atomics contend on most)."""
    values, offsets, logits, gates, bias = case(1, 4, 2, 4, 6, 6, spread=0.5, seed=2, gated=False)
    rows, cols = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij")
    offsets[..., 0] = (2.3 - cols)[None, :, :, None]
    offsets[..., 1] = (3.6 - rows)[None, :, :, None]
    grad = torch.randn(1, 6, 6, 4)
    first = run(triton, on_device(values), *on_device([offsets, logits, None, bias]), 4, grad.to(DEVICE))[1]
    second = run(triton, on_device(values), *on_device([offsets, logits, None, bias]), 4, grad.to(DEVICE))[1]
    ref_grads = run(reference_attend, values, offsets, logits, None, bias, 4, grad)[1]
    for x, y, want in zip(first, second, ref_grads):
        assert torch.equal(x, y)
        torch.testing.assert_close(x.cpu(), want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("active_keys", [None, (2, 3)])
def test_acla_module_runs_on_triton(active_keys):
    """The whole module (value projections fused with the output, hard-concrete or top-k gates) through Triton
    equals it through the reference."""
    torch.manual_seed(0)
    module = ACLA(6, 2, 3, adaptive=True, active_keys=active_keys).eval()
    torch.nn.init.normal_(module.fuse.weight, std=0.1)
    torch.nn.init.normal_(module.offset_proj.weight, std=0.3)
    query, refs = torch.randn(2, 6, 5, 4), [torch.randn(2, 6, 5, 4) for _ in range(2)]
    with use_backend("reference"):
        want = module(query, refs)
        want.square().sum().backward()
    want_grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
    module.zero_grad()
    module.to(DEVICE)
    with use_backend("triton"):
        got = module(query.to(DEVICE), [r.to(DEVICE) for r in refs])
        got.square().sum().backward()
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5)
    for x, y in zip([p.grad for p in module.parameters() if p.grad is not None], want_grads):
        torch.testing.assert_close(x.cpu(), y, rtol=1e-3, atol=1e-4)


def test_dispatcher_order(monkeypatch):
    assert attention_backend("cuda", torch.float32) == "triton"
    assert attention_backend("cuda", torch.float64) == "reference"  # the Triton kernels are float32
    assert attention_backend("cpu", torch.float32) == ("cpu-kernel" if acla_attend.load_extension() else "reference")
    assert attention_backend("mps", torch.float32) == "reference"
    with use_backend("reference"):
        assert attention_backend("cuda") == "reference"
    with pytest.raises(ValueError, match="unknown attention backend"):
        use_backend("cudnn").__enter__()
    monkeypatch.setenv("ACLA_DISABLE_TRITON", "1")
    acla_attend.triton_module.cache_clear()
    try:
        assert attention_backend("cuda", torch.float32) == "reference"
    finally:
        monkeypatch.delenv("ACLA_DISABLE_TRITON")
        acla_attend.triton_module.cache_clear()
    assert triton_module() is not None


def test_choice_is_logged_once_per_backend_and_device(caplog, monkeypatch):
    monkeypatch.setattr(acla_attend, "_logged", set())
    values, offsets, logits, gates, bias = case(1, 2, 1, 2, 3, 3, spread=1.0, seed=0)
    with caplog.at_level(logging.INFO, logger="acla_orch.attention"):
        for _ in range(2):
            triton(on_device(values), *on_device([offsets, logits, gates]), 2, bias.to(DEVICE))
            with use_backend("reference"):
                attend(values, offsets, logits, gates, 2, bias)
    lines = [r.getMessage() for r in caplog.records if r.name == "acla_orch.attention"]
    assert lines == [f"ACLA attention on {DEVICE} tensors: triton", "ACLA attention on cpu tensors: reference"]
