"""The width line: does search beat width?

At each budget of a search or a sweep, the plain backbone that best fills the budget (the costliest of the budget's
backbones, no attention) is trained alike to the trials: at the trials' proxy width, for as many weight steps as a
trial takes (its search's and its proxy training's), on the same data stream (the search's seed), and scored on the
same validation images in the same metric. In a sweep, whose trials inherit the shared supernet's weights at their
width and fine-tune them, the width net inherits its own width's and fine-tunes them alike (the supernet's weights
with every position off: the plain network of that width). It is recorded as an MLflow run (`acla_kind` width) under
the search's parent, drawn as a second line beside the front, and the summary and `report` state each budget's
searched net's gain over it. One seed gives one paired difference. With `--width-seeds N` (N >= 2), the best trial's
genotype and the width net are each trained alike from scratch with N seeds (seed s: the same data stream for both),
and the gain is the mean of the N paired differences with its 95% interval, as `ablate` reports them.
"""
from __future__ import annotations

from workers.backbones import bare_macs, feasible_backbones, parse_backbone


def width_backbone(task, profile, budget_macs: float) -> str:
    """The plain backbone that best fills the budget: the costliest of the budget's backbones, bare."""
    backbones, _ = feasible_backbones(task, profile, budget_macs)
    return max(backbones, key=lambda label: bare_macs(task, *parse_backbone(label), profile.stages))


def train_width(settings, backbone: str, *, genotype_json: str | None = None, seed: int | None = None) -> dict:
    """Train and score the plain `backbone` as a trial is trained and scored (no Ray, MLflow or store here): at
    the proxy width, for a trial's search and proxy-training steps, with the search's seed (or `seed`). With
    `genotype_json`, that searched genotype instead of the plain backbone, trained the same way from scratch.
    In a sweep (`settings.shared_supernet`), as a sweep's trial: from the shared supernet's weights at its width,
    fine-tuned for the profile's `sweep_steps()`."""
    from search_space.backbone import build_network
    from search_space.cost import count_parameters, genotype_macs
    from search_space.genotype import Genotype
    from workers.device import training_device
    from workers.train import train
    task, profile = settings.task, settings.profile
    if genotype_json is None:
        channels, blocks = parse_backbone(backbone)
        target = Genotype(task=task.name, scale=task.scale, in_channels=task.in_channels, channels=channels,
                          blocks=blocks, stages=profile.stages)
    else:
        target = Genotype.from_json(genotype_json)
    proxy = target.replace(channels=profile.proxy_channels(target.channels))
    steps, inherited = profile.search_steps + profile.train_steps, None
    if settings.shared_supernet:  # a sweep's: from the shared supernet at its width, fine-tuned as its trials are
        from workers.shared_run import inherited_state, load_shared_search
        shared, _ = load_shared_search(settings.shared_supernet, task, profile, training_device())
        steps, inherited = profile.sweep_steps(), inherited_state(shared, proxy.channels, proxy.blocks)
    metrics = train(genotype=proxy, task=task, data=settings.data, profile=profile, steps=steps, init_state=inherited,
                    seed=settings.seed if seed is None else seed, device=training_device()).metrics
    return {"psnr": metrics[task.headline_metric], "psnr_y": metrics["psnr_y"], "psnr_rgb": metrics["psnr_rgb"],
            "input_psnr": metrics["input_" + task.headline_metric], "macs": genotype_macs(target),
            "proxy_macs": genotype_macs(proxy), "params": count_parameters(build_network(target)), "steps": steps}


def tune_width(settings, backbone: str, genotype_json: str | None = None, seed: int | None = None) -> dict:
    """Ray's view of `train_width`: as many torch threads as CPUs granted."""
    import time

    from orchestrator.runtime.cluster import use_granted_cpus
    use_granted_cpus()
    started = time.perf_counter()
    return {**train_width(settings, backbone, genotype_json=genotype_json, seed=seed),
            "seconds": time.perf_counter() - started}


WIDTH_METRICS = ("psnr", "psnr_y", "psnr_rgb", "input_psnr", "macs", "proxy_macs", "params", "steps", "seeds",
                 "gain_mean", "gain_low", "gain_high", "gain_rgb_mean", "gain_rgb_low", "gain_rgb_high")
# and, where the width net was trained here, its wall time in Ray (`seconds`)


def recorded_width(client, experiment_id: str, parent_id: str, budget: float) -> dict | None:
    """The width point already recorded under this parent (a resumed search), or None."""
    found = client.search_runs([experiment_id], f"tags.acla_kind = 'width' and tags.mlflow.parentRunId = "
                                                f"'{parent_id}' and attributes.status = 'FINISHED'")
    if not found:
        return None
    run = found[0]
    return {"run_id": run.info.run_id, "backbone": run.data.params["backbone"], "budget_macs": budget,
            **({"net": run.data.params["net"]} if "net" in run.data.params else {}),
            **{k: run.data.metrics[k] for k in WIDTH_METRICS if k in run.data.metrics}}


def start_width_points(searches: list[tuple], resources: dict, client, experiment_id: str, *, seeds: int = 1,
                       resumed: set | None = None) -> tuple[dict, list]:
    """Each budget's width net, started: the point already recorded under its parent (looked up only for the
    parents in `resumed`, a resumed search's; all when None), or its training started now as a Ray task with
    `resources`, so several budgets' nets share the cluster and train while the driver does other work (sends the
    trials' records to a tracking server that may be away). `searches`: (settings, parent run id, best trial's
    record) of each budget (the record's `trial` and `result`; its run id may still be unknown). With `seeds` >= 2,
    each budget's best genotype and its width net are also trained alike with that many seeds. Returns
    (the points found, the trainings started) for `finish_width_points`."""
    import ray
    remote = ray.remote(num_cpus=resources["cpu"], num_gpus=resources.get("gpu", 0))(tune_width)
    points, started = {}, []
    for settings, parent_id, best in searches:
        budget = settings.budget_macs
        reuse = resumed is None or parent_id in resumed
        points[budget] = recorded_width(client, experiment_id, parent_id, budget) if reuse else None
        if points[budget] is None:
            backbone = width_backbone(settings.task, settings.profile, budget)
            first = remote.remote(settings, backbone)
            seeded = start_seeded(remote, settings, backbone, best, seeds) if seeds >= 2 and best is not None else None
            started.append((settings, parent_id, best, backbone, first, seeded))
    return points, started


def finish_width_points(begun: tuple[dict, list], client, experiment_id: str, run_ids: dict | None = None) -> dict:
    """The width nets `start_width_points` started, waited for and recorded, {budget: point}; `run_ids` ({trial
    id: MLflow run id}) names the best trial's run where its record did not know it yet."""
    import ray
    from mlflow.entities import Param
    points, started = begun
    for settings, parent_id, best, backbone, first, seeded in started:
        result = ray.get(first)
        params = [Param("backbone", backbone), Param("positions", "none"), Param("seed", str(settings.seed)),
                  Param("precision", settings.profile.precision)]
        if seeded is not None:
            result.update(seeded_gain(*seeded, first_plain=result))
            params.append(Param("searched_run_id", (run_ids or {}).get(best.trial) or best.run_id))
        points[settings.budget_macs] = record_width(client, experiment_id, parent_id, settings, backbone, result, params)
    return points


def record_width(client, experiment_id: str, parent_id: str, settings, backbone: str, result: dict,
                 params: list) -> dict:
    """A width net trained: its MLflow run under the search's parent, and its point."""
    from mlflow.entities import Metric, Param
    budget = settings.budget_macs
    channels, blocks = parse_backbone(backbone)
    run = client.create_run(experiment_id, run_name=f"width-{channels}x{blocks}",
                            tags={"mlflow.parentRunId": parent_id, "acla_kind": "width", "budget_macs": str(int(budget))})
    client.log_batch(run.info.run_id, metrics=[Metric(k, float(result[k]), 0, 0) for k in WIDTH_METRICS + ("seconds",)
                                               if result.get(k) is not None],
                     params=params + [Param("net", f"{channels}x{blocks}")])
    client.set_terminated(run.info.run_id, "FINISHED")
    return {"run_id": run.info.run_id, "backbone": backbone, "net": f"{channels}x{blocks}", "budget_macs": budget,
            **result}


def start_seeded(remote, settings, backbone: str, best, seeds: int) -> tuple:
    """The best trial's genotype and the width net, each to be trained from scratch with seeds seed..seed+N-1
    (seed s the same data stream for both), as Ray tasks (`remote`: tune_width's), started now; the width net at
    the search's own seed is the width point itself."""
    seed_list = [settings.seed + k for k in range(seeds)]
    searched = [remote.remote(settings, backbone, best.result["genotype"], s) for s in seed_list]
    plain = [remote.remote(settings, backbone, None, s) for s in seed_list[1:]]
    return searched, plain, seeds


def seeded_gain(searched: list, plain: list, seeds: int, first_plain: dict) -> dict:
    """The seeded trainings' paired gain (`start_seeded`'s tasks): its mean and 95% interval, headline and RGB
    (where the task has it). `first_plain`: the width net at the search's own seed."""
    import ray

    from workers.ablation import paired_interval
    ours, theirs = ray.get(searched), [first_plain, *ray.get(plain)]
    out = {"seeds": seeds}
    for metric, key in (("psnr", "gain"), ("psnr_rgb", "gain_rgb")):
        if all(r.get(metric) is not None for r in ours + theirs):
            interval = paired_interval([a[metric] - b[metric] for a, b in zip(ours, theirs)])
            out.update({f"{key}_mean": interval["mean"], f"{key}_low": interval["low"], f"{key}_high": interval["high"]})
    return out


def width_points(client, experiment_id: str) -> list[dict]:
    """Every finished width point of the experiment, the latest per budget, by cost."""
    runs = client.search_runs([experiment_id], "tags.acla_kind = 'width' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time ASC"])
    latest = {}
    for run in runs:
        latest[float(run.data.tags.get("budget_macs", "nan"))] = {
            "run_id": run.info.run_id, "backbone": run.data.params.get("backbone", ""),
            "net": run.data.params.get("net", ""), "budget_macs": float(run.data.tags.get("budget_macs", "nan")),
            **{k: run.data.metrics[k] for k in WIDTH_METRICS if k in run.data.metrics}}
    return sorted(latest.values(), key=lambda p: p["macs"])


def gain_over_width(width: dict, trials: list[dict]) -> dict:
    """The best searched trial within the width point's budget against it, in the headline metric (and RGB where
    both have it): {best, gain, gain_rgb, beats}. One seed: a single paired difference, no interval."""
    within = [t for t in trials if t["macs"] <= width["budget_macs"]]
    if not within:
        return {"best": None, "gain": None, "gain_rgb": None, "beats": False}
    best = max(within, key=lambda t: t["psnr"])
    gain_rgb = (best["psnr_rgb"] - width["psnr_rgb"]
                if best.get("psnr_rgb") is not None and width.get("psnr_rgb") is not None else None)
    gain = {"best": best.get("run_id"), "gain": best["psnr"] - width["psnr"], "gain_rgb": gain_rgb,
            "beats": best["psnr"] > width["psnr"]}
    if width.get("gain_low") is not None:  # trained alike with several seeds: the paired mean and its interval
        gain["interval"] = {"mean": width["gain_mean"], "low": width["gain_low"], "high": width["gain_high"],
                            "seeds": int(width["seeds"])}
        gain["beats"] = width["gain_mean"] > 0
    return gain


def width_line_text(width: dict, gain: dict) -> str:
    """The summary's sentence on this budget's width line."""
    net = width.get("net") or "x".join(map(str, parse_backbone(width["backbone"])))
    head = f"width line: plain {net}, {width['macs'] / 1e9:.2f} GMACs, PSNR {width['psnr']:.2f}"
    if gain["gain"] is None:
        return head + "; no searched trial within this budget"
    rgb = f" (RGB {gain['gain_rgb']:+.2f})" if gain["gain_rgb"] is not None else ""
    if gain.get("interval"):
        i = gain["interval"]
        verdict = ("above it, the interval excluding zero" if i["low"] > 0 else "below it, the interval excluding zero"
                   if i["high"] < 0 else "not resolved: the interval includes zero")
        return (f"{head}; the best trial's genotype, trained alike with {i['seeds']} seeds, {i['mean']:+.2f} dB over "
                f"it (95% interval {i['low']:+.2f} to {i['high']:+.2f}): {verdict}")
    verdict = ("above it on this one seed (`--width-seeds 3` gives the interval)" if gain["beats"] else
               "the search does not beat width at this budget")
    return f"{head}; the best searched trial {gain['gain']:+.2f} dB{rgb} over it: {verdict}"
