"""The `acla-orch` command line. Flags become dataclasses here, once; nothing below reads argparse.

Bad input gives one line on stderr and exit status 2. Tracebacks are for bugs.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Sequence

from .errors import Terminated, UsageError, install_signal_handlers, signals_received

from search_space.registry import TASK_NAMES, TASKS  # torch-free


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


def add_task_args(parser: argparse.ArgumentParser) -> None:
    """--task and each task's option flag, from the task table (search_space/registry.py)."""
    parser.add_argument("--task", required=True, choices=TASK_NAMES, help="restoration task")
    for task in TASKS.values():
        if task.option is not None:
            option = task.option
            parser.add_argument(f"--{option.name}", type=type(option.values[0]), choices=option.values, help=option.help)
    gray = [name for name, task in TASKS.items() if task.gray]
    parser.add_argument("--gray", action="store_true",
                        help=f"{'/'.join(gray)} on the gray/Y channel (classic5) instead of RGB")


def command_cost(args: argparse.Namespace) -> int:
    from search_space.backbone import build_network
    from search_space.budget import format_macs
    from search_space.cost import count_parameters, genotype_macs, reference_input_size
    from .local_commands import read_genotype, task_spec_from_args

    spec = task_spec_from_args(args)
    if args.genotype:
        genotype = read_genotype(args.genotype)
        if (genotype.task, genotype.scale) != (spec.name, spec.scale):
            raise UsageError(f"genotype {args.genotype} is for task {genotype.task} x{genotype.scale}, "
                             f"not {spec.name} x{spec.scale}; pass the matching --task/--scale")
        height, width = reference_input_size(genotype.task, genotype.scale)
        result = {"task": spec.name, "scale": spec.scale, "macs": genotype_macs(genotype),
                  "params": count_parameters(build_network(genotype)),
                  "reference_input": [height, width], "reference_output": [height * spec.scale, width * spec.scale]}
    else:
        result = {"task": spec.name, "scale": spec.scale, "budget_macs": int(args.budget)}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            shown = format_macs(value) + " (1 FLOP = 1 MAC)" if key in ("macs", "budget_macs") else value
            print(f"{key:>17}: {shown}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="acla-orch", description="Neural-architecture search for image restoration with ACLA.")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=OneLineParser)

    cost = verbs.add_parser("cost", help="analytic MACs and parameters of a genotype, or a parsed budget",
                            description="MACs at the field's reference size (1280x720 output for SR, 256x256 otherwise). "
                                        "1 FLOP = 1 multiply-accumulate here, as fvcore and ptflops count.")
    add_task_args(cost)
    which = cost.add_mutually_exclusive_group(required=True)
    which.add_argument("--genotype", help="genotype JSON file")
    which.add_argument("--budget", type=budget_arg, help="a budget such as 50GFLOPs, 25GMACs, 50G, 5e10 or 800M")
    cost.add_argument("--json", action="store_true", help="print JSON")
    cost.set_defaults(handler=command_cost)

    from .ablate import register_ablate
    from .commands import add_platform_args, register_orchestrator_commands
    from .local_commands import add_data_args, register_local_commands
    register_orchestrator_commands(verbs, add_task_args=add_task_args, budget_arg=budget_arg, add_data_args=add_data_args)
    register_ablate(verbs, add_task_args=add_task_args, budget_arg=budget_arg, add_platform_args=add_platform_args)
    register_local_commands(verbs, add_task_args=add_task_args, budget_arg=budget_arg)
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
    install_signal_handlers()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UsageError as err:
        print(f"acla-orch: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        if isinstance(err, Terminated) or signal.SIGTERM in signals_received:
            print("acla-orch: terminated", file=sys.stderr)
            return 143
        print("acla-orch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
