"""Where a trial or a retrain computes: the GPU Ray assigned to it when there is one, else the CPU.

Ray sets CUDA_VISIBLE_DEVICES for each task from its resource request, so inside a trial that asked for no GPU
`torch.cuda.is_available()` is false. `ACLA_DEVICE` (for example `cpu`) overrides the choice.
"""
from __future__ import annotations

import os

import torch

from search_space.ops import attention_backend
from search_space.precision import compute_dtype


def training_device() -> torch.device:
    name = os.environ.get("ACLA_DEVICE", "").strip()
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_threads(granted: float) -> int:
    """Torch's threads in a process that Ray granted `granted` CPUs: that many (at least one), but no more than
    OMP_NUM_THREADS where it is set, Ray's own convention (the user's setting wins; unset, Ray sets it to the
    grant). Two test workers sharing two cores run with OMP_NUM_THREADS=1 (`make test`): a trial's second thread
    then only spins between the small ops of the smoke profile, and a 3-trial smoke search's trial actor took
    9.2-9.9 CPU-seconds with two threads against 5.0-5.9 with one, beside another busy process."""
    threads = max(1, int(granted))
    try:
        cap = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return threads
    return min(threads, cap) if cap >= 1 else threads


def describe_device(device: torch.device, precision: str = "fp32") -> dict:
    """The MLflow params that say where a trial ran its tensors, in which precision, and which attention
    implementation served it (for the value maps' dtype in that precision)."""
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            "precision": precision, "attention_backend": attention_backend(device, compute_dtype(precision))}


def to_device(batches, device: torch.device):
    """An iterator of (inputs, targets) moved to `device` (a no-op on the CPU)."""
    for inputs, targets in batches:
        yield inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
