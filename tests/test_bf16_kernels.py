"""ACLA's kernels in bf16 (mixed precision): bf16 value maps, residual and output gradient; fp32 offsets, logits,
gates and bias; every sum in fp32. Checked against the float64 reference run on the very same bf16-rounded inputs,
within bf16's tolerance where a result is stored in bf16 (the output, the value gradients: one rounding, 2^-8
relative) and within fp32's where it is stored in fp32 (the offset, logit, gate and bias gradients). The Triton
kernel under its interpreter where there is no GPU, as tests/test_triton_kernel.py runs it."""
import os

import pytest
import torch

from search_space.ops import attend, attention_backend, cpu_kernel_available, reference_attend, triton_module, use_backend
from tests.test_cpu_kernel import case, run

BF16 = {"rtol": 1.6e-2, "atol": 1e-3}  # torch.testing's bf16 rtol; atol for sums that cancel to near zero
FP32_SUMS = {"rtol": 1e-3, "atol": 1e-4}
SHAPES = [(2, 5, 2, 3, 6, 7), (1, 64, 3, 9, 9, 8), (3, 1, 1, 1, 4, 5), (2, 32, 2, 4, 5, 6), (1, 33, 2, 2, 1, 6)]


def bf16_case(shape, seed, gated=True):
    """The bf16 inputs and, for the reference, the same numbers in float64."""
    values, offsets, logits, gates, bias = case(*shape, spread=2.5, seed=seed, gated=gated, dtype=torch.float64)
    values = [v.bfloat16() for v in values]
    grad = torch.randn(shape[0], shape[4], shape[5], shape[1], dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed)).bfloat16()
    keys32 = [None if t is None else t.float() for t in (offsets, logits, gates, bias)]
    keys64 = [None if t is None else t.double() for t in keys32]
    return values, keys32, keys64, grad


def check(fn, shape, seed, gated):
    values, keys32, keys64, grad = bf16_case(shape, seed, gated)
    ref, ref_grads = run(reference_attend, [v.double() for v in values], *keys64, shape[3], grad.double())
    out, grads = run(fn, values, *keys32, shape[3], grad)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, **BF16)
    names = [f"value {i}" for i in range(shape[2])] + ["offsets", "logits", "bias"] + (["gates"] if gated else [])
    assert len(grads) == len(names)
    for name, got, want in zip(names, grads, ref_grads):
        assert got.dtype == (torch.bfloat16 if name.startswith("value") else torch.float32), name
        torch.testing.assert_close(got.double(), want, **(BF16 if name.startswith("value") else FP32_SUMS), msg=name)


@pytest.mark.skipif(not cpu_kernel_available(torch.zeros(1)), reason="fast CPU kernel could not be built")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gated", [True, False])
def test_cpu_kernel_in_bf16_matches_the_float64_reference(shape, gated):
    assert attention_backend("cpu", torch.bfloat16) == "cpu-kernel"
    for seed in range(2):
        check(attend, shape, seed, gated)


@pytest.mark.skipif(not cpu_kernel_available(torch.zeros(1)), reason="fast CPU kernel could not be built")
def test_cpu_kernel_in_bf16_adds_the_residual_and_passes_its_gradient():
    shape = (2, 16, 2, 3, 5, 6)
    values, keys32, keys64, grad = bf16_case(shape, seed=3)
    residual = torch.randn(2, 5, 6, 16).bfloat16()
    leaf = residual.clone().requires_grad_(True)
    out, _ = run(lambda *a, **k: attend(*a, **k, residual=leaf), values, *keys32, shape[3], grad)
    offsets, logits, gates, bias = keys64
    ref = residual.double() + reference_attend([v.double() for v in values], offsets, logits, gates, shape[3], bias)
    torch.testing.assert_close(out.double(), ref, **BF16)
    assert leaf.grad.dtype == torch.bfloat16
    torch.testing.assert_close(leaf.grad, grad)


@pytest.mark.skipif(triton_module() is None or (not torch.cuda.is_available()
                                                and os.environ.get("TRITON_INTERPRET") != "1"),
                    reason="Triton is not installed, or there is neither a GPU nor its interpreter")
@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("gated", [True, False])
def test_triton_kernel_in_bf16_matches_the_float64_reference(shape, gated):
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def triton(values, *args, **kwargs):
        with use_backend("triton"):
            return attend([v.to(device) for v in values], *[a.to(device) if torch.is_tensor(a) else a for a in args],
                          **kwargs).cpu()
    check(triton, shape, seed=5, gated=gated)
