"""Budgets in the field's units. 1 FLOP = 1 multiply-accumulate here (see cost.py), so `50GFLOPs`, `50GMACs`,
`50G` and `5e10` are the same budget."""
from __future__ import annotations

import math
import re

_UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_PATTERN = re.compile(
    r"^\s*(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[kKmMgGtT]?)\s*"
    r"(?:flops?|macs?|mult-adds)?\s*$",
    re.IGNORECASE,
)
BUDGET_HELP = "a positive number of MACs with an optional K/M/G/T prefix and FLOPs/MACs suffix, e.g. 50GFLOPs, 25GMACs, 50G, 5e10 or 800M (1 FLOP = 1 multiply-accumulate)"


def parse_budget(text: str) -> float:
    """Parse a budget string into MACs; raise ValueError with what was expected."""
    match = _PATTERN.match(str(text))
    if not match:
        raise ValueError(f"budget {text!r} does not parse; expected {BUDGET_HELP}")
    value = float(match.group("number")) * _UNITS[match.group("unit").upper()]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"budget {text!r} must be positive and finite; expected {BUDGET_HELP}")
    return value


def short_budget(macs: float) -> str:
    """A budget as a user writes it: 50G, 1.5G, 800M (no trailing zeros)."""
    for unit, factor in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(macs) >= factor:
            return f"{macs / factor:.4g}{unit}"
    return f"{macs:.0f}"


def format_macs(macs: float) -> str:
    """Human-readable MACs, e.g. 49.87G."""
    for unit, factor in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(macs) >= factor:
            return f"{macs / factor:.2f}{unit}"
    return f"{macs:.0f}"


class BudgetError(ValueError):
    """The budget is below the smallest network that can be built: the one message for it, wherever it is found."""

    def __init__(self, budget_macs: float, smallest_macs: float, what: str) -> None:
        self.budget_macs, self.smallest_macs = budget_macs, smallest_macs
        super().__init__(f"budget {format_macs(budget_macs)}MACs is below the smallest feasible network, {what} at "
                         f"{int(smallest_macs)} MACs ({format_macs(smallest_macs)}FLOPs); pass --budget "
                         f"{format_macs(smallest_macs)} or more")


def check_budget(budget_macs: float, smallest_macs: float, what: str) -> None:
    """The one budget check: BudgetError when even the smallest network (`what`) costs more than the budget."""
    if smallest_macs > budget_macs:
        raise BudgetError(budget_macs, smallest_macs, what)
