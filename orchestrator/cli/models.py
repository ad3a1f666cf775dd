"""Using what a search found: `restore` a user's images and `evaluate` on any folder, with any model reference
(models.py: a checkpoint, a file:// or s3:// URI, an MLflow run id, or models:/NAME@ALIAS)."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from orchestrator.runtime.errors import UsageError
from orchestrator.cli.local import (check_output_folder, precision_from_args, task_spec_from_args, user_errors,
                             write_image_atomically)
from orchestrator.runtime.progress import progress_bar


def resolve_reference(args: argparse.Namespace):
    """--model resolved to a local checkpoint (models.py), without loading it: what a command checks first."""
    from orchestrator.tracking.models import needs_tracking, resolve_model
    from orchestrator.runtime.settings import check_tracking_uri, resolve_settings
    settings = resolve_settings(tracking_uri=args.tracking_uri, artifact_root=None, address=None,
                                s3_endpoint=args.s3_endpoint)
    if needs_tracking(args.model):
        check_tracking_uri(settings.tracking_uri, must_exist=True)
    return resolve_model(args.model, tracking_uri=settings.tracking_uri, s3_endpoint=args.s3_endpoint)


def load_model(args: argparse.Namespace, resolved):
    """(network on the device, genotype, task) for the resolved --model; refuses a model made for another task
    variant than --task names, when it is given. torch is imported here, once the other inputs have passed."""
    from workers.checkpoint import model_from_checkpoint
    from workers.device import training_device
    with user_errors():
        network, genotype, task, _ = model_from_checkpoint(resolved.checkpoint)
    if args.task:
        wanted = task_spec_from_args(args)
        if wanted.label != task.label:
            raise UsageError(f"model {args.model} was trained for {task.label}, not {wanted.label}; pass a "
                             f"{wanted.label} model or leave out --task")
    return network.to(training_device()), genotype, task


def as_network_input(image, task):
    """A user's degraded image as the network takes it: gray (Y) for a gray model, RGB otherwise."""
    from workers.tasks import to_gray_y, to_rgb
    return to_gray_y(image) if task.gray else to_rgb(image)


def command_restore(args: argparse.Namespace) -> int:
    from workers.data import load_image
    out_dir = Path(args.output)
    check_output_folder(out_dir / "restored.png")
    names = [Path(path).stem for path in args.inputs]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise UsageError(f"inputs share the name {clashes[0]}; their outputs would overwrite each other in {out_dir}")
    with user_errors():  # every input read before the model is fetched or loaded; nothing is written before all pass
        inputs = [(path, load_image(path)) for path in args.inputs]
    for path, _ in inputs:  # the same file under any name (a relative path, a symlink or a hard link)
        target = out_dir / f"{Path(path).stem}.png"
        if target.exists() and os.path.samefile(target, path):
            raise UsageError(f"{path}: its output {target} would replace the input itself; pass -o with another folder")
    resolved = resolve_reference(args)
    network, _, task = load_model(args, resolved)
    precision = precision_from_args(args)
    from workers.restore import MIN_SIDE, restore_array, tile_count
    images = []
    with user_errors():
        for path, image in inputs:
            image = as_network_input(image, task)
            height, width = image.shape[:2]
            if min(height, width) < MIN_SIDE:
                raise UsageError(f"{path}: image is {width}x{height} pixels; the model needs at least "
                                 f"{MIN_SIDE}x{MIN_SIDE}")
            images.append((path, image))
    total = sum(tile_count(*image.shape[:2], args.tile) for _, image in images)
    outputs = []
    with progress_bar("restoring", total, enabled=total > 1, transient=True) as bar:
        for path, image in images:
            started = time.perf_counter()
            restored = restore_array(network, image, scale=task.scale, tile=args.tile, on_tile=bar.advance,
                                     precision=precision)
            target = out_dir / f"{Path(path).stem}.png"
            write_image_atomically(target, restored)
            outputs.append({"input": path, "output": str(target), "input_size": list(image.shape[1::-1]),
                            "output_size": list(restored.shape[1::-1]),
                            "seconds": round(time.perf_counter() - started, 3)})
    summary = {"model": resolved.reference, "task": task.label, "tile": args.tile, "precision": precision,
               "outputs": outputs}
    if args.json:
        print(json.dumps(summary))
    else:
        for item in outputs:
            print(f"{item['input']} -> {item['output']} ({item['output_size'][0]}x{item['output_size'][1]}, "
                  f"{item['seconds']:.1f} s, {precision})")
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    """PSNR/SSIM per image and as a mean, beside the degraded input's own score and the classical baseline, on a
    standard test set or any folder of clean images; logged to the model's MLflow run when it came from one."""
    from workers.data import ImageSet, benchmark_set, list_images
    resolved = resolve_reference(args)  # the model's reference, the images and the precision, before it is loaded
    with user_errors():
        if args.data:
            image_set = ImageSet(Path(args.data).name, list_images(args.data))
        else:
            image_set = benchmark_set(args.datasets, args.benchmark)
    precision = precision_from_args(args)
    network, _, task = load_model(args, resolved)
    from workers.restore import mean_scores, score_images
    with user_errors():
        with progress_bar(f"evaluating on {image_set.name}", len(image_set.paths), transient=True) as bar:
            rows = score_images(network, task, image_set, seed=args.seed, tile=args.tile, on_image=bar.advance,
                                precision=precision)
    mean = mean_scores(rows)
    better = images_better_than_input(rows)
    result = {"model": resolved.reference, "task": task.label, "images": image_set.name, "precision": precision,
              "count": len(rows),
              "mean": {k: round(v, 4) for k, v in mean.items()}, "better_than_input": better,
              "per_image": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]}
    if resolved.run_id:
        from orchestrator.tracking.runs import log_evaluation
        log_evaluation(resolved.tracking_uri, resolved.run_id, image_set.name, mean, precision)
        result["run_id"] = resolved.run_id
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{resolved.reference} ({task.label}) on {image_set.name}, {len(rows)} images, {precision}")
    columns = [k for k in ("psnr_y", "input_psnr_y", "psnr_rgb", "input_psnr_rgb", "ssim_y", "baseline_psnr_y",
                           "baseline_psnr_rgb") if k in mean]
    print(f"{'image':<16}" + "".join(f"{c:>17}" for c in columns))
    for row in [*rows, {"image": "mean", **mean}]:
        print(f"{row['image'][:16]:<16}" + "".join(f"{row[c]:>17.4f}" for c in columns))
    if better:
        print("better than its input: " + ", ".join(f"{metric.removeprefix('psnr_').upper()} {count} of {len(rows)}"
                                                    for metric, count in better.items()) + " images")
    return 0


def images_better_than_input(rows: list[dict]) -> dict:
    """Per scored channel (psnr_y, psnr_rgb), how many images the model restores above their degraded input
    (empty where the input has another size than the target: sr)."""
    return {metric: sum(r[metric] > r[f"input_{metric}"] for r in rows)
            for metric in ("psnr_y", "psnr_rgb") if rows and f"input_{metric}" in rows[0] and metric in rows[0]}
