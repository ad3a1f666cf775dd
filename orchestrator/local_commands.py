"""CLI verbs that run on this machine without Ray: degrade, compare, train and evaluate.

Each handler turns flags into the core's dataclasses once, and turns the core's input errors
(ValueError subclasses that name the file or value) into UsageError: one line, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .argtypes import positive_int, seed_arg
from .errors import UsageError


@contextmanager
def user_errors():
    """Input errors from the core become one-line usage errors."""
    from search_space.budget import BudgetError
    from workers.checkpoint import CheckpointError
    from storage.stores import StorageError
    from workers.data import DataError
    try:
        yield
    except (DataError, CheckpointError, BudgetError, StorageError) as err:
        raise UsageError(str(err)) from None


def task_spec_from_args(args: argparse.Namespace):
    from search_space.registry import TASKS
    from workers.tasks import task_from_options
    options = {t.option.name: getattr(args, t.option.name, None) for t in TASKS.values() if t.option is not None}
    try:
        return task_from_options(args.task, gray=args.gray, **options)
    except ValueError as err:
        raise UsageError(str(err)) from None


def read_genotype(path: str):
    from search_space.genotype import Genotype
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read genotype file {path}: {getattr(err, 'strerror', None) or err}") from None
    try:
        return Genotype.from_json(text)
    except ValueError as err:
        raise UsageError(f"genotype file {path}: {err}") from None


def run_home() -> Path:
    return Path(os.environ.get("ACLA_HOME", "acla-runs"))


def check_output_folder(path: Path) -> None:
    """The folder an output goes to exists and is writable: a mistyped folder is an error, not a new tree."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{path}: folder {folder} is not writable")


def write_image_atomically(path: Path, image: np.ndarray) -> None:
    from PIL import Image
    from workers.atomic import write_atomically
    suffix = path.suffix.lower()
    if suffix not in (".png", ".bmp", ".tif", ".tiff", ".ppm"):
        raise UsageError(f"{path}: output must be a lossless image (.png, .bmp, .tif or .ppm), got '{suffix or 'no suffix'}'")
    check_output_folder(path)
    write_atomically(path, lambda temporary: Image.fromarray(image).save(temporary))


def command_degrade(args: argparse.Namespace) -> int:
    from workers.data import load_image
    from workers.train import to_uint8_image
    from workers.data import to_tensor
    task = task_spec_from_args(args)
    with user_errors():
        target = task.prepare_target(load_image(args.input))
        if task.name == "sr" and min(target.shape[:2]) < task.scale:
            raise UsageError(f"{args.input}: image is smaller than the scale {task.scale}")
        degraded = task.degrade(target, np.random.default_rng(args.seed))
    if degraded.dtype != np.uint8:  # noisy input saved as an image: clipped and rounded
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


def data_from_args(args: argparse.Namespace):
    from workers.data import embedded_sets, folder_sets
    from workers.train import DataSpec
    with user_errors():
        train_set, valid_set = folder_sets(args.data) if args.data else embedded_sets()
    return DataSpec(train_set, valid_set)


def check_training_data(data, task, profile) -> None:
    """Every training and validation image readable, and the training images big enough for the profile's
    patches, from their headers: before Ray starts, not inside each trial."""
    from workers.data import check_images
    with user_errors():
        check_images(data.train, min_side=profile.patch * task.scale)
        check_images(data.valid)


def profile_from_args(args: argparse.Namespace):
    from workers.profiles import get_profile
    try:
        return get_profile(args.profile)
    except ValueError as err:
        raise UsageError(str(err)) from None


@contextmanager
def progress_bar(description: str, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, transient=False, disable=not sys.stderr.isatty()) as progress:
        bar = progress.add_task(description, total=total, status="")

        def report(record: dict) -> None:
            status = f"loss {record.get('loss', record.get('val_loss', 0.0)):.4f}"
            progress.update(bar, completed=record["step"], status=status)
        yield report


def command_train(args: argparse.Namespace) -> int:
    from workers.train import train
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
    with user_errors(), progress_bar(f"train {task.label}", steps) as report:
        result = train(genotype=genotype, task=task, data=data, profile=profile, report=report, steps=steps,
                       resume_from=args.resume, checkpoint_path=str(output), seed=args.seed,
                       checkpoint_every=max(1, steps // 10))
    print(json.dumps({"checkpoint": str(output), "steps": result.steps,
                      "metrics": {k: round(v, 4) for k, v in result.metrics.items()}}))
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    """A checkpoint on a standard test set, with its task's conventions, beside the classical baseline."""
    from workers.checkpoint import model_from_checkpoint
    from workers.data import benchmark_set
    from workers.train import evaluate
    with user_errors():
        model, genotype, task, _ = model_from_checkpoint(args.checkpoint)
        image_set = benchmark_set(args.datasets, args.benchmark)
        metrics = evaluate(model, task, image_set, seed=args.seed)
    result = {"checkpoint": args.checkpoint, "task": task.label, "benchmark": args.benchmark,
              **{k: round(v, 4) for k, v in metrics.items()}}
    print(json.dumps(result) if args.json else "\n".join(f"{k:>15}: {v}" for k, v in result.items()))
    return 0


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick", help="smoke, quick (default) or paper")
    parser.add_argument("--data", help="folder of training images or a DIV2K root (default: the embedded photos)")
    parser.add_argument("--seed", type=seed_arg, default=0)


BENCHMARK_NAMES = ("Set5", "Set14", "Kodak24", "McMaster", "CBSD68", "classic5", "LIVE1")  # workers.data.BENCHMARKS


def register_local_commands(verbs, *, add_task_args, budget_arg) -> None:
    evaluate_verb = verbs.add_parser("evaluate", help="PSNR/SSIM of a checkpoint on a standard test set")
    evaluate_verb.add_argument("checkpoint", help="a checkpoint written by train or search")
    evaluate_verb.add_argument("--benchmark", required=True, choices=BENCHMARK_NAMES, help="standard test set")
    evaluate_verb.add_argument("--datasets", default="../shared/datasets", help="folder holding the test sets")
    evaluate_verb.add_argument("--seed", type=seed_arg, default=0, help="noise seed for denoise")
    evaluate_verb.add_argument("--json", action="store_true")
    evaluate_verb.set_defaults(handler=command_evaluate)

    degrade = verbs.add_parser("degrade", help="make the network input of a task from a clean image")
    add_task_args(degrade)
    degrade.add_argument("--seed", type=seed_arg, default=0, help="noise seed for denoise")
    degrade.add_argument("input", help="clean image")
    degrade.add_argument("output", help="degraded image to write (.png)")
    degrade.set_defaults(handler=command_degrade)

    compare = verbs.add_parser("compare", help="PSNR/SSIM (Y and RGB) with the task's conventions")
    add_task_args(compare)
    compare.add_argument("reference", help="clean reference image")
    compare.add_argument("test", help="restored image")
    compare.add_argument("--json", action="store_true")
    compare.set_defaults(handler=command_compare)

    train_verb = verbs.add_parser("train", help="train one genotype locally and write a checkpoint")
    add_task_args(train_verb)
    add_data_args(train_verb)
    train_verb.add_argument("--genotype", required=True, help="genotype JSON file")
    train_verb.add_argument("--steps", type=positive_int, help="iterations (default: the profile's)")
    train_verb.add_argument("--resume", help="checkpoint to continue from")
    train_verb.add_argument("--output", help="checkpoint path (default under $ACLA_HOME or ./acla-runs)")
    train_verb.set_defaults(handler=command_train)

