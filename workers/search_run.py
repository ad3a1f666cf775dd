"""`run_search`: the differentiable search (search_space/search.py) on the task's data pipeline.

Weight steps and architecture steps draw separate batches from two seeded samplers over the training
images, as DARTS splits its training data; the position scores are measured on a third, fixed set of
batches that no step trains on. Where the profile searches at a proxy scale (DARTS searches with fewer
channels and evaluates scaled up), the supernet is `profile.proxy_width` times as wide as the target
backbone, and the genotype is derived again, from the same scores, on the full-width target backbone and
within the user's budget. Plain function: `report` is any callable.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from search_space.genotype import Genotype
from search_space.registry import get_kind
from search_space.search import SearchOutcome, derive_genotype, search_architecture
from search_space.significance import RULE, holm_passes, decision_errors
from search_space.supernet import Supernet

from .device import to_device, training_device
from .profiles import Profile
from .shared_config import SearchRates, proxy_budget
from .tasks import TaskSpec
from .train import DataSpec, Report, make_sampler

SCORE_BATCHES = 4  # held-out batches the position scores are measured on


@dataclass(frozen=True)
class SearchConfig(SearchRates):
    task: TaskSpec
    budget_macs: float
    channels: int  # the target width; the supernet is the profile's proxy of it
    blocks: int
    stages: int

    def base_genotype(self, channels: int | None = None) -> Genotype:
        return Genotype(task=self.task.name, scale=self.task.scale, in_channels=self.task.in_channels,
                        channels=channels or self.channels, blocks=self.blocks, stages=self.stages,
                        attention=self.attention, max_keys=self.max_keys,
                        adaptive=get_kind(self.attention).adaptive)


@dataclass
class SearchResult:
    genotype: Genotype  # at the target width, within the budget
    proxy_genotype: Genotype  # the same positions and keys at the search width (what the trial proxy-trains)
    outcome: SearchOutcome
    supernet_state: dict  # the proxy supernet's weights, keyed as the derived network's


def _alternate(weight_batches, arch_batches):
    while True:
        yield next(weight_batches)
        yield next(arch_batches)


def run_search(config: SearchConfig, data: DataSpec, profile: Profile, report: Report | None = None,
               device: torch.device | None = None) -> SearchResult:
    """`device` defaults to `training_device()` (the GPU when there is one)."""
    device = device or training_device()
    torch.manual_seed(config.seed)
    target = config.base_genotype()
    proxy = config.base_genotype(profile.proxy_channels(config.channels))
    supernet = Supernet(base=proxy).to(device)
    batches = to_device(_alternate(make_sampler(config.task, data.train, profile, config.seed),
                                   make_sampler(config.task, data.train, profile, config.seed + 1)), device)
    held_out = to_device(make_sampler(config.task, data.train, profile, config.seed + 2), device)
    outcome = search_architecture(supernet=supernet, batches=batches,
                                  budget_macs=proxy_budget(target, proxy, config.budget_macs),
                                  steps=profile.search_steps, weight_lr=config.weight_lr, arch_lr=config.arch_lr,
                                  penalty_weight=config.penalty_weight, gate_temperature=config.gate_temperature,
                                  report=report, report_every=profile.log_every, warmup_steps=profile.search_warmup,
                                  score_batches=[next(held_out) for _ in range(SCORE_BATCHES)],
                                  precision=profile.precision)
    genotype = derive_genotype(base=target, position_scores=outcome.position_scores, active_keys=outcome.active_keys,
                               budget_macs=config.budget_macs, score_errors=outcome.score_errors,
                               key_caps=outcome.key_caps or None)
    return SearchResult(genotype=genotype, proxy_genotype=genotype.replace(channels=proxy.channels), outcome=outcome,
                        supernet_state={k.removeprefix("net."): v for k, v in supernet.state_dict().items()})


def save_search_result(result: SearchResult, path) -> None:
    """The search's outcome as plain JSON and tensors (read back with weights_only), written atomically: a trial
    interrupted after its search does not search again."""
    import dataclasses
    import json

    from .atomic import write_atomically
    outcome = {k: v for k, v in dataclasses.asdict(result.outcome).items() if k != "genotype"}
    payload = {"genotype": result.genotype.to_json(), "proxy_genotype": result.proxy_genotype.to_json(),
               "outcome_genotype": result.outcome.genotype.to_json(), "outcome": json.dumps(outcome),
               "supernet_state": {k: v.detach().cpu() for k, v in result.supernet_state.items()}}
    write_atomically(path, lambda temporary: torch.save(payload, temporary))


def load_search_result(path) -> SearchResult:
    import json
    payload = torch.load(path, map_location="cpu", weights_only=True)
    outcome = SearchOutcome(genotype=Genotype.from_json(payload["outcome_genotype"]), **json.loads(payload["outcome"]))
    return SearchResult(genotype=Genotype.from_json(payload["genotype"]),
                        proxy_genotype=Genotype.from_json(payload["proxy_genotype"]), outcome=outcome,
                        supernet_state=payload["supernet_state"])


def position_scores(outcome: SearchOutcome) -> list[dict]:
    """Per position: its mean perturbation score, how settled it is (the spread, and the standard error of the
    mean), the error the significance rule divided it by (`decision_error`: the standard error, or the spread
    between searches where that is larger), whether its gain passed the rule (search_space/significance.py,
    named in `rule`), its final probability, and the mean active keys per query over its reference layers at the
    end of the search (all keys where the kind has no gates)."""
    keys = [sum(k) / len(k) if k else 0.0 for k in outcome.active_keys]
    errors = decision_errors(outcome.genotype.task, outcome.score_errors)
    passed = holm_passes(outcome.position_scores, errors)

    def digits(value: float) -> float:  # six significant digits: a verdict recomputed from them is the same
        return float(f"{value:.6g}")
    return [{"position": i, "score": digits(score), "spread": digits(spread), "stderr": digits(error),
             "decision_error": digits(tested), "passed": ok, "rule": RULE, "prob": round(prob, 4),
             "active_keys": round(key, 3)}
            for i, (score, spread, error, tested, ok, prob, key) in enumerate(zip(
                outcome.position_scores, outcome.score_spread, outcome.score_errors, errors, passed,
                outcome.position_probs, keys))]



