"""Durable search state and resume: the sampler proposes after an interruption what it would have without one;
the state survives its writer and knows a dead driver; an interrupted trial continues from its checkpoint.
A sweep killed with -9 and finished by `resume`: tests/test_orchestrator_verbs.py."""
import json
import os
import subprocess
import sys

import optuna
import pytest

from orchestrator.search.sampler import ReproducibleTPE
from orchestrator.search.state import SearchState

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial) -> tuple[float, float]:
    x = trial.suggest_float("x", -3, 3)
    width = trial.suggest_categorical("width", [32, 48, 64])
    return -(x - 1) ** 2 + width / 100, width * (1 + x * x)


def completed_params(study) -> list[dict]:
    return [t.params for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]


def test_sampler_proposes_the_same_trials_after_an_interruption():
    uninterrupted = optuna.create_study(directions=["maximize", "minimize"], sampler=ReproducibleTPE(7, 4))
    uninterrupted.optimize(objective, n_trials=8)

    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"],
                                sampler=ReproducibleTPE(7, 4))
    first.optimize(objective, n_trials=5)
    dead = first.ask()  # the sixth trial was running when the driver died
    objective(dead)
    # resume: a new process, a new sampler; the stale trial failed and its config queued again
    storage.set_trial_state_values(dead._trial_id, optuna.trial.TrialState.FAIL)
    resumed = optuna.load_study(study_name="s", storage=storage, sampler=ReproducibleTPE(7, 4))
    resumed.enqueue_trial(dead.params)
    resumed.optimize(objective, n_trials=3)
    assert completed_params(resumed) == completed_params(uninterrupted)
    assert len({json.dumps(p, sort_keys=True) for p in completed_params(uninterrupted)}) == 8  # none twice


def test_concurrent_trials_get_different_proposals():
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=ReproducibleTPE(3, 4))
    asked = [study.ask() for _ in range(3)]  # three in flight, none completed
    for trial in asked:
        objective(trial)
    assert len({json.dumps(t.params, sort_keys=True) for t in asked}) == 3


def test_distinct_proposals_take_every_backbone_once_before_any_twice():
    choices = ["c8-b4", "c12-b4", "c16-b4"]

    def backbone_only(trial):
        return len(trial.suggest_categorical("backbone", choices))
    for seed in range(5):
        study = optuna.create_study(sampler=ReproducibleTPE(seed, 4, distinct=True))
        study.optimize(backbone_only, n_trials=4)
        proposed = [t.params["backbone"] for t in study.trials]
        assert sorted(proposed[:3]) == sorted(choices) and proposed[3] in choices
    plain = [optuna.create_study(sampler=ReproducibleTPE(seed, 4)) for seed in range(5)]
    for study in plain:
        study.optimize(backbone_only, n_trials=3)
    assert any(len({t.params["backbone"] for t in s.trials}) < 3 for s in plain)  # what distinct is for


def test_state_survives_its_writer_and_knows_a_dead_driver(tmp_path):
    state = SearchState(tmp_path)
    state.begin("p1", "e1", {"budget": 2e9})
    state.trial_started("p1", "t1", {"x": 1}, 0)
    state.trial_finished("p1", "t1", {"psnr": 30.0})
    state.trial_recorded("p1", "t1", "r1", "file:///a")
    state.trial_started("p1", "t2", {"x": 2}, 0)
    assert SearchState(tmp_path).search("p1")["status"] == "running"  # this process is its driver
    script = (f"from orchestrator.search.state import SearchState; s = SearchState({str(tmp_path)!r}); "
              f"s.begin('p2', 'e1', {{}}); s.trial_started('p2', 't9', {{}}, 0)")
    writer = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert writer.returncode == 0
    reread = SearchState(tmp_path)
    assert reread.search("p2")["status"] == "interrupted"  # its driver has exited, the search never ended
    trials = reread.trials("p1")
    assert [(t["trial_id"], t["state"]) for t in trials] == [("t1", "finished"), ("t2", "running")]
    assert trials[0]["result"] == {"psnr": 30.0} and trials[0]["config"] == {"x": 1}
    reread.end("p1", "killed")
    assert reread.search("p1")["status"] == "killed"


def test_same_seed_same_genotype_and_psnr_on_the_cpu():
    """A trial is a function of its config and seed on the CPU (what resume relies on to rebuild the front)."""
    from orchestrator.search.trial import TrialSettings, run_trial
    from workers.backbones import feasible_backbones
    from workers.data import embedded_sets
    from workers.profiles import get_profile
    from workers.tasks import task_from_options
    from workers.train import DataSpec
    task, profile = task_from_options("car"), get_profile("smoke")
    backbones, _ = feasible_backbones(task, profile, 2e9)
    settings = TrialSettings(task=task, budget_macs=2e9, profile=profile, data=DataSpec(*embedded_sets()), seed=3)
    params = {"backbone": backbones[0], "penalty_weight": 1.0, "weight_lr": profile.weight_lr,
              "arch_lr": profile.arch_lr, "gate_temperature": 1.0}
    first, second = run_trial(params, settings), run_trial(params, settings)
    assert first["genotype"] == second["genotype"]
    assert first["psnr"] == second["psnr"] and first["macs"] == second["macs"]
    assert first["position_scores"] == second["position_scores"]


def test_an_interrupted_trial_continues_from_its_checkpoint(tmp_path, monkeypatch):
    """A trial stopped during its proxy training (after its search) runs again without searching again, from
    its last training checkpoint, and ends exactly as an uninterrupted trial."""
    import dataclasses

    import workers.search_run as search_module  # run_trial imports train and run_search from these when it runs
    import workers.train as train_module
    from orchestrator.search.trial import TrialSettings, run_trial, trial_folder
    from workers.backbones import feasible_backbones
    from workers.data import embedded_sets
    from workers.profiles import get_profile
    from workers.tasks import task_from_options
    from workers.train import DataSpec
    task, profile = task_from_options("car"), get_profile("smoke")
    settings = TrialSettings(task=task, budget_macs=2e9, profile=profile, data=DataSpec(*embedded_sets()), seed=5)
    params = {"backbone": feasible_backbones(task, profile, 2e9)[0][0], "penalty_weight": 1.0,
              "weight_lr": profile.weight_lr, "arch_lr": profile.arch_lr, "gate_temperature": 1.0}
    uninterrupted = run_trial(params, settings)

    kept = dataclasses.replace(settings, checkpoint_root=str(tmp_path))
    real_train, real_search = train_module.train, search_module.run_search

    def killed_halfway(**kwargs):
        real_train(**kwargs, stop_after=profile.train_steps // 2)
        raise RuntimeError("the worker died")
    monkeypatch.setattr(train_module, "train", killed_halfway)
    with pytest.raises(RuntimeError, match="worker died"):
        run_trial(params, kept)
    folder = trial_folder(kept, params)
    assert (folder / "search.pt").is_file() and (folder / "train.pt").is_file()

    searches = []
    monkeypatch.setattr(train_module, "train", real_train)
    monkeypatch.setattr(search_module, "run_search", lambda *a, **k: searches.append(1) or real_search(*a, **k))
    resumed = run_trial(params, kept)
    assert searches == []  # the search was not run again
    assert resumed["genotype"] == uninterrupted["genotype"] and resumed["psnr"] == uninterrupted["psnr"]
    assert not folder.exists()  # a finished trial's progress is removed


def test_resume_retrains_only_the_winners_not_yet_retrained(tmp_path, monkeypatch):
    """Each finished retrain is recorded as it ends; a resumed search skips those, retrains the rest, and the
    budget's alias still goes to the best winner only."""
    import orchestrator.retrain.winners as winners_module
    from orchestrator.runtime.records import TrialRecord
    from orchestrator.search.job import retrain_each
    state = SearchState(tmp_path)
    state.begin("p", "e", {})
    state.retrain_finished("p", "run-a", {"trial_run_id": "run-a", "psnr": 31.0, "alias": "models:/acla-car-q10@b"})
    calls = []

    def retrain(*, winners, set_alias, **kwargs):
        calls.append((winners[0].run_id, set_alias))
        return [{"trial_run_id": winners[0].run_id, "psnr": 30.0, "alias": None}]
    monkeypatch.setattr(winners_module, "retrain_winners", retrain)
    winners = [TrialRecord(trial=name, run_id=name, params={}, result={}, artifact_uri="") for name in ("run-a", "run-b")]
    outcomes = retrain_each(None, None, None, "e", "p", None, winners, 1, state)
    assert calls == [("run-b", False)]  # run-a was done before the interruption
    assert [o["trial_run_id"] for o in outcomes] == ["run-a", "run-b"]
    assert set(SearchState(tmp_path).retrains("p")) == {"run-a", "run-b"}


def test_a_second_resume_owes_only_what_is_still_unfinished(tmp_path):
    """A config cut off twice is owed once; one that an earlier resume already ran to its end is not owed."""
    from orchestrator.search.state import resume_plan
    state = SearchState(tmp_path)
    state.begin("p", "e", {})
    for trial_id, config in (("t1", {"x": 1}), ("t2", {"x": 2}), ("t3", {"x": 2}), ("t4", {"x": 3}), ("t5", {"x": 3})):
        state.trial_started("p", trial_id, config, 0)
    state.trial_finished("p", "t1", {"psnr": 30.0})
    state.trial_recorded("p", "t1", "r1", "file:///a")
    state.trial_interrupted("p", "t2")  # cut off by the first crash ...
    state.trial_finished("p", "t3", {"psnr": 29.0})
    state.trial_recorded("p", "t3", "r3", "file:///b")  # ... and run to its end by the first resume
    state.trial_interrupted("p", "t4")  # cut off by the first crash, and again (t5) by the second
    plan = resume_plan(state, "p")
    assert plan.done == 2 and [r.run_id for r in plan.recorded] == ["r1", "r3"]
    assert plan.interrupted == [{"x": 3}]
    assert {t["trial_id"]: t["state"] for t in state.trials("p")}["t5"] == "interrupted"
