"""Fast deformable aggregation: a fused CPU kernel (C++, built on first use or by `make install`) that
computes sum_k w_k * bilinear(value, p + offset_k) without materialising the (B, C, K, H, W) samples.

It is exactly the reference `deformable_sample` followed by the weighted sum over keys (tests/test_fast_sampling.py
checks forward and gradients), in a channels-last layout; its backward gathers for the offset and weight
gradients and scatters into disjoint (batch, channel-block) slices for the value gradient, so it needs no
atomics. Where the extension cannot be built or the tensors are not on the CPU, `aggregate_keys` falls back
to the reference implementation.
"""
from __future__ import annotations

import contextlib
import functools
import os
import warnings
from pathlib import Path

import torch

from .sampling import deformable_sample

_SOURCE = Path(__file__).parent / "csrc" / "deform_aggregate.cpp"


@functools.lru_cache(maxsize=1)
def load_extension():
    """The compiled extension, or None (with a warning) where it cannot be built."""
    if os.environ.get("ACLA_DISABLE_FAST_SAMPLING"):
        return None
    try:
        from torch.utils.cpp_extension import load
        build_dir = Path(os.environ.get("ACLA_EXTENSION_DIR", Path.home() / ".cache" / "acla-orch" /
                                        f"torch-{torch.__version__}")) / "deform_aggregate"
        build_dir.mkdir(parents=True, exist_ok=True)
        return load(name="acla_deform_aggregate", sources=[str(_SOURCE)], build_directory=str(build_dir),
                    extra_cflags=["-O3", "-fopenmp-simd"], verbose=False)
    except Exception as err:  # no compiler, no ninja, a read-only cache: the reference path still works
        warnings.warn(f"acla-orch: fast CPU sampling unavailable, using grid_sample ({err.__class__.__name__}: {err})")
        return None


class _FusedAggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, offsets, weights):  # (B,H,W,C), (B,H,W,K,2), (B,H,W,K)
        extension = load_extension()
        ctx.save_for_backward(value, offsets, weights)
        return extension.forward(value, offsets, weights)

    @staticmethod
    def backward(ctx, grad_out):
        value, offsets, weights = ctx.saved_tensors
        grad_value, grad_offsets, grad_weights = load_extension().backward(value, offsets, weights, grad_out)
        return grad_value, grad_offsets, grad_weights


def reference_aggregate_keys(value: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """value (B,C,H,W), offsets (B,K,H,W,2), weights (B,K,H,W) -> (B,C,H,W) through grid_sample."""
    return (deformable_sample(value, offsets) * weights.unsqueeze(1)).sum(dim=2)


_forced_reference = False


@contextlib.contextmanager
def reference_sampling():
    """Run the grid_sample reference inside this block (benchmarks compare both paths in one run)."""
    global _forced_reference
    previous, _forced_reference = _forced_reference, True
    try:
        yield
    finally:
        _forced_reference = previous


def fast_path_available(tensor: torch.Tensor) -> bool:
    return not _forced_reference and tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64) and load_extension() is not None


def aggregate_keys(value: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k weights[:, k] * deformable_sample(value, offsets)[:, :, k], fused where possible."""
    if not fast_path_available(value):
        return reference_aggregate_keys(value, offsets, weights)
    value_nhwc = value.permute(0, 2, 3, 1).contiguous()  # free when value is already channels-last
    offsets_nhwk = offsets.permute(0, 2, 3, 1, 4).contiguous()  # (B, H, W, K, 2)
    weights_nhwk = weights.permute(0, 2, 3, 1).contiguous()  # (B, H, W, K)
    out = _FusedAggregate.apply(value_nhwc, offsets_nhwk.to(value.dtype), weights_nhwk.to(value.dtype))
    return out.permute(0, 3, 1, 2)  # (B, C, H, W) view in channels-last memory


if __name__ == "__main__":  # `python -m search_space.fast_sampling`: build now (the install step runs this)
    print("fast CPU sampling:", "built" if load_extension() is not None else "unavailable (reference path)")
