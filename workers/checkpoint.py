"""Self-describing checkpoints: the weights, the genotype, the task, the profile name, the code version and,
for resuming, the optimiser, scheduler and random-generator states. Written atomically (a temporary file
in the same folder, then rename) and read with `torch.load(weights_only=True)`: nothing is unpickled.
torch is imported where a checkpoint is written or read, so that the CLI can check its other inputs (and name
CheckpointError) before it pays for torch's import."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from search_space.genotype import Genotype

from .atomic import write_atomically
from .tasks import TaskSpec

if TYPE_CHECKING:
    import torch

CHECKPOINT_FORMAT = 1
CODE_VERSION = "0.1.0"
REQUIRED = ("format", "code_version", "genotype", "task", "profile", "step", "model")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or is not ours; the message names the file."""


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, genotype: Genotype, task: TaskSpec,
                    profile: str, step: int, training_state: dict | None = None, metrics: dict | None = None) -> Path:
    import torch
    payload = {"format": CHECKPOINT_FORMAT, "code_version": CODE_VERSION, "genotype": genotype.to_json(),
               "task": dataclasses.asdict(task), "profile": profile, "step": int(step),
               "model": model.state_dict(), "metrics": dict(metrics or {}), "training_state": training_state or {}}
    return write_atomically(path, lambda temporary: torch.save(payload, temporary))


def load_checkpoint(path: str | os.PathLike) -> dict:
    import torch
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as err:  # truncated, not a torch file, or holding objects we never write
        raise CheckpointError(f"{path}: not a readable acla-orch checkpoint ({err.__class__.__name__})") from None
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED):
        raise CheckpointError(f"{path}: not an acla-orch checkpoint (missing fields)")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {payload['format']} is not supported; expected {CHECKPOINT_FORMAT}")
    return payload


def model_from_checkpoint(path: str | os.PathLike) -> tuple[torch.nn.Module, Genotype, TaskSpec, dict]:
    """Rebuild the network from the checkpoint alone: no outside config."""
    from search_space.backbone import build_network
    payload = load_checkpoint(path)
    genotype = Genotype.from_json(payload["genotype"])
    model = build_network(genotype)
    model.load_state_dict(payload["model"])
    return model.eval(), genotype, TaskSpec(**payload["task"]), payload
