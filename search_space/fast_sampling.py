"""ACLA's attention core, fused on the CPU.

`attend(refs, offsets, logits, gates, keys_per_ref)` computes, per query pixel and in channels-last layout, the
softmax weights of the keys whose gate is on and, for every reference layer l, the weighted sum of its keys read
bilinearly from `refs[l]` (C channels); then one "mass" column per layer: the same weighted sum read from a map
of ones, i.e. how much bilinear weight fell inside the image. With it a 1x1 projection with bias commutes exactly
with the aggregation (acla.py projects after aggregating). The fused kernel (csrc/acla_aggregate.cpp, built on
first use or by `make install`, with OpenMP threads and this CPU's vector units) never materialises the
(B, C, K, H, W) samples and never reads a gated-off key; its backward gathers for the offset, logit and gate
gradients and scatters into disjoint (image, layer, channel-block) slices of the value gradients, so it needs no
atomics. Where it cannot be built or the tensors are not float CPU tensors, `reference_attend` (torch ops and
grid_sample) runs instead; tests check that the two agree in forward and gradients.
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

from .sampling import deformable_sample

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
    """The compiled extension, or None (with a warning) where it cannot be built."""
    if os.environ.get("ACLA_DISABLE_FAST_SAMPLING"):
        return None
    try:
        from torch.utils.cpp_extension import load
        tag, arch_flags = _cpu_tag()
        root = Path(os.environ.get("ACLA_EXTENSION_DIR", Path.home() / ".cache" / "acla-orch"))
        build_dir = root / f"torch-{torch.__version__}" / tag / "acla_aggregate"
        build_dir.mkdir(parents=True, exist_ok=True)
        return load(name="acla_aggregate", sources=[str(_SOURCE)], build_directory=str(build_dir),
                    extra_cflags=["-O3", "-fopenmp", *arch_flags], extra_ldflags=["-fopenmp"],
                    verbose=False)
    except Exception as err:  # no compiler, no ninja, a read-only cache: the reference path still works
        warnings.warn(f"acla-orch: fast CPU sampling unavailable, using grid_sample ({err.__class__.__name__}: {err})")
        return None


def masked_softmax(logits: torch.Tensor, gates: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Softmax of `logits` over `dim` in which keys with gate 0 take no part.

    `gates` may carry straight-through gradients: its forward value must be 0 or 1. With every gate off the
    weights are 0 and the denominator falls back to the unmasked sum, so the gate gradients stay finite.
    """
    if gates is None:
        return torch.softmax(logits, dim=dim)
    shifted = torch.exp(logits - logits.amax(dim=dim, keepdim=True).detach())  # any shift is exact for a softmax
    on = (shifted * gates).sum(dim=dim, keepdim=True)
    denominator = torch.where(on > 0, on, shifted.sum(dim=dim, keepdim=True))
    return shifted * gates / denominator


class _FusedAttend(torch.autograd.Function):
    @staticmethod
    def forward(ctx, keys, off_key_grads, offsets, logits, gates, *values):
        gates = logits.new_empty(0) if gates is None else gates  # empty: every key on
        out, weights = load_extension().forward(list(values), offsets, logits, gates, keys)
        ctx.keys, ctx.off_key_grads = keys, off_key_grads
        ctx.save_for_backward(offsets, logits, gates, weights, *values)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        offsets, logits, gates, weights, *values = ctx.saved_tensors
        value_grad = any(ctx.needs_input_grad[5:])
        *grad_values, grad_offsets, grad_logits, grad_gates = load_extension().backward(
            values, offsets, logits, gates, weights, ctx.keys, grad_out, value_grad, ctx.off_key_grads)
        return (None, None, grad_offsets, grad_logits, grad_gates if gates.numel() else None, *grad_values)


def reference_aggregate_layers(refs: Sequence[torch.Tensor], offsets: torch.Tensor, weights: torch.Tensor,
                               keys: Sequence[int]) -> torch.Tensor:
    """Per layer, the weighted sum of its keys read with grid_sample (`deformable_sample`), then the masses."""
    parts, masses = [], []
    for ref, offset, weight in zip(refs, offsets.split(list(keys), dim=3), weights.split(list(keys), dim=3)):
        with_ones = torch.cat((ref, torch.ones_like(ref[:, :1])), dim=1)  # the last channel samples the mass
        sampled = deformable_sample(with_ones, offset.permute(0, 3, 1, 2, 4))  # (B, C+1, k, H, W)
        summed = (sampled * weight.permute(0, 3, 1, 2).unsqueeze(1)).sum(dim=2)  # (B, C+1, H, W)
        parts.append(summed[:, :-1])
        masses.append(summed[:, -1:])
    return torch.cat(parts + masses, dim=1).permute(0, 2, 3, 1)


def reference_attend(refs: Sequence[torch.Tensor], offsets: torch.Tensor, logits: torch.Tensor,
                     gates: torch.Tensor | None, keys_per_ref: int) -> torch.Tensor:
    """`attend` through torch ops and grid_sample, on any device."""
    weights = masked_softmax(logits, gates)
    return reference_aggregate_layers(refs, offsets, weights, [keys_per_ref] * len(refs))


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
    return (not _forced_reference and tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64)
            and load_extension() is not None)


def attend(refs: Sequence[torch.Tensor], offsets: torch.Tensor, logits: torch.Tensor, gates: torch.Tensor | None,
           keys_per_ref: int, off_key_grads: bool = True) -> torch.Tensor:
    """ACLA's attention core: softmax weights over the gated-on keys, then `reference_aggregate_layers`.

    refs: L maps (B, C, H, W); offsets (B, H, W, L*K, 2) in pixels (dx, dy), layer by layer; logits and gates
    (B, H, W, L*K), gates 0/1 or None (all on). Returns (B, H, W, L*C + L): L blocks of C channels, then L masses.
    `off_key_grads=False` skips the gradients of gated-off keys (a derived top-k module, whose gate gradient is
    zero there), so that they cost nothing in the backward either.
    """
    keys = len(refs) * keys_per_ref
    if offsets.shape[3:] != (keys, 2) or logits.shape[3] != keys or (gates is not None and gates.shape != logits.shape):
        raise ValueError(f"{len(refs)} reference layers x {keys_per_ref} keys: offsets {tuple(offsets.shape)}, "
                         f"logits {tuple(logits.shape)} must hold {keys} keys in dim 3")
    dtype = refs[0].dtype
    tensors = [offsets, logits] + ([] if gates is None else [gates])
    if not (fast_path_available(refs[0]) and all(t.dtype == dtype for t in tensors)):
        return reference_attend(refs, offsets, logits, gates, keys_per_ref)
    values = [ref.permute(0, 2, 3, 1).contiguous() for ref in refs]  # free for channels-last maps
    return _FusedAttend.apply(keys_per_ref, off_key_grads, offsets.contiguous(), logits.contiguous(),
                              None if gates is None else gates.contiguous(), *values)


def top_k_mask(scores: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """scores (B, H, W, L, K) -> 0/1 mask keeping each query's counts[l] highest-scored keys of layer l."""
    counts = [int(c) for c in counts]
    if fast_path_available(scores):
        return load_extension().top_k_mask(scores.detach().contiguous(), counts)
    mask = torch.zeros_like(scores)
    for layer, count in enumerate(counts):
        mask[..., layer, :].scatter_(-1, scores[..., layer, :].topk(count, dim=-1).indices, 1.0)
    return mask


if __name__ == "__main__":  # `python -m search_space.fast_sampling`: build now (the install step runs this)
    print("fast CPU sampling:", "built" if load_extension() is not None else "unavailable (reference path)")
