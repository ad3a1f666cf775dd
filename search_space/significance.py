"""Which positions' measured gains are real: Holm's step-down method over one-sided z-tests, at 5% family-wise.

A position's score is how much the held-out loss rises when its module is switched off (DARTS-PT's perturbation
score, search_space/search.py), and its error the standard error of that mean. A search tests every position at
once, so a rule that keeps each position whose score clears one standard error keeps, where no position helps,
about one in six of them by chance (P(z > 1) = 0.16): with 8 positions, most searches would keep something.

The rule here tests H0 "this position does not lower the loss" against a gain, for all m positions together:
- each position's one-sided p-value is P(Z >= score / error) under a normal null (the score is a mean over
  several measurements; a zero error with a positive score is a certain gain, p = 0);
- Holm (1979), "A simple sequentially rejective multiple test procedure": sort the p-values, and keep the j-th
  smallest (j = 0, 1, ...) while p_(j) <= alpha / (m - j); stop at the first that fails.
Holm holds the chance of keeping any gainless position at most alpha whatever the dependence between the
scores (they share a supernet and batches, so they are correlated), which Bonferroni does too, and it never keeps
fewer positions than Bonferroni. Benjamini-Hochberg's false discovery rate would keep more, but it bounds the
share of wrong positions among those kept, not the chance of a wrong decision, and a search that keeps one
position must not keep a wrong one one time in five.
"""
from __future__ import annotations

import math
from typing import Sequence

ALPHA = 0.05  # the family-wise error rate over the positions tested together
RULE = f"holm-{ALPHA:g}"  # the name a trial records beside its verdicts

# The error that matters is how much a position's score moves from one search to the next (another seed: other
# batches, another supernet), not only the standard error one search measures over its validation batches. Both
# are measured by benchmarks/seed_agreement.py (5 seeds of the quick search); where the spread between searches
# is the larger, the test divides each score by it: the within-search error times the task's factor (the median
# over the positions of between-search spread / within-search error). A task not measured takes the largest.
# Measured 2026-12-07 (`python benchmarks/seed_agreement.py --task car --channels 64 --budget 50G --seeds 5`, and
# `--task sr --scale 4 --budget 120G`; benchmarks/results/seed-agreement-*-2026-12-07.json): the spread between
# searches is the smaller for the median position on both tasks (car 0.46, sr x4 0.87; above 1 only at car's
# position 0, 1.09, and sr's 0 and 2, 1.79 and 1.27, within what an SD from 5 searches can tell apart from 1), so
# the within-search error stands: it includes how much the score drifts over the search's last half.
BETWEEN_SEARCH_FACTOR: dict[str, float] = {"car": 0.46, "sr": 0.87}


def decision_errors(task: str, within: Sequence[float]) -> list[float]:
    """The errors the rule divides by: `within` (each position's within-search standard error) scaled up to the
    spread between searches where that was measured to be larger."""
    factor = BETWEEN_SEARCH_FACTOR.get(task, max(BETWEEN_SEARCH_FACTOR.values(), default=1.0))
    return [max(1.0, factor) * error for error in within]


def one_sided_p(score: float, error: float) -> float:
    """P(Z >= score / error) for a standard normal Z: how often a gainless position scores this high."""
    if not math.isfinite(score):
        return 1.0
    if error <= 0:
        return 0.0 if score > 0 else 1.0
    return 0.5 * math.erfc(score / error / math.sqrt(2))


def holm_passes(scores: Sequence[float], errors: Sequence[float], alpha: float = ALPHA) -> list[bool]:
    """Per position, whether its gain is significant among all of them (Holm's step-down at `alpha`)."""
    if len(scores) != len(errors):
        raise ValueError(f"{len(scores)} scores but {len(errors)} errors; expected one error per score")
    p_values = [one_sided_p(s, e) for s, e in zip(scores, errors)]
    order = sorted(range(len(p_values)), key=lambda i: (p_values[i], i))
    passed = [False] * len(p_values)
    for rank, index in enumerate(order):
        if p_values[index] > alpha / (len(p_values) - rank):
            break
        passed[index] = True
    return passed
