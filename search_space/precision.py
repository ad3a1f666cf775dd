"""Mixed precision: the float format a net trains and runs in, and the autocast block that applies it.

`bf16` is torch's automatic mixed precision (`torch.autocast`) with bfloat16: convolutions and matrix products
run in bf16 (oneDNN's AVX512-BF16/AMX kernels on a CPU, tensor cores on a GPU), while the master weights, the
optimizer's state, the loss, the global skip connection that adds the input back (search_space/backbone.py) and
the softmax over ACLA's keys (search_space/ops) stay in fp32. bfloat16 keeps fp32's exponent range, so no loss
scaling is needed (Kalamkar et al., "A Study of BFLOAT16 for Deep Learning Training", arXiv 1905.12322).
Weights are never converted: checkpoints and registered models are fp32 and load anywhere.

`auto` picks bf16 where the device runs it fast (a CUDA device with bf16 support; a CPU with AVX512-BF16 or AMX)
and fp32 elsewhere. bf16 on a CPU without either still runs, through slow emulation: `slow_bf16_warning` says so.
The CLI resolves --precision before anything slow: on a CPU this module decides without importing torch.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

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


def device_type(device) -> str:
    """"cpu", "cuda", ... of a torch.device or a device name ("cuda:1")."""
    return getattr(device, "type", None) or str(device).split(":")[0]


def local_device_type() -> str:
    """The type of workers.device.training_device() on this machine, without importing torch where no NVIDIA
    driver is present (Linux: no /dev/nvidiactl, so torch could not see a GPU either)."""
    name = os.environ.get("ACLA_DEVICE", "").strip()
    if name:
        return device_type(name)
    if sys.platform.startswith("linux") and not Path("/dev/nvidiactl").exists():
        return "cpu"
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_is_fast(device) -> bool:
    """Whether `device` (a torch.device or its name) has bf16 arithmetic in hardware."""
    kind = device_type(device)
    if kind == "cuda":
        import torch
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return kind == "cpu" and bool(cpu_bf16_flags())


def resolve_precision(requested: str, device) -> str:
    """`fp32` or `bf16` for `requested` (one of PRECISIONS) on `device`; ValueError for anything else."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; expected one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return requested


def slow_bf16_warning(precision: str, device) -> str | None:
    """One line for a user who asked for bf16 on a device without bf16 hardware; None otherwise."""
    if precision != "bf16" or bf16_is_fast(device):
        return None
    where = "this GPU" if device_type(device) == "cuda" else "this CPU (no AVX512-BF16 or AMX)"
    return (f"bf16 is slow on {where}: it is emulated, and trains slower than fp32; going on in bf16 "
            f"(--precision fp32 or auto would be faster)")


def compute_dtype(precision: str):
    """The dtype that convolutions, matrix products and ACLA's value maps run in under `precision`."""
    import torch
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(precision: str, device):
    """The block that runs a forward pass in `precision` (fp32: a no-op) on `device` (a torch.device or name)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision {precision!r} is not resolved; expected fp32 or bf16")
    import torch
    return torch.autocast(device_type(device), dtype=torch.bfloat16)
