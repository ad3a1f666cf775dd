"""A sweep's one supernet on the task's data: which widths it must cover, its training (a straight
loop over search_space/shared_search.py's steps, checkpointed and resumable), and each backbone's search result
derived from it, in the form a trial's search gives (workers/search_run.py's `SearchResult`), so that the
proxy training that follows is the same.

The supernet is built at the profile's proxy scale: a budget's backbone of c channels is searched at
`profile.proxy_channels(c)`, as a single search searches it. Every backbone that any budget offers
(workers/backbones.py) is one of its widths. A width's architecture steps price its keys against the tightest
budget that offers it, scaled to the proxy as a single search scales it. Plain functions: no Ray, no MLflow.
"""
from __future__ import annotations

import os

import torch

from search_space.elastic import ElasticSupernet
from search_space.search import SearchOutcome
from search_space.shared_search import SharedSupernetSearch, derive_for_budget, measure_width

from .backbones import parse_backbone
from .data import DataSpec
from .device import to_device, training_device
from .profiles import Profile
from .search_run import SearchResult
from .shared_config import SharedConfig, covered_sizes
from .tasks import TaskSpec
from .train import Report, TrainHooks, make_sampler

SCORE_BATCHES = 8  # held-out batches a width's position scores are measured on (their pairs give the error)


def build_shared_search(config: SharedConfig, profile: Profile, device: torch.device | None = None,
                        reduce_gradients=None) -> SharedSupernetSearch:
    priced = covered_sizes(config, profile)
    torch.manual_seed(config.seed)
    elastic = ElasticSupernet(base=config.genotype(*max(priced)), sizes=list(priced))
    elastic.to(device or training_device())
    return SharedSupernetSearch(elastic, priced, weight_lr=config.weight_lr, arch_lr=config.arch_lr,
                                penalty_weight=config.penalty_weight, gate_temperature=config.gate_temperature,
                                seed=config.seed, reduce_gradients=reduce_gradients, precision=profile.precision)


def train_shared_supernet(config: SharedConfig, data: DataSpec, profile: Profile, *, steps: int | None = None,
                          report: Report | None = None, checkpoint_path: str | None = None,
                          checkpoint_every: int = 0, stop_after: int | None = None,
                          device: torch.device | None = None, hooks: TrainHooks | None = None,
                          reduce_gradients=None) -> SharedSupernetSearch:
    """Train the sweep's supernet for `steps` (default: the profile's search steps), the first
    `profile.search_warmup` of them on the weights only. With `checkpoint_path`, its whole state is written
    there every `checkpoint_every` steps and at the end, and a checkpoint found there is continued: the result
    equals an uninterrupted run's. `stop_after` ends early without changing the schedule (an interruption).
    A data-parallel worker (orchestrator/shared_supernet.py) passes `reduce_gradients` and the `hooks` of its
    patch stream and checkpoints (workers/train.py's TrainHooks: a rank's own seed, its share of the batch,
    and a callback for each checkpoint written)."""
    hooks = hooks or TrainHooks()
    total = profile.search_steps if steps is None else steps
    device = device or training_device()
    search = build_shared_search(config, profile, device, reduce_gradients)
    seed = config.seed if hooks.sampler_seed is None else hooks.sampler_seed
    weight_batches = make_sampler(config.task, data.train, profile, seed, hooks.batch_share)
    arch_batches = make_sampler(config.task, data.train, profile, seed + 1, hooks.batch_share)
    step = 0
    if checkpoint_path and os.path.isfile(checkpoint_path):
        saved = load_shared_checkpoint(checkpoint_path)
        search.load_state_dict(saved["search"])
        if hooks.sampler_seed is None:  # a rank's own stream restarts rather than resuming rank 0's
            weight_batches.set_state(saved["weight_sampler"])
            arch_batches.set_state(saved["arch_sampler"])
        torch.set_rng_state(saved["torch_rng"])
        step = saved["step"]
    weight_on, arch_on = to_device(weight_batches, device), to_device(arch_batches, device)
    last = min(total, stop_after) if stop_after is not None else total
    while step < last:
        losses = search.weight_step(next(weight_on))
        record = search.arch_step(next(arch_on), update=step >= profile.search_warmup)
        step += 1
        if report and (step % profile.log_every == 0 or step == last):
            report({"step": step, "total_steps": total, "loss": losses[search.elastic.sizes[-1]], **record})
        if checkpoint_path and ((checkpoint_every and step % checkpoint_every == 0) or step == last):
            save_shared_checkpoint(checkpoint_path, search, step, weight_batches, arch_batches, config)
            if hooks.on_checkpoint:
                hooks.on_checkpoint(checkpoint_path, step, {})
    return search


def save_shared_checkpoint(path: str, search: SharedSupernetSearch, step: int, weight_batches, arch_batches,
                           config: SharedConfig) -> None:
    """The supernet's whole state, and the configuration it was built from (so that a trial rebuilds it)."""
    from .atomic import write_atomically
    payload = {"search": search.state_dict(), "step": step, "sizes": [list(s) for s in search.elastic.sizes],
               "config": config.fields(), "task": config.task.label,
               "base": search.elastic.base.to_json(), "weight_sampler": weight_batches.state(),
               "arch_sampler": arch_batches.state(), "torch_rng": torch.get_rng_state()}
    write_atomically(path, lambda temporary: torch.save(payload, temporary))


def load_shared_checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_shared_search(path, task: TaskSpec, profile: Profile,
                       device: torch.device | None = None) -> tuple[SharedSupernetSearch, SharedConfig]:
    """The trained supernet of a checkpoint (a path, or its bytes), rebuilt from the configuration it holds
    (ValueError where it was trained for another task)."""
    import io
    saved = load_shared_checkpoint(io.BytesIO(path) if isinstance(path, bytes) else path)
    if saved["task"] != task.label:
        raise ValueError(f"{path}: the shared supernet was trained for {saved['task']}, not {task.label}")
    config = SharedConfig.from_fields(task, saved["config"])
    search = build_shared_search(config, profile, device)
    search.load_state_dict(saved["search"])
    return search, config


def derive_backbone(search: SharedSupernetSearch, config: SharedConfig, data: DataSpec, profile: Profile,
                    backbone: str, budget_macs: float, device: torch.device | None = None) -> SearchResult:
    """One budget's backbone, derived from the shared supernet: its position scores and keys measured at its
    proxy width on held-out batches, its genotype at the target width within `budget_macs`, and the supernet's
    weights at that width (what its proxy training inherits)."""
    device = device or training_device()
    channels, blocks = parse_backbone(backbone)
    target = config.genotype(channels, blocks)
    width = profile.proxy_channels(channels)
    held_out = to_device(make_sampler(config.task, data.train, profile, config.seed + 2), device)
    view = search.elastic.at(width, blocks)
    scores = measure_width(view, [next(held_out) for _ in range(SCORE_BATCHES)])
    genotype = derive_for_budget(scores, target, budget_macs)
    probs = [float(p) for p in view.position_probs().detach()]
    outcome = SearchOutcome(genotype=genotype.replace(channels=width), position_probs=probs,
                            active_keys=scores.active_keys, position_scores=scores.position_scores,
                            score_spread=[e * SCORE_BATCHES ** 0.5 for e in scores.score_errors],
                            score_errors=scores.score_errors, key_caps=scores.key_caps)
    return SearchResult(genotype=genotype, proxy_genotype=genotype.replace(channels=width), outcome=outcome,
                        supernet_state=inherited_state(search, width, blocks))


def inherited_state(search: SharedSupernetSearch, width: int, depth: int) -> dict:
    """The supernet's weights at a size, keyed as a derived network's (a network of that size, with or without
    attention, takes those of its own tensors it finds here)."""
    return {k.removeprefix("net."): v for k, v in search.elastic.at(width, depth).state_dict().items()}
