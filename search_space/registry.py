"""The two axes of the method, each one table: the restoration tasks and the attention kinds.

Everything that branches on a task or a kind reads these tables: the CLI's flags, the genotype's validation,
the cost model, the networks, the supernet, the derivation and the data. Adding a task or a kind is one entry
here plus its own file (its degradation, or its module and MACs formula).

Torch-free: the code each entry needs is named as "module:attribute" and imported only when it is used, so the
CLI and the genotype read the tables without loading torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


def resolve(reference: str):
    """The object that "package.module:attribute" names."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class TaskOption:
    """The one option that tells a task's variants apart (sr's scale, denoise's sigma, car's JPEG quality)."""
    name: str  # the flag (--scale) and the TaskSpec field
    values: tuple
    default: object
    help: str
    label: str  # how the variant is named: "x{}", "sigma{:g}", "q{}"


@dataclass(frozen=True)
class Task:
    name: str
    option: TaskOption | None
    degrade: str  # "module:function(spec, target, rng) -> network input"
    baseline: str | None  # "module:function(spec, degraded) -> classical output"; None: the input is the baseline
    headline_metric: str  # what papers report: psnr_y or psnr_rgb
    border_is_scale: bool  # metrics shave `scale` pixels per side (sr), else none
    reference_size: tuple[int, int]  # (height, width) at which MACs are quoted: the output for sr, else the input
    upscales: bool  # the network's output is `scale` times its input (sr); else the input is added back
    gray: bool = False  # a --gray variant exists (gray car: classic5 and LIVE1 on Y)


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("sr", TaskOption("scale", (2, 3, 4), 2, "SR scale (default 2; sr only)", "x{}"),
         degrade="workers.tasks:degrade_sr", baseline="workers.tasks:bicubic_baseline", headline_metric="psnr_y",
         border_is_scale=True, reference_size=(720, 1280), upscales=True),
    Task("denoise", TaskOption("sigma", (15.0, 25.0, 50.0), 25.0, "denoise noise level on 0-255 (default 25)",
                               "sigma{:g}"),
         degrade="workers.tasks:add_gaussian_noise", baseline=None,
         headline_metric="psnr_rgb", border_is_scale=False, reference_size=(256, 256), upscales=False),
    Task("car", TaskOption("quality", (10, 20, 30, 40), 10, "JPEG quality for car (default 10)", "q{}"),
         degrade="workers.tasks:jpeg_degrade", baseline=None, headline_metric="psnr_y",
         border_is_scale=False, reference_size=(256, 256), upscales=False, gray=True),
    Task("demosaic", None, degrade="workers.tasks:bayer_degrade", baseline="workers.tasks:bilinear_baseline",
         headline_metric="psnr_rgb", border_is_scale=False, reference_size=(256, 256), upscales=False),
)}
TASK_NAMES = tuple(TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASK_NAMES)}")
    return TASKS[name]


def option_values(name: str) -> tuple:
    """Every value of the option `name` across the tasks (for the CLI's choices)."""
    return next(t.option.values for t in TASKS.values() if t.option and t.option.name == name)


@dataclass(frozen=True)
class AttentionKind:
    name: str
    build: str | None  # "module:factory(channels, num_refs, keys_per_ref, active_keys, nonlocal_grid) -> nn.Module"
    macs: str | None  # "module:function(channels, num_refs, keys_per_ref, adaptive, active_keys, height, width,
    #                   nonlocal_grid) -> MACs of one module"
    uses_keys: bool  # the genotype gives key counts per reference layer
    adaptive: bool  # gates choose the keys; the derived module keeps each query's gated-on keys, up to a cap
    inserts: bool = True  # 'none' inserts nothing
    fixed: str | None = None  # the kind with the same values and every key on, no gates (what `ablate` calls cla)


ATTENTION: dict[str, AttentionKind] = {kind.name: kind for kind in (
    AttentionKind("acla", build="search_space.acla:build_acla", macs="search_space.cost:acla_macs",
                  uses_keys=True, adaptive=True, fixed="cla"),
    AttentionKind("cla", build="search_space.acla:build_cla", macs="search_space.cost:acla_macs",
                  uses_keys=True, adaptive=False, fixed="cla"),
    # The authors' layout: one value projection shared by every reference layer, applied after the sum.
    AttentionKind("acla-shared", build="search_space.acla:build_acla_shared",
                  macs="search_space.cost:acla_shared_macs", uses_keys=True, adaptive=True, fixed="cla-shared"),
    AttentionKind("cla-shared", build="search_space.acla:build_cla_shared",
                  macs="search_space.cost:acla_shared_macs", uses_keys=True, adaptive=False, fixed="cla-shared"),
    AttentionKind("nonlocal", build="search_space.attention:build_nonlocal", macs="search_space.cost:nonlocal_module_macs",
                  uses_keys=False, adaptive=False),
    AttentionKind("none", build=None, macs=None, uses_keys=False, adaptive=False, inserts=False),
)}
ATTENTION_KINDS = tuple(ATTENTION)
SEARCHABLE_KINDS = tuple(name for name, kind in ATTENTION.items() if kind.inserts)


def get_kind(name: str) -> AttentionKind:
    if name not in ATTENTION:
        raise ValueError(f"unknown attention {name!r}; expected one of {', '.join(ATTENTION_KINDS)}")
    return ATTENTION[name]
