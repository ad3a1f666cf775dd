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


def _hex_id(text: str, digits: int, what: str, where: str) -> str:
    if not re.fullmatch(f"[0-9a-f]{{{digits}}}", text):
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not {what}; expected {digits} hex digits ({where})")
    return text


def run_id_arg(text: str) -> str:
    """An MLflow run id (32 hex digits): it goes into MLflow filters and names, so nothing else is accepted."""
    return _hex_id(text, 32, "an MLflow run id", "see `acla-orch status`")


def ablation_id_arg(text: str) -> str:
    """An ablation's ID (12 hex digits, printed by `acla-orch ablate`): it names a folder in the store."""
    return _hex_id(text, 12, "an ablation ID", "the ID `acla-orch ablate` printed")
