"""CLI verbs that run on this machine without Ray: cost, degrade, compare and train.

Each handler turns flags into the core's dataclasses once, and turns the core's input errors
(ValueError subclasses that name the file or value) into UsageError: one line, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from orchestrator.runtime.errors import UsageError
from orchestrator.runtime.inputs import (check_output_folder, read_genotype, run_home,
                                        user_errors, write_image_atomically)


def task_spec_from_args(args: argparse.Namespace):
    from search_space.registry import TASKS
    from workers.tasks import task_from_options
    options = {t.option.name: getattr(args, t.option.name, None) for t in TASKS.values() if t.option is not None}
    try:
        return task_from_options(args.task, gray=args.gray, **options)
    except ValueError as err:
        raise UsageError(str(err)) from None


def command_cost(args: argparse.Namespace) -> int:
    from search_space.budget import format_macs
    from search_space.cost import count_parameters, genotype_macs, reference_input_size
    from search_space.registry import get_kind

    spec = task_spec_from_args(args)
    if args.genotype:
        genotype = read_genotype(args.genotype)
        from search_space.backbone import build_network  # torch, once the file has passed its checks
        if (genotype.task, genotype.scale) != (spec.name, spec.scale):
            raise UsageError(f"genotype {args.genotype} is for task {genotype.task} x{genotype.scale}, "
                             f"not {spec.name} x{spec.scale}; pass the matching --task/--scale")
        height, width = reference_input_size(genotype.task, genotype.scale)
        result = {"task": spec.name, "scale": spec.scale, "macs": genotype_macs(genotype)}
        if get_kind(genotype.attention).adaptive:  # data-dependent cost: the bound at the caps (what budgets
            # are checked against) and the expected figure at the keys measured on validation images
            result["macs_basis"] = "key caps (the bound every budget check uses)"
            result["macs_expected"] = genotype_macs(genotype, expected=True)
            result["expected_basis"] = ("mean keys measured on validation images" if genotype.expected_keys
                                        else "not measured: the caps")
        result.update({"params": count_parameters(build_network(genotype)), "reference_input": [height, width],
                       "reference_output": [height * spec.scale, width * spec.scale]})
    else:
        result = {"task": spec.name, "scale": spec.scale, "budget_macs": int(args.budget)}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            shown = format_macs(value) + " (1 FLOP = 1 MAC)" if key in ("macs", "budget_macs", "macs_expected") else value
            print(f"{key:>17}: {shown}")
    return 0


def command_degrade(args: argparse.Namespace) -> int:
    from workers.data import load_image
    task = task_spec_from_args(args)
    with user_errors():
        target = task.prepare_target(load_image(args.input))
        if task.name == "sr" and min(target.shape[:2]) < task.scale:
            raise UsageError(f"{args.input}: image is smaller than the scale {task.scale}")
        degraded = task.degrade(target, np.random.default_rng(args.seed))
    if degraded.dtype != np.uint8:  # noisy input saved as an image: clipped and rounded
        from workers.data import to_tensor
        from workers.train import to_uint8_image
        degraded = to_uint8_image(to_tensor(degraded))
    write_image_atomically(Path(args.output), degraded)
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from workers.data import load_image
    from workers.metrics import image_metrics
    task = task_spec_from_args(args)
    with user_errors():
        reference, test = task.prepare_target(load_image(args.reference)), load_image(args.test)
    if task.gray and test.ndim == 3:
        from workers.tasks import to_gray_y
        test = to_gray_y(test)
    if reference.ndim != test.ndim:
        from workers.tasks import to_rgb
        reference, test = to_rgb(reference), to_rgb(test)
    if reference.shape != test.shape:
        raise UsageError(f"{args.test} is {test.shape[1]}x{test.shape[0]} but {args.reference} is "
                         f"{reference.shape[1]}x{reference.shape[0]} (after the task's crop); expected equal sizes")
    if min(reference.shape[:2]) - 2 * task.border < 11:
        raise UsageError(f"{args.reference}: images must be at least {11 + 2 * task.border} pixels on each side for SSIM")
    metrics = image_metrics(reference, test, border=task.border)
    result = {"task": task.label, "border": task.border, **{k: round(v, 4) for k, v in metrics.items()}}
    print(json.dumps(result) if args.json else "\n".join(f"{k:>9}: {v}" for k, v in result.items()))
    return 0


def search_profile(args: argparse.Namespace, profile):
    """The profile with the --search-steps / --search-warmup (and a sweep's --finetune-steps) overrides; a warm-up
    as long as the search is refused."""
    import dataclasses
    if getattr(args, "finetune_steps", None):
        profile = dataclasses.replace(profile, sweep_train_steps=args.finetune_steps)
    steps = args.search_steps or profile.search_steps
    warmup = profile.search_warmup if args.search_warmup is None else args.search_warmup
    if warmup >= steps:
        raise UsageError(f"--search-warmup {warmup} leaves no architecture step in a {steps}-step search; "
                         f"expected fewer warm-up steps than --search-steps")
    return dataclasses.replace(profile, search_steps=steps, search_warmup=warmup)


def data_from_args(args: argparse.Namespace):
    from workers.data import DataSpec, embedded_sets, folder_sets
    with user_errors():
        train_set, valid_set = folder_sets(args.data) if args.data else embedded_sets()
    return DataSpec(train_set, valid_set)


def profile_from_args(args: argparse.Namespace, default: str | None = None):
    """The --profile flag's profile (`default` where the flag was left out), in the --precision flag's
    precision, resolved for this machine's training device."""
    import dataclasses
    return dataclasses.replace(profile_named(args.profile or default), precision=precision_from_args(args))


def profile_named(name: str):
    """The profile of that name, or a one-line usage error naming the profiles there are."""
    from workers.profiles import get_profile
    try:
        return get_profile(name)
    except ValueError as err:
        raise UsageError(str(err)) from None


def precision_from_args(args: argparse.Namespace) -> str:
    """--precision resolved to fp32 or bf16 for the device that trains or runs the nets here (auto: bf16 where it
    has bf16 in hardware). bf16 asked for on a device without it goes on, with one line on stderr that says so."""
    from search_space.precision import local_device_type, resolve_precision, slow_bf16_warning
    device = local_device_type()  # torch-free on a machine without an NVIDIA driver: checked before slow work
    precision = resolve_precision(getattr(args, "precision", None) or "auto", device)
    warning = slow_bf16_warning(precision, device)
    if warning:
        print(f"acla-orch: {warning}", file=sys.stderr)
    return precision


def command_train(args: argparse.Namespace) -> int:
    from orchestrator.runtime.progress import loss_status, progress_bar
    task = task_spec_from_args(args)
    genotype = read_genotype(args.genotype)
    if (genotype.task, genotype.scale, genotype.in_channels) != (task.name, task.scale, task.in_channels):
        raise UsageError(f"genotype {args.genotype} is for {genotype.task} x{genotype.scale} with "
                         f"{genotype.in_channels} channel(s), not {task.label}; pass matching task flags")
    profile, data = profile_from_args(args), data_from_args(args)
    home = run_home()
    if args.output:
        output = Path(args.output)
        check_output_folder(output)
    elif home.exists() and not home.is_dir():
        raise UsageError(f"ACLA_HOME {home} is a file; expected a folder for the run directory (or pass --output)")
    else:
        output = home / "train" / f"{task.label}-{profile.name}.pt"
    steps = args.steps or profile.train_steps
    from workers.train import train  # torch, once the inputs have passed their checks
    with user_errors(), progress_bar(f"train {task.label}", steps) as bar:
        result = train(genotype=genotype, task=task, data=data, profile=profile, steps=steps,
                       report=lambda record: bar.update(record["step"], loss_status(record)),
                       resume_from=args.resume, checkpoint_path=str(output), seed=args.seed,
                       checkpoint_every=max(1, steps // 10))
    print(json.dumps({"checkpoint": str(output), "steps": result.steps,
                      "metrics": {k: round(v, 4) for k, v in result.metrics.items()}}))
    return 0
