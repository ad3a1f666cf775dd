"""Every budget's trials in one Ray Tune run.

A sweep (or a search of several budgets) asks each budget's own Optuna study for its trials, as a search of that
budget alone does, but runs them all in one Tune run: Tune starts once, trial actors are reused across budgets,
and a worker that finishes one budget's last trial starts another budget's instead of waiting for its own
budget's slowest trial. `BudgetSearch` is Tune's searcher for that run: it asks the budgets' searchers in turn,
the costliest budget first (its trials take longest, so the last trials to start are the shortest, and the run
ends with its workers evenly loaded), and tags each proposal with its budget (`BUDGET_KEY`), which routes the
trial to that budget's settings, parent run and study.
"""
from __future__ import annotations

import pickle

from ray.tune.search import Searcher

BUDGET_KEY = "budget_macs"  # a trial's budget, in its Tune config (not in Optuna's proposal, nor its records)


def own_config(config: dict) -> dict:
    """A trial's config as its budget's study proposed it (what MLflow, the search state and a resume keep)."""
    return {k: v for k, v in config.items() if k != BUDGET_KEY}


class BudgetSearch(Searcher):
    """Tune's searcher over several budgets: `searchers` {budget: that budget's searcher}, `owed` {budget: the
    trials it still runs}. Each budget's searcher sees only its own trials."""

    def __init__(self, searchers: dict, owed: dict, metric, mode) -> None:
        super().__init__(metric=metric, mode=mode)
        self.searchers = dict(searchers)
        self.owed = {budget: int(owed[budget]) for budget in sorted(searchers, reverse=True) if owed[budget] > 0}
        self.budget_of: dict[str, float] = {}

    def suggest(self, trial_id: str):
        for budget, left in self.owed.items():
            if left <= 0:
                continue
            config = self.searchers[budget].suggest(trial_id)
            if config is None:  # that budget's searcher waits (it runs as many at once as it can take)
                continue
            if config == Searcher.FINISHED:
                self.owed[budget] = 0
                continue
            self.owed[budget] -= 1
            self.budget_of[trial_id] = budget
            return {**config, BUDGET_KEY: budget}
        return Searcher.FINISHED if not any(self.owed.values()) else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.budget_of:
            self.searchers[self.budget_of[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        budget = self.budget_of.pop(trial_id, None)
        if budget is not None:
            self.searchers[budget].on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:  # Tune's experiment checkpoint (a resume reads the state instead)
        with open(checkpoint_path, "wb") as out:
            pickle.dump(self.__dict__.copy(), out)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as source:
            self.__dict__.update(pickle.load(source))
