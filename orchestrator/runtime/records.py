"""What the orchestrator passes between its steps, as typed records instead of dicts:

- `SearchJob`: one `search` or `sweep` as the CLI parsed and checked it (nothing below the CLI reads the command line);
- `TrialRecord`: one finished trial as the driver recorded it, from Ray Tune, the search state or MLflow.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from search_space.genotype import Genotype

# What a finished trial reports: its numbers (MLflow metrics) and the strings about where it ran, its device and
# attention implementation (trial.py) and the node (Tune adds `hostname` and `node_ip` to every result; MLflow
# params).
TRIAL_METRICS = ("psnr", "ssim", "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "input_psnr", "input_psnr_y",
                 "input_psnr_rgb", "macs", "proxy_macs", "proxy_channels", "params", "num_modules", "mean_active_keys",
                 "macs_expected", "latency_ms", "trial_seconds", "proxy_steps")
TRIAL_PARAMS = ("device", "precision", "attention_backend", "hostname", "node_ip", "node_id")


def experiment_name(task_label: str) -> str:
    """One experiment (and one registered model) per task variant: `acla-car-q10`, `acla-sr-x4`. Car q10 and q40,
    or SR x2 and x4, are different problems with their own fronts. Here, not in orchestrator/tracking/: the Parquet table's
    readers name it without importing MLflow."""
    return f"acla-{task_label}"


STORED_JOB_VERSION = 2  # 1: the search's command-line flags as parsed; 2: the SearchJob itself


@dataclass(frozen=True)
class Sweep:
    """A sweep's identity: its id, and every budget it asked for, in order."""
    id: str
    budgets: tuple[float, ...]


@dataclass(frozen=True)
class SearchJob:
    """What a search asks for. `request` is where it ran (its platform flags, passwords redacted), which `resume`
    uses where it is given no others; the job itself is stored as data (`to_stored`) and read back by `resume`
    (`from_stored`), with no command line replayed."""
    task: object  # workers.tasks.TaskSpec
    profile: object  # workers.profiles.Profile, with the --search-steps/--search-warmup overrides
    data: object  # workers.train.DataSpec
    budgets: tuple[float, ...]
    attention: str
    trials: int
    concurrency: int
    seed: int
    retrain_top: int
    retrain_workers: int
    retrain: bool
    json: bool
    command_line: str
    request: dict = field(default_factory=dict)
    width: bool = True  # train each budget's width line (width.py); --no-width turns it off
    width_seeds: int = 1  # >= 2: the width line's gain over that many paired seeds, with its interval
    shared: bool = False  # a sweep whose budgets derive from one supernet (shared_supernet.py); --separate: not
    # A sweep's id (`sweep`, not `search`), kept with each of its budgets' searches: `resume` finds its budgets
    # by it and finishes them as one job, the ones never begun included.
    sweep: Sweep | None = None
    resume_parents: dict = field(default_factory=dict)  # {budget: the parent run it continues}, when resumed

    def resume_parent(self, budget: float) -> str | None:
        return self.resume_parents.get(budget)

    def to_stored(self, budget: float) -> dict:
        """This job, for one of its budgets, as plain JSON data (the search state's `request`)."""
        import dataclasses
        job = {"task": dataclasses.asdict(self.task), "profile": dataclasses.asdict(self.profile),
               "data": {"train": dataclasses.asdict(self.data.train), "valid": dataclasses.asdict(self.data.valid)},
               "budgets": [budget], **{name: getattr(self, name) for name in JOB_SCALARS}}
        stored = {"version": STORED_JOB_VERSION, "job": job, "platform": dict(self.request), "budget": budget}
        if self.sweep is not None:
            stored["sweep"] = {"id": self.sweep.id, "budgets": list(self.sweep.budgets)}
        return stored

    @classmethod
    def from_stored(cls, stored: dict, *, json_output: bool, resume_parents: dict,
                    budgets: tuple[float, ...] | None = None) -> "SearchJob":
        """The job a search stored (`to_stored`), to run again for `budgets` (default: its own), continuing
        `resume_parents` ({budget: parent run}); a budget without one is searched anew. ValueError for a request
        of another version (a search begun by an older release stored its flags; finish it with the release that began
        it)."""
        from workers.data import ImageSet
        from workers.profiles import Profile
        from workers.tasks import TaskSpec
        from workers.train import DataSpec
        if stored.get("version") != STORED_JOB_VERSION:
            raise ValueError(f"the search state holds a request of version {stored.get('version', 1)}, from an "
                             f"earlier release; expected {STORED_JOB_VERSION}")
        job = stored["job"]
        profile = {k: tuple(v) if isinstance(v, list) else v for k, v in job["profile"].items()}
        data = DataSpec(*(ImageSet(job["data"][part]["name"], tuple(job["data"][part]["paths"]))
                          for part in ("train", "valid")))
        sweep = Sweep(stored["sweep"]["id"], tuple(stored["sweep"]["budgets"])) if stored.get("sweep") else None
        return cls(task=TaskSpec(**job["task"]), profile=Profile(**profile), data=data,
                   budgets=tuple(budgets or job["budgets"]),
                   request=dict(stored.get("platform", {})), json=json_output, sweep=sweep,
                   resume_parents=dict(resume_parents), **{name: job[name] for name in JOB_SCALARS if name in job})


# The SearchJob fields stored as they are.
JOB_SCALARS = ("attention", "trials", "concurrency", "seed", "retrain_top", "retrain_workers", "retrain", "command_line",
               "width", "shared", "width_seeds")  # the last three: absent from a job stored before they existed
# (then their defaults)


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial: Tune's trial id, its MLflow run, Optuna's proposal, its result (the metrics and params
    of tracking.TRIAL_RESULT_KEYS, the genotype as JSON) and where its artifacts are."""
    trial: str
    run_id: str
    params: dict
    result: dict
    artifact_uri: str

    @property
    def genotype(self) -> Genotype:
        return Genotype.from_json(self.result["genotype"])

    @property
    def psnr(self) -> float:
        return float(self.result["psnr"])

    @property
    def macs(self) -> int:
        return int(self.result["macs"])

    @property
    def proxy_macs(self) -> int:
        return int(self.result.get("proxy_macs", self.result["macs"]))

    @property
    def position_scores(self) -> list:
        return json.loads(self.result.get("position_scores", "[]"))

    @classmethod
    def from_mlflow(cls, run, genotype_json: str) -> "TrialRecord":
        """A finished trial read back from its MLflow run (what `retrain --run-id` starts from)."""
        tags = run.data.tags
        result = {**run.data.metrics, **{k: v for k, v in run.data.params.items() if k in TRIAL_PARAMS},
                  "genotype": genotype_json}
        return cls(trial=tags.get("trial_id", run.info.run_id[:8]), run_id=run.info.run_id,
                   params={k: v for k, v in run.data.params.items() if not k.startswith("genotype.")},
                   result=result, artifact_uri=run.info.artifact_uri)


def budget_label(budget_macs: float) -> str:
    """`budget-50G` (or `budget-800M`): a valid MLflow alias."""
    giga = budget_macs / 1e9
    return f"budget-{giga:g}G" if giga >= 1 and float(giga).is_integer() else f"budget-{budget_macs / 1e6:g}M".replace(".", "p")
