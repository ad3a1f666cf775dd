"""Every budget's trials in one Tune run (orchestrator/budget_search.py): each budget's proposals come from its own
study, exactly as a search of that budget alone would get them, costliest budget first, each tagged with its
budget; a completion reaches its own budget's study only."""
import optuna
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from orchestrator.search.budget_search import BUDGET_KEY, BudgetSearch, own_config
from orchestrator.search.sampler import ReproducibleTPE

SPACE = {"backbone": tune.choice(["c8-b4", "c12-b4", "c16-b4"]), "rate": tune.loguniform(0.1, 10.0)}


def optuna_search(name: str, storage) -> OptunaSearch:
    return OptunaSearch(space=SPACE, metric=["psnr", "macs"], mode=["max", "min"], study_name=name, storage=storage,
                        sampler=ReproducibleTPE(0, n_startup_trials=2))


def score(config: dict) -> dict:
    """A trial's result, a function of its config alone."""
    return {"psnr": 30 + config["rate"] / 10 + len(config["backbone"]) / 100, "macs": 1e9 * config["rate"]}


def run_alone(name: str, trials: int) -> list[dict]:
    """A budget's search on its own: propose, complete, one at a time."""
    searcher = optuna_search(name, optuna.storages.InMemoryStorage())
    configs = []
    for k in range(trials):
        config = searcher.suggest(f"alone-{k}")
        searcher.on_trial_complete(f"alone-{k}", result=score(config))
        configs.append(config)
    return configs


def test_each_budget_gets_what_its_own_search_would_costliest_first():
    storage = optuna.storages.InMemoryStorage()
    budgets = {1.5e9: optuna_search("small", storage), 2e9: optuna_search("large", storage)}
    searcher = BudgetSearch(budgets, {1.5e9: 3, 2e9: 2}, metric=["psnr", "macs"], mode=["max", "min"])
    proposed = []
    for k in range(5):
        config = searcher.suggest(f"t{k}")
        searcher.on_trial_complete(f"t{k}", result=score(own_config(config)))
        proposed.append(config)
    assert searcher.suggest("t5") == Searcher.FINISHED
    assert [c[BUDGET_KEY] for c in proposed] == [2e9, 2e9, 1.5e9, 1.5e9, 1.5e9]
    assert [own_config(c) for c in proposed[:2]] == run_alone("large", 2)
    assert [own_config(c) for c in proposed[2:]] == run_alone("small", 3)
    for name, count in (("small", 3), ("large", 2)):  # each study holds its own budget's trials, completed
        study = optuna.load_study(study_name=name, storage=storage)
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * count


class Waiting(Searcher):
    """A budget's searcher that has nothing to propose until its running trial completes."""

    def __init__(self):
        super().__init__(metric="psnr", mode="max")
        self.running, self.completed = 0, []

    def suggest(self, trial_id):
        if self.running:
            return None
        self.running += 1
        return {"backbone": "c8-b4"}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.running -= 1
        self.completed.append((trial_id, error))


def test_a_budget_that_waits_lets_the_next_budget_propose_and_a_failure_reaches_its_own_searcher():
    large, small = Waiting(), Waiting()
    searcher = BudgetSearch({2e9: large, 1.5e9: small}, {2e9: 2, 1.5e9: 1}, metric="psnr", mode="max")
    assert searcher.suggest("a")[BUDGET_KEY] == 2e9
    assert searcher.suggest("b")[BUDGET_KEY] == 1.5e9  # the large budget waits for its first trial
    assert searcher.suggest("c") is None  # both wait; neither has finished its trials
    searcher.on_trial_complete("a", error=True)
    assert large.completed == [("a", True)] and small.completed == []
    assert searcher.suggest("d")[BUDGET_KEY] == 2e9
    searcher.on_trial_complete("b", result={"psnr": 30.0})
    searcher.on_trial_complete("d", result={"psnr": 30.0})
    assert searcher.suggest("e") == Searcher.FINISHED
    assert small.completed == [("b", False)] and large.completed == [("a", True), ("d", False)]


def test_a_budget_that_owes_nothing_is_never_asked():
    never = Waiting()
    never.suggest = lambda trial_id: (_ for _ in ()).throw(AssertionError("asked a budget that owes nothing"))
    searcher = BudgetSearch({2e9: never, 1.5e9: Waiting()}, {2e9: 0, 1.5e9: 1}, metric="psnr", mode="max")
    assert searcher.suggest("a")[BUDGET_KEY] == 1.5e9
