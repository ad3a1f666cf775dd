"""ACLA's attention op: the dispatcher, the fused CPU kernel (csrc/acla_aggregate.cpp) and its build.

`attend(values, offsets, logits, gates, keys_per_ref, bias)` computes, per query pixel and in channels-last
layout, the softmax weights of the keys whose gate is on, and the bias plus the weighted sum over all layers and
keys of `values[l]` (the module's projected reference layers) read bilinearly at the keys' offsets.

Three implementations keep that contract, and `attention_backend` picks, in order: the Triton kernels
(triton_attend.py) for CUDA tensors where Triton is installed (the `gpu` extra); the fused C++ kernel for CPU
tensors; the torch/grid_sample reference (reference.py) for anything else. The first call on each device logs
the choice once (logger `acla_orch.attention`), and every trial records it as the MLflow param
`attention_backend`. The CPU kernel (built on first use or by `make install`, with OpenMP threads and this CPU's
vector units) never materialises the (B, C, K, H, W) samples and never reads a gated-off key; its backward
gathers for the offset, logit and gate gradients and scatters into disjoint (image, layer, channel-block) slices
of the value gradients, so it needs no atomics. Tests check every path against the reference, forward and
gradients. `ACLA_DISABLE_CPU_KERNEL=1` and `ACLA_DISABLE_TRITON=1` turn the kernels off
(`ACLA_DISABLE_FAST_SAMPLING`, the CPU kernel's old switch, still works for one release, with a deprecation
warning).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import platform
import time
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


STALE_LOCK_SECONDS = 600  # a build takes about 90 s on 2 cores; a lock this old was left by a killed build


def _clear_stale_lock(lock: Path) -> None:
    """torch's build lock has no timeout: a build killed mid-way (Ctrl-C, OOM) leaves it, and every later build
    waits on it forever. Remove one older than any real build, saying so."""
    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return
    if age > STALE_LOCK_SECONDS:
        warnings.warn(f"acla-orch: removing a stale kernel build lock ({lock}, {age / 60:.0f} min old)")
        lock.unlink(missing_ok=True)


def _build_key(flags: list[str]) -> str:
    """What a build depends on: the kernel source, the flags and torch's version."""
    text = _SOURCE.read_bytes() + repr((flags, torch.__version__)).encode()
    return hashlib.sha256(text).hexdigest()


def _import_built(build_dir: Path, key: str):
    """The extension already built from this very source, imported without torch's build lock; None otherwise.
    Only a real build takes the lock, so a process killed while loading cannot leave one behind for the others
    (and two checkouts of the same source share one build rather than rebuilding each other's)."""
    library, stamp = build_dir / "acla_aggregate.so", build_dir / "build.key"
    try:
        if stamp.read_text() != key or not library.exists():
            return None
    except OSError:
        return None
    spec = importlib.util.spec_from_file_location("acla_aggregate", library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stamp_build(build_dir: Path, key: str) -> None:
    stamp = build_dir / "build.key"
    partial = stamp.with_name(f"build.key.{os.getpid()}")
    partial.write_text(key)
    partial.replace(stamp)


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
            root = Path(os.environ.get("ACLA_EXTENSION_DIR", Path.home() / ".cache" / "acla-orch"))
            build_dir = root / f"torch-{torch.__version__}" / build_tag / "acla_aggregate"
            build_dir.mkdir(parents=True, exist_ok=True)
            key = _build_key(flags)
            built = _import_built(build_dir, key)
            if built is not None:
                return built
            _clear_stale_lock(build_dir / "lock")
            from torch.utils.cpp_extension import load  # only to build: about 0.4 s to import, in every process
            module = load(name="acla_aggregate", sources=[str(_SOURCE)], build_directory=str(build_dir),
                          extra_cflags=["-O3", "-fopenmp", *flags], extra_ldflags=["-fopenmp"], verbose=False)
            _stamp_build(build_dir, key)
            return module
        except Exception as err:  # no compiler, no ninja, a read-only cache: the reference path still works
            error = err
    first_line = (str(error).strip().splitlines() or [""])[0][:200]
    warnings.warn(f"acla-orch: fast CPU attention unavailable, using the grid_sample reference "
                  f"({error.__class__.__name__}: {first_line})")
    return None


class _FusedAttend(torch.autograd.Function):
    @staticmethod
    def forward(ctx, keys, off_key_grads, offsets, logits, gates, bias, residual, *values):
        gates = logits.new_empty(0) if gates is None else gates  # empty: every key on
        skip = logits.new_empty(0) if residual is None else residual  # empty: none
        out, weights = load_extension().forward(list(values), offsets, logits, gates, bias, keys, skip)
        ctx.keys, ctx.off_key_grads = keys, off_key_grads
        ctx.save_for_backward(offsets, logits, gates, bias, weights, *values)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        offsets, logits, gates, bias, weights, *values = ctx.saved_tensors
        value_grad = any(ctx.needs_input_grad[7:])  # the inputs after keys .. bias and the residual
        grad_out = grad_out.to(values[0].dtype)  # the kernel reads it as it reads the maps
        *grad_values, grad_offsets, grad_logits, grad_gates, grad_bias = load_extension().backward(
            values, offsets, logits, gates, bias, weights, ctx.keys, grad_out, value_grad, ctx.off_key_grads)
        grad_residual = grad_out if ctx.needs_input_grad[6] else None  # the skip connection's: the identity
        return (None, None, grad_offsets, grad_logits, grad_gates if gates.numel() else None, grad_bias, grad_residual,
                *grad_values)


BACKENDS = ("triton", "cpu-kernel", "reference")
_forced_backend: str | None = None
_logged: set[tuple[str, str]] = set()
log = logging.getLogger("acla_orch.attention")


@functools.lru_cache(maxsize=1)
def triton_module():
    """search_space.ops.triton_attend, or None where Triton is not installed (the `gpu` extra brings it) or
    `ACLA_DISABLE_TRITON` is set. Imported on first use, so `TRITON_INTERPRET` set before then takes effect."""
    if os.environ.get("ACLA_DISABLE_TRITON") or importlib.util.find_spec("triton") is None:
        return None
    from . import triton_attend
    return triton_attend


@contextlib.contextmanager
def use_backend(name: str):
    """Run `name` inside this block whatever the tensors' device (benchmarks compare paths in one run; the
    Triton tests run it on CPU tensors under TRITON_INTERPRET=1)."""
    global _forced_backend
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; expected one of {', '.join(BACKENDS)}")
    previous, _forced_backend = _forced_backend, name
    try:
        yield
    finally:
        _forced_backend = previous


def use_reference():
    """Run the grid_sample reference inside this block."""
    return use_backend("reference")


def attention_backend(device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
    """Which implementation `attend` runs for value maps of `dtype` on `device`: the Triton kernel for float32 or
    bfloat16 CUDA tensors, the fused C++ kernel for float32, float64 or bfloat16 CPU tensors, the grid_sample
    reference otherwise (or where the first two cannot be loaded). A `use_backend` block overrides the choice."""
    if _forced_backend is not None:
        return _forced_backend
    kind = torch.device(device).type
    if kind == "cuda" and dtype in (torch.float32, torch.bfloat16) and triton_module() is not None:
        return "triton"
    if kind == "cpu" and dtype in (torch.float32, torch.float64, torch.bfloat16) and load_extension() is not None:
        return "cpu-kernel"
    return "reference"


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the keys' tensors (offsets, logits, gates, bias) and of every sum for value maps of `dtype`:
    float32 for half-precision maps (mixed precision), the maps' own otherwise."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def cpu_kernel_available(tensor: torch.Tensor) -> bool:
    return attention_backend(tensor.device, tensor.dtype) == "cpu-kernel"


def attend(values: Sequence[torch.Tensor], offsets: torch.Tensor, logits: torch.Tensor, gates: torch.Tensor | None,
           keys_per_ref: int, bias: torch.Tensor, off_key_grads: bool = True,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """ACLA's attention: softmax weights over the gated-on keys, then bias + the weighted bilinear reads (+ the
    residual, where given).

    values: L maps (B, C, H, W); offsets (B, H, W, L*K, 2) in pixels (dx, dy), layer by layer; logits and gates
    (B, H, W, L*K), gates 0/1 or None (all on); bias (C); residual (B, H, W, C) or None. Returns (B, H, W, C).
    `off_key_grads=False` skips the gradients of gated-off keys (a derived top-k module, whose gate gradient is
    zero there), so that they cost nothing in the backward either. The CPU kernel starts each output row from
    its residual row (a module's skip connection then costs no pass of its own); the others add it after.
    """
    keys = len(values) * keys_per_ref
    if offsets.shape[3:] != (keys, 2) or logits.shape[3] != keys or (gates is not None and gates.shape != logits.shape):
        raise ValueError(f"{len(values)} reference layers x {keys_per_ref} keys: offsets {tuple(offsets.shape)}, "
                         f"logits {tuple(logits.shape)} must hold {keys} keys in dim 3")
    dtype, device = values[0].dtype, values[0].device
    # Mixed precision (values in bf16 under autocast): where a key samples and how much it weighs stay in fp32,
    # and the output comes back in the maps' dtype, as the residual stream it joins.
    keys_dtype = accumulation_dtype(dtype)
    offsets, logits, bias = offsets.to(keys_dtype), logits.to(keys_dtype), bias.to(keys_dtype)
    gates = None if gates is None else gates.to(keys_dtype)
    residual = None if residual is None else residual.to(dtype)
    values = [value.to(dtype) for value in values]
    backend = attention_backend(device, dtype)
    if not all(t.device == device for t in [offsets, logits, bias, *values]):
        backend = "reference"
    if (backend, device.type) not in _logged:
        _logged.add((backend, device.type))
        log.info("ACLA attention on %s tensors: %s", device.type, backend)
    if backend in ("triton", "reference"):
        out = (triton_module().triton_attend(values, offsets, logits, gates, keys_per_ref, bias, off_key_grads)
               if backend == "triton" else
               reference_attend([v.to(keys_dtype) for v in values], offsets, logits, gates, keys_per_ref, bias))
        out = out.to(dtype)
        return out if residual is None else residual + out
    maps = [value.permute(0, 2, 3, 1).contiguous() for value in values]  # free for channels-last maps
    return _FusedAttend.apply(keys_per_ref, off_key_grads, offsets.contiguous(), logits.contiguous(),
                              None if gates is None else gates.contiguous(), bias.contiguous(),
                              None if residual is None else residual.contiguous(), *maps)


def top_k_mask(scores: torch.Tensor, counts: Sequence[int], positive: bool = False) -> torch.Tensor:
    """scores (B, H, W, L, K) -> 0/1 mask keeping each query's counts[l] highest-scored keys of layer l (with
    `positive`, only those of them whose score is above 0: a derived module's gated-on keys, in one pass)."""
    counts = [int(c) for c in counts]
    scores = scores.to(accumulation_dtype(scores.dtype))  # ranked in fp32 under mixed precision
    if cpu_kernel_available(scores):
        return load_extension().top_k_mask(scores.detach().contiguous(), counts, positive)
    mask = torch.zeros_like(scores)
    for layer, count in enumerate(counts):
        mask[..., layer, :].scatter_(-1, scores[..., layer, :].topk(count, dim=-1).indices, 1.0)
    return mask * (scores.detach() > 0).to(scores.dtype) if positive else mask


