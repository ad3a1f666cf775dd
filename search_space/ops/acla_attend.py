"""ACLA's attention op: the fused CPU kernel (csrc/acla_aggregate.cpp), its build, and the dispatcher.

`attend(values, offsets, logits, gates, keys_per_ref, bias)` computes, per query pixel and in channels-last
layout, the softmax weights of the keys whose gate is on, and the bias plus the weighted sum over all layers and
keys of `values[l]` (the module's projected reference layers) read bilinearly at the keys' offsets. The fused
kernel (csrc/acla_aggregate.cpp, built on first use or by `make install`, with OpenMP threads and this CPU's
vector units) never materialises the (B, C, K, H, W) samples and never reads a gated-off key; its backward
gathers for the offset, logit and gate gradients and scatters into disjoint (image, layer, channel-block)
slices of the value gradients, so it needs no atomics. Where it cannot be built or the tensors are not float
CPU tensors, `reference_attend` (torch ops and grid_sample, ops/reference.py) runs instead; tests check that the
two agree in forward and gradients. `ACLA_DISABLE_CPU_KERNEL=1` forces the reference
(`ACLA_DISABLE_FAST_SAMPLING`, its old name, still works for one release, with a deprecation warning).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import warnings
from pathlib import Path
from typing import Sequence

import torch

from .reference import reference_attend

_SOURCE = Path(__file__).parent / "csrc" / "acla_aggregate.cpp"


def _cpu_tag() -> tuple[str, list[str]]:
    """A build-cache tag for this CPU and the flags to build for it (-march=native on x86-64 Linux)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.machine() or "cpu", []
    if platform.machine() not in ("x86_64", "AMD64"):
        return platform.machine(), []
    # Built for this CPU's vector units; a cache shared with another CPU model gets its own build. 256-bit
    # vectors: the backward's gathers and scatters ran 17% faster than with 512-bit ones on the 2-core AMD EPYC.
    return "x86_64-" + hashlib.sha1(flags.encode()).hexdigest()[:10], ["-march=native", "-mprefer-vector-width=256"]


@functools.lru_cache(maxsize=1)
def load_extension():
    """The compiled extension, or None (with a one-line warning) where it cannot be built.

    Built for this CPU first; if the compiler rejects that, once more with portable flags.
    """
    if os.environ.get("ACLA_DISABLE_CPU_KERNEL"):
        return None
    if os.environ.get("ACLA_DISABLE_FAST_SAMPLING"):
        warnings.warn("acla-orch: ACLA_DISABLE_FAST_SAMPLING is deprecated and goes in the next release; "
                      "set ACLA_DISABLE_CPU_KERNEL=1 instead", DeprecationWarning, stacklevel=2)
        return None
    tag, arch_flags = _cpu_tag()
    attempts = [(tag, arch_flags)] + ([(f"{platform.machine()}-portable", [])] if arch_flags else [])
    error: Exception | None = None
    for build_tag, flags in attempts:
        try:
            from torch.utils.cpp_extension import load
            root = Path(os.environ.get("ACLA_EXTENSION_DIR", Path.home() / ".cache" / "acla-orch"))
            build_dir = root / f"torch-{torch.__version__}" / build_tag / "acla_aggregate"
            build_dir.mkdir(parents=True, exist_ok=True)
            return load(name="acla_aggregate", sources=[str(_SOURCE)], build_directory=str(build_dir),
                        extra_cflags=["-O3", "-fopenmp", *flags], extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as err:  # no compiler, no ninja, a read-only cache: the reference path still works
            error = err
    first_line = (str(error).strip().splitlines() or [""])[0][:200]
    warnings.warn(f"acla-orch: fast CPU attention unavailable, using the grid_sample reference "
                  f"({error.__class__.__name__}: {first_line})")
    return None


class _FusedAttend(torch.autograd.Function):
    @staticmethod
    def forward(ctx, keys, off_key_grads, offsets, logits, gates, bias, *values):
        gates = logits.new_empty(0) if gates is None else gates  # empty: every key on
        out, weights = load_extension().forward(list(values), offsets, logits, gates, bias, keys)
        ctx.keys, ctx.off_key_grads = keys, off_key_grads
        ctx.save_for_backward(offsets, logits, gates, bias, weights, *values)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        offsets, logits, gates, bias, weights, *values = ctx.saved_tensors
        value_grad = any(ctx.needs_input_grad[6:])
        *grad_values, grad_offsets, grad_logits, grad_gates, grad_bias = load_extension().backward(
            values, offsets, logits, gates, bias, weights, ctx.keys, grad_out, value_grad, ctx.off_key_grads)
        return (None, None, grad_offsets, grad_logits, grad_gates if gates.numel() else None, grad_bias, *grad_values)


_forced_reference = False


@contextlib.contextmanager
def use_reference():
    """Run the grid_sample reference inside this block (benchmarks compare both paths in one run)."""
    global _forced_reference
    previous, _forced_reference = _forced_reference, True
    try:
        yield
    finally:
        _forced_reference = previous


def cpu_kernel_available(tensor: torch.Tensor) -> bool:
    return (not _forced_reference and tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64)
            and load_extension() is not None)


def attend(values: Sequence[torch.Tensor], offsets: torch.Tensor, logits: torch.Tensor, gates: torch.Tensor | None,
           keys_per_ref: int, bias: torch.Tensor, off_key_grads: bool = True) -> torch.Tensor:
    """ACLA's attention: softmax weights over the gated-on keys, then bias + the weighted bilinear reads.

    values: L maps (B, C, H, W); offsets (B, H, W, L*K, 2) in pixels (dx, dy), layer by layer; logits and gates
    (B, H, W, L*K), gates 0/1 or None (all on); bias (C). Returns (B, H, W, C). `off_key_grads=False` skips the
    gradients of gated-off keys (a derived top-k module, whose gate gradient is zero there), so that they cost
    nothing in the backward either.
    """
    keys = len(values) * keys_per_ref
    if offsets.shape[3:] != (keys, 2) or logits.shape[3] != keys or (gates is not None and gates.shape != logits.shape):
        raise ValueError(f"{len(values)} reference layers x {keys_per_ref} keys: offsets {tuple(offsets.shape)}, "
                         f"logits {tuple(logits.shape)} must hold {keys} keys in dim 3")
    dtype = values[0].dtype
    tensors = [offsets, logits, bias] + ([] if gates is None else [gates])
    if not (cpu_kernel_available(values[0]) and all(t.dtype == dtype and t.device == values[0].device for t in tensors)):
        return reference_attend(values, offsets, logits, gates, keys_per_ref, bias)
    maps = [value.permute(0, 2, 3, 1).contiguous() for value in values]  # free for channels-last maps
    return _FusedAttend.apply(keys_per_ref, off_key_grads, offsets.contiguous(), logits.contiguous(),
                              None if gates is None else gates.contiguous(), bias.contiguous(), *maps)


def top_k_mask(scores: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """scores (B, H, W, L, K) -> 0/1 mask keeping each query's counts[l] highest-scored keys of layer l."""
    counts = [int(c) for c in counts]
    if cpu_kernel_available(scores):
        return load_extension().top_k_mask(scores.detach().contiguous(), counts)
    mask = torch.zeros_like(scores)
    for layer, count in enumerate(counts):
        mask[..., layer, :].scatter_(-1, scores[..., layer, :].topk(count, dim=-1).indices, 1.0)
    return mask


