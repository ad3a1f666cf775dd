"""Optuna's TPE, made reproducible across an interruption.

A seeded `TPESampler` draws from one random stream for the whole study, so a search resumed after a crash
(a fresh sampler, the stream restarted) would propose the first configurations again, and one that completes
differs from an uninterrupted run. Here each trial gets a fresh TPE whose seed is derived from the study's seed,
the number of trials completed so far and the number still running that were asked before it. TPE's proposal
depends only on that seed and the completed trials, so with one trial at a time the k-th new trial is the same
whether or not the search was interrupted before it (the interrupted trials are marked failed first); and no two
trials of a study are proposed from the same seed and history.

With `distinct` (a sweep's trials, whose only choice is their backbone: a trial that repeats one gives the same
result again), a categorical value that another trial of the study already has is replaced by the first choice
that none has, while one is left. That depends on the study's trials alone, so it is as reproducible.
"""
from __future__ import annotations

import hashlib

import optuna
from optuna.trial import TrialState


class ReproducibleTPE(optuna.samplers.BaseSampler):
    def __init__(self, seed: int, n_startup_trials: int = 4, distinct: bool = False) -> None:
        self.seed, self.n_startup_trials, self.distinct = seed, n_startup_trials, distinct
        self._current = self._tpe(0)

    def _tpe(self, completed: int, running_before: int = 0) -> optuna.samplers.TPESampler:
        key = f"{self.seed}/{completed}/{running_before}".encode()
        derived = int.from_bytes(hashlib.sha256(key).digest()[:4], "little")
        return optuna.samplers.TPESampler(seed=derived, n_startup_trials=self.n_startup_trials)

    def before_trial(self, study, trial) -> None:
        completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        self._current = self._tpe(completed, sum(1 for t in running if t.number < trial.number))
        self._current.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._current.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._current.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        value = self._current.sample_independent(study, trial, param_name, param_distribution)
        if self.distinct and isinstance(param_distribution, optuna.distributions.CategoricalDistribution):
            taken = {t.params[param_name] for t in study.get_trials(deepcopy=False)
                     if t.number != trial.number and param_name in t.params}
            if value in taken:
                value = next((choice for choice in param_distribution.choices if choice not in taken), value)
        return value

    def after_trial(self, study, trial, state, values) -> None:
        self._current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:  # Optuna calls this for parallel workers; the seeds here are derived, not drawn
        pass
