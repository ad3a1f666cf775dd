"""Mixed precision: the float format a net trains and runs in, and the autocast block that applies it.

`bf16` is torch's automatic mixed precision (`torch.autocast`) with bfloat16: convolutions and matrix products
run in bf16 (oneDNN's AVX512-BF16/AMX kernels on a CPU, tensor cores on a GPU), while the master weights, the
optimizer's state, the loss, the global skip connection that adds the input back (search_space/backbone.py) and
the softmax over ACLA's keys (search_space/ops) stay in fp32. bfloat16 keeps fp32's exponent range, so no loss
scaling is needed (Kalamkar et al., "A Study of BFLOAT16 for Deep Learning Training", arXiv 1905.12322).
Weights are never converted: checkpoints and registered models are fp32 and load anywhere.

`auto` picks bf16 where the device runs it fast (a CUDA device with bf16 support; a CPU with AVX512-BF16 or AMX)
and fp32 elsewhere. bf16 on a CPU without either still runs, through slow emulation: `slow_bf16_warning` says so.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo's names for the instructions oneDNN uses


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """Which of CPU_BF16_FLAGS this CPU has (none where /proc/cpuinfo cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    flags = set(line.split(":", 1)[-1].split())
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether `device` has bf16 arithmetic in hardware."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and bool(cpu_bf16_flags())


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """`fp32` or `bf16` for `requested` (one of PRECISIONS) on `device`; ValueError for anything else."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; expected one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return requested


def slow_bf16_warning(precision: str, device: torch.device | str) -> str | None:
    """One line for a user who asked for bf16 on a device without bf16 hardware; None otherwise."""
    device = torch.device(device)
    if precision != "bf16" or bf16_is_fast(device):
        return None
    where = "this GPU" if device.type == "cuda" else "this CPU (no AVX512-BF16 or AMX)"
    return (f"bf16 is slow on {where}: it is emulated, and trains slower than fp32; going on in bf16 "
            f"(--precision fp32 or auto would be faster)")


def autocast(precision: str, device: torch.device | str):
    """The block that runs a forward pass in `precision` (fp32: a no-op)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision {precision!r} is not resolved; expected fp32 or bf16")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
