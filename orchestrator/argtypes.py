"""argparse value types shared by every verb: a bad value is one line naming the flag, before anything runs."""
from __future__ import annotations

import argparse
import re

SEED_LIMIT = 2 ** 32  # numpy's and Optuna's seeds are 32-bit


def _int_at_least(text: str, lowest: int, highest: int | None = None) -> int:
    expected = f"{lowest} or more" if highest is None else f"{lowest} to {highest}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; expected {expected}") from None
    if value < lowest or (highest is not None and value > highest):
        raise argparse.ArgumentTypeError(f"{value} must be {expected}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def seed_arg(text: str) -> int:
    return _int_at_least(text, 0, SEED_LIMIT - 1)


RUN_ID = re.compile(r"[0-9a-f]{32}")


def run_id_arg(text: str) -> str:
    """An MLflow run id (32 hex digits): it goes into MLflow filters and names, so nothing else is accepted."""
    if not RUN_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not an MLflow run id; expected 32 hex digits "
                                         f"(see `acla-orch status`)")
    return text


ABLATION_ID = re.compile(r"[0-9a-f]{12}")


def ablation_id_arg(text: str) -> str:
    """An ablation's ID (12 hex digits, printed by `acla-orch ablate`): it names a folder in the store."""
    if not ABLATION_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not an ablation ID; expected the 12 hex digits that "
                                         f"`acla-orch ablate` printed")
    return text
