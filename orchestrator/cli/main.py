"""The `acla-orch` command line. Flags become dataclasses here, once; nothing below reads argparse.

Bad input gives one line on stderr and exit status 2. Tracebacks are for bugs.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import secrets
import signal
import sys
from typing import Sequence

from orchestrator.runtime.settings import TRACKING_PATIENCE, redacted_command
from orchestrator.tracking.outage import EXIT_TRACKING_AWAY, TrackingAway
from orchestrator.runtime.errors import Terminated, UsageError, install_signal_handlers, signals_received

from search_space.registry import ATTENTION, SEARCHABLE_KINDS, TASK_NAMES, TASKS  # torch-free

from orchestrator.cli.argtypes import ablation_id_arg, non_negative_int, positive_int, run_id_arg, seed_arg

VARIANT_NAMES = ("plain", "plain-matched", "nonlocal", "cla", "acla-all", "acla-random",
                 "acla-searched")  # workers.ablation.VARIANTS
ADAPTIVE_KINDS = tuple(name for name, kind in ATTENTION.items() if kind.adaptive)
BENCHMARK_NAMES = ("Set5", "Set14", "Kodak24", "McMaster", "CBSD68", "classic5", "LIVE1")  # workers.data.BENCHMARKS


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + error; the user gets one line
        verb = self.prog.split()[1:]  # "acla-orch" alone for a top-level error, "acla-orch search" for a verb's
        print(f"acla-orch: error: {message} (see '{' '.join(['acla-orch', *verb[-1:]])} --help')", file=sys.stderr)
        raise SystemExit(2)


def budget_arg(text: str) -> float:
    from search_space.budget import parse_budget
    try:
        return parse_budget(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


MAX_SWEEP_BUDGETS = 8  # a sweep's searches run one after another in one Ray session: a front, not a grid


def budgets_arg(text: str) -> list[float]:
    """A sweep's budgets: each a budget, none twice (2G and 2000M are one budget), at most MAX_SWEEP_BUDGETS."""
    parts = text.split(",")
    if len(parts) > MAX_SWEEP_BUDGETS:  # counted before anything is parsed: a pasted list of thousands is cheap
        raise argparse.ArgumentTypeError(f"{len(parts)} budgets; a sweep takes at most {MAX_SWEEP_BUDGETS} "
                                         f"(run another sweep for the rest)")
    budgets = [budget_arg(part) for part in parts]
    repeated = sorted({b for b in budgets if budgets.count(b) > 1})
    if repeated:
        from search_space.budget import format_macs
        raise argparse.ArgumentTypeError(f"budget {format_macs(repeated[0])}MACs is given more than once in '{text}'; "
                                         f"expected each budget once")
    return budgets


def add_task_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--task and each task's option flag, from the task table (search_space/registry.py)."""
    parser.add_argument("--task", required=required, choices=TASK_NAMES,
                        help="restoration task" + ("" if required else " (only this task variant's searches)"))
    for task in TASKS.values():
        if task.option is not None:
            option = task.option
            parser.add_argument(f"--{option.name}", type=type(option.values[0]), choices=option.values, help=option.help)
    gray = [name for name, task in TASKS.items() if task.gray]
    parser.add_argument("--gray", action="store_true",
                        help=f"{'/'.join(gray)} on the gray/Y channel (classic5) instead of RGB")


def search_job_from_args(args: argparse.Namespace):
    """The flags of `search`, `sweep` or a replayed `resume`, as the dataclass everything below reads."""
    from orchestrator.cli.local import data_from_args, profile_from_args, search_profile, task_spec_from_args
    from orchestrator.runtime.records import SearchJob, Sweep
    if args.no_width and args.width_seeds > 1:
        raise UsageError(f"--width-seeds {args.width_seeds} trains the width line, which --no-width turns off; "
                         f"expected one of the two")
    task = task_spec_from_args(args)
    budgets = tuple(args.budgets if getattr(args, "budgets", None) else [args.budget])
    profile, data = search_profile(args, profile_from_args(args)), data_from_args(args)
    return SearchJob(task=task, profile=profile, data=data,
                     budgets=budgets, sweep=Sweep(secrets.token_hex(6), budgets) if args.verb == "sweep" else None,
                     attention=args.attention, trials=args.trials or profile.trials,
                     concurrency=args.concurrency or profile.concurrency, seed=args.seed, retrain_top=args.retrain_top,
                     retrain_workers=args.retrain_workers, retrain=not args.no_retrain, width=not args.no_width,
                     width_seeds=args.width_seeds,
                     shared=args.verb == "sweep" and not args.separate, json=args.json,
                     command_line=redacted_command(sys.argv), request=platform_request(args))


def platform_request(args: argparse.Namespace) -> dict:
    """Where a search runs, as its flags gave it (the tracking URI's password out): what `resume` uses where it is
    given no other."""
    from orchestrator.runtime.settings import PLATFORM_KEYS, redacted_platform
    return redacted_platform({key: getattr(args, key, None) for key in PLATFORM_KEYS})


def command_search(args: argparse.Namespace) -> int:
    """`search` and `sweep`: the flags become a SearchJob and the checked targets, then the recipe
    (orchestrator/search/job.py) runs."""
    from orchestrator.search.job import run_search
    from orchestrator.cli.platform import settings_from_args
    job = search_job_from_args(args)
    run, store = settings_from_args(args)
    return run_search(job, run, store)


def add_platform_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite under the run dir)")
    parser.add_argument("--artifact-root", help="where checkpoints and models land (default: <run dir>/artifacts)")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL, else AWS)")
    parser.add_argument("--create-bucket", action="store_true", help="create the artifact bucket if it is missing")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")


PRECISIONS = ("auto", "fp32", "bf16")  # search_space.precision.PRECISIONS


def add_precision_arg(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default=default,
                        help="the nets' float format: bf16 autocast (fp32 weights, loss and sums) or fp32; auto "
                             "(default): bf16 where the device has it in hardware (a CUDA GPU with bf16, a CPU with "
                             "AVX512-BF16 or AMX), fp32 elsewhere" if default == "auto" else
                             "the precision the search started with (its stored one; another is refused)")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick", help="smoke, quick (default) or paper")
    parser.add_argument("--data", help="folder of training images or a DIV2K root (default: the embedded photos)")
    parser.add_argument("--seed", type=seed_arg, default=0)
    add_precision_arg(parser)


def add_patience_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-patience", type=positive_int, default=int(TRACKING_PATIENCE), metavar="SECONDS",
                        help="how long the search waits for an MLflow server that went away, training on, before it "
                             f"stops for `resume` (exit status 75; default {TRACKING_PATIENCE:.0f})")


def add_search_args(parser: argparse.ArgumentParser) -> None:
    add_task_args(parser)
    add_data_args(parser)
    add_platform_args(parser)
    add_patience_arg(parser)
    parser.add_argument("--attention", default="acla", choices=SEARCHABLE_KINDS,
                        help="the attention kind to place (default acla)")
    parser.add_argument("--trials", type=positive_int, help="outer-search trials (default: the profile's)")
    parser.add_argument("--concurrency", type=positive_int, help="trials at once (default: the profile's)")
    parser.add_argument("--search-steps", type=positive_int,
                        help="differentiable-search steps per trial (default: the profile's)")
    parser.add_argument("--search-warmup", type=non_negative_int,
                        help="first search steps that train the weights only (default: the profile's)")
    parser.add_argument("--retrain-top", type=positive_int, default=1,
                        help="retrain the best trial (1, default) or the top k Pareto-front members")
    parser.add_argument("--retrain-workers", type=positive_int, default=2, help="Ray Train DDP workers")
    parser.add_argument("--no-retrain", action="store_true", help="stop after the search and the front")
    parser.add_argument("--no-width", action="store_true",
                        help="no width line: skip training the plain backbone that fills each budget (the front's "
                             "answer to \"does search beat width?\")")
    parser.add_argument("--width-seeds", type=positive_int, default=1,
                        help="with N >= 2, the best trial's genotype and the width net are also trained alike with N "
                             "paired seeds: each budget's gain over the width line with its 95%% interval")


def variant_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in VARIANT_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {', '.join(unknown) or repr(text)}; expected a "
                                         f"comma-separated subset of {','.join(VARIANT_NAMES)}")
    return names


def add_orchestrator_verbs(verbs) -> None:
    search = verbs.add_parser("search", help="budgeted architecture search on Ray Tune + Optuna, tracked in MLflow",
                              description="Search where to insert ACLA under a MACs budget, record every trial and "
                                          "the Pareto front in MLflow, retrain the winners on Ray Train. "
                                          "1 FLOP = 1 multiply-accumulate here.")
    search.add_argument("--budget", required=True, type=budget_arg, help="e.g. 50GFLOPs, 25GMACs, 50G, 5e10 or 800M")
    add_search_args(search)
    search.set_defaults(handler="main:command_search")

    sweep = verbs.add_parser("sweep", help="several budgets in one Ray session, filling one front")
    sweep.add_argument("--budgets", required=True, type=budgets_arg,
                       help=f"comma-separated budgets, e.g. 20G,35G,50G,80G (at most {MAX_SWEEP_BUDGETS}, each once)")
    sweep.add_argument("--separate", action="store_true",
                       help="search each budget on its own, from scratch, instead of deriving every budget from one "
                            "shared supernet trained once")
    sweep.add_argument("--finetune-steps", type=positive_int,
                       help="steps each trial and width net of a shared-supernet sweep trains from the supernet's "
                            "weights before it is scored (default: the profile's sweep_train_steps)")
    add_search_args(sweep)
    sweep.set_defaults(handler="main:command_search")

    pareto = verbs.add_parser("pareto", help="the current Pareto front of a task, from MLflow")
    add_task_args(pareto)  # the front of one task variant: --task car --quality 40
    pareto.add_argument("--plot", help="write the front as a PNG")
    pareto.add_argument("--source", choices=("table", "mlflow"), default="table",
                        help="read the Parquet trial table in the artifact store (default) or query MLflow")
    add_platform_args(pareto)
    pareto.set_defaults(handler="commands:command_pareto")

    retrain = verbs.add_parser("retrain", help="retrain one trial's genotype on Ray Train and register it")
    retrain.add_argument("--run-id", required=True, type=run_id_arg, help="the MLflow run id of a finished trial")
    retrain.add_argument("--profile", help="profile whose retrain schedule to use (default: the trial's)")
    retrain.add_argument("--data", help="training images (default: the embedded photos)")
    retrain.add_argument("--seed", type=seed_arg, default=0)
    retrain.add_argument("--retrain-workers", type=positive_int, default=2, help="Ray Train DDP workers")
    add_precision_arg(retrain)
    retrain.add_argument("--set-alias", action="store_true",
                         help="point the budget's alias (models:/acla-TASK-VARIANT@budget-...) at the retrained model")
    add_platform_args(retrain)
    retrain.set_defaults(handler="commands:command_retrain")

    resume = verbs.add_parser("resume", help="finish an interrupted search (its finished trials are kept)",
                              description="Continue a search whose driver stopped (Ctrl-C, a crash, kill -9): "
                                          "finished trials are kept, interrupted ones run again, then the front, "
                                          "the retrains and the registry, as the search would have.")
    resume.add_argument("parent_run_id", nargs="?", type=run_id_arg,
                        help="the search's parent MLflow run id (see `acla-orch status`)")
    resume.add_argument("--last", action="store_true", help="the most recent interrupted search of this run directory")
    add_precision_arg(resume, default=None)
    add_platform_args(resume)
    add_patience_arg(resume)
    resume.set_defaults(handler="resume:command_resume")

    report = verbs.add_parser("report", help="one HTML page with figures of what a task variant's searches found")
    add_task_args(report)
    report.add_argument("-o", "--output", help="a new folder for index.html and its figures (default: report-TASK)")
    add_platform_args(report)
    report.set_defaults(handler="report:command_report")

    status = verbs.add_parser("status", help="the searches of this run directory and their state")
    add_task_args(status, required=False)
    add_platform_args(status)
    status.set_defaults(handler="commands:command_status")

    ablate = verbs.add_parser("ablate", help="the searched ACLA net against plain, width-matched, non-local, CLA, "
                                             "ACLA-everywhere and random-placement variants, trained alike",
                              description="Train the variants with the same steps, paired seeds and schedule, score "
                                          "them on clean images that neither the search nor the training used, and "
                                          "give each one's paired gain over plain-matched with its 95% interval.")
    add_task_args(ablate)
    ablate.add_argument("--budget", required=True, type=budget_arg, help="e.g. 14G (1 FLOP = 1 MAC)")
    ablate.add_argument("--profile", default="quick", help="smoke, quick (default) or paper: the backbone and schedule")
    ablate.add_argument("--data", help="training images (default: the embedded photos)")
    ablate.add_argument("--steps", type=positive_int,
                        help="training steps per variant (default: the profile's retrain schedule)")
    ablate.add_argument("--seed", type=seed_arg, default=0, help="first seed (search and training)")
    add_precision_arg(ablate)
    ablate.add_argument("--seeds", type=positive_int, default=2,
                        help="paired training seeds per variant (default 2; 3 or more for a 95%% interval worth "
                             "reading): seed s is the same data stream for every variant")
    ablate.add_argument("--eval-data", help="folder of clean images to score on (default: the validation split)")
    ablate.add_argument("--genotype", help="a searched ACLA genotype JSON instead of searching")
    ablate.add_argument("--search-steps", type=positive_int,
                        help="the acla-searched variant's differentiable-search steps (default: the profile's)")
    ablate.add_argument("--search-warmup", type=non_negative_int,
                        help="first search steps that train the weights only (default: the profile's)")
    ablate.add_argument("--attention", default="acla", choices=ADAPTIVE_KINDS,
                        help="the adaptive kind to search and ablate (default acla; acla-shared: one value "
                             "projection shared by the reference layers, as the authors' code)")
    ablate.add_argument("--variants", type=variant_list, default=VARIANT_NAMES,
                        help=f"comma-separated subset to train (default: all of {','.join(VARIANT_NAMES)})")
    ablate.add_argument("--resume", type=ablation_id_arg, metavar="ID",
                        help="go on with the ablation ID that was cut off (same arguments): only the trainings it "
                             "had not finished are trained")
    add_platform_args(ablate)
    ablate.set_defaults(handler="ablate:command_ablate")


def add_local_verbs(verbs) -> None:
    cost = verbs.add_parser("cost", help="analytic MACs and parameters of a genotype, or a parsed budget",
                            description="MACs at the field's reference size (1280x720 output for SR, 256x256 otherwise). "
                                        "1 FLOP = 1 multiply-accumulate here, as fvcore and ptflops count.")
    add_task_args(cost)
    which = cost.add_mutually_exclusive_group(required=True)
    which.add_argument("--genotype", help="genotype JSON file")
    which.add_argument("--budget", type=budget_arg, help="a budget such as 50GFLOPs, 25GMACs, 50G, 5e10 or 800M")
    cost.add_argument("--json", action="store_true", help="print JSON")
    cost.set_defaults(handler="local:command_cost")

    def add_model_args(parser) -> None:
        parser.add_argument("--model", required=True, help="a checkpoint path, a file:// or s3:// URI, an MLflow run "
                                                            "id, or models:/NAME@ALIAS (e.g. models:/acla-car-q10@budget-50G)")
        add_task_args(parser, required=False)  # refuse a model made for another task variant
        parser.add_argument("--tile", type=non_negative_int, default=512,
                            help="input pixels per tile side (default 512; 0: the whole image at once)")
        parser.add_argument("--tracking-uri", help="MLflow tracking URI for run ids and models:/ references")
        parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL for s3:// models")
        parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        add_precision_arg(parser)

    restore = verbs.add_parser("restore", help="restore degraded images with a trained model (any size, tiled)",
                               description="Takes each image as the task degrades it (a JPEG for car, a noisy image "
                                           "for denoise, an LR image for sr, a mosaic for demosaic) and writes the "
                                           "restored PNG under OUT_DIR with the input's name.")
    restore.add_argument("inputs", nargs="+", metavar="IN", help="degraded images")
    restore.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="folder for the restored PNGs")
    add_model_args(restore)
    restore.set_defaults(handler="models:command_restore")

    evaluate_verb = verbs.add_parser("evaluate", help="PSNR/SSIM of a model on a standard test set or any folder")
    which_images = evaluate_verb.add_mutually_exclusive_group(required=True)
    which_images.add_argument("--benchmark", choices=BENCHMARK_NAMES, help="standard test set")
    which_images.add_argument("--data", help="any folder of clean images")
    evaluate_verb.add_argument("--datasets", help="folder holding the test sets (default: $ACLA_DATASETS, else the "
                                                  "per-user data folder, ~/.cache/acla-orch/datasets; "
                                                  "docs/datasets.md)")
    evaluate_verb.add_argument("--seed", type=seed_arg, default=0, help="noise seed for denoise")
    add_model_args(evaluate_verb)
    evaluate_verb.set_defaults(handler="models:command_evaluate")

    degrade = verbs.add_parser("degrade", help="make the network input of a task from a clean image")
    add_task_args(degrade)
    degrade.add_argument("--seed", type=seed_arg, default=0, help="noise seed for denoise")
    degrade.add_argument("input", help="clean image")
    degrade.add_argument("output", help="degraded image to write (.png)")
    degrade.set_defaults(handler="local:command_degrade")

    compare = verbs.add_parser("compare", help="PSNR/SSIM (Y and RGB) with the task's conventions")
    add_task_args(compare)
    compare.add_argument("reference", help="clean reference image")
    compare.add_argument("test", help="restored image")
    compare.add_argument("--json", action="store_true")
    compare.set_defaults(handler="local:command_compare")

    train_verb = verbs.add_parser("train", help="train one genotype locally and write a checkpoint")
    add_task_args(train_verb)
    add_data_args(train_verb)
    train_verb.add_argument("--genotype", required=True, help="genotype JSON file")
    train_verb.add_argument("--steps", type=positive_int, help="iterations (default: the profile's)")
    train_verb.add_argument("--resume", help="checkpoint to continue from")
    train_verb.add_argument("--output", help="checkpoint path (default under $ACLA_HOME or ./acla-runs)")
    train_verb.set_defaults(handler="local:command_train")


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version
    parser = OneLineParser(prog="acla-orch", description="Neural-architecture search for image restoration with ACLA.")
    try:
        installed = version("acla-orch")
    except PackageNotFoundError:  # run from a checkout that was never installed
        installed = "unknown (not installed)"
    parser.add_argument("--version", action="version", version=f"acla-orch {installed}")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=OneLineParser)
    add_local_verbs(verbs)
    add_orchestrator_verbs(verbs)
    return parser


def show_library_notes() -> None:
    """The package's own log lines (logger `acla_orch`, such as which attention implementation runs) on stderr."""
    logger = logging.getLogger("acla_orch")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("acla-orch: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    show_library_notes()
    # MLflow's own download bars stand before every small artifact the verbs fetch (a genotype, a checkpoint); the
    # verbs show a bar of their own where work is long. A user's setting wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    install_signal_handlers()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        module, _, name = args.handler.partition(":")  # the verb's module is imported only when it runs
        code = getattr(importlib.import_module(f"orchestrator.cli.{module}"), name)(args)
        sys.stdout.flush()  # a reader that went away is met here, not in the interpreter's exit
        return code
    except BrokenPipeError:  # `acla-orch cost ... | head`: the reader has what it wanted; stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush writes nowhere
        return 128 + signal.SIGPIPE
    except UsageError as err:
        print(f"acla-orch: error: {err}", file=sys.stderr)
        return 2
    except TrackingAway as err:  # the search stopped cleanly, its finished trials kept in the run directory
        print(f"acla-orch: {err}; the search stopped and kept its finished trials: run `acla-orch resume --last` "
              f"when the server is back", file=sys.stderr)
        return EXIT_TRACKING_AWAY
    except KeyboardInterrupt as err:
        if isinstance(err, Terminated) or signal.SIGTERM in signals_received:
            print("acla-orch: terminated", file=sys.stderr)
            return 143
        print("acla-orch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
