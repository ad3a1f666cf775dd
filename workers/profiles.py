"""Named training profiles: how long and how big. Dataclasses, not dicts; chosen once at the CLI.

- smoke: seconds, for tests.
- quick: a few minutes on a 2-core CPU; the default.
- paper: the published recipe (EDSR's, which ACLA follows): DIV2K, 48x48 LR patches for SR (48x48 patches
  otherwise), batch 16, Adam (beta 0.9/0.999, eps 1e-8) at 1e-4 halved every 200k iterations, L1 loss,
  64 channels, 16 residual blocks in 4 stages, K = 9 candidate keys per reference layer. Meant for a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    channels: int  # the reference backbone (ablate, benchmarks); the outer search picks its own from the budget
    blocks: int
    stages: int
    max_keys: int
    patch: int  # input patch side (LR side for SR)
    batch_size: int
    lr: float
    lr_step: int  # halve (times lr_gamma) every lr_step iterations
    search_steps: int  # differentiable-search iterations (each one weight + one architecture step)
    train_steps: int  # proxy training of a derived genotype inside a trial
    retrain_steps: int  # a winner's schedule from scratch, and each ablation variant's
    valid_crop: int  # centre crop of validation images (0: whole images)
    trials: int
    concurrency: int
    lr_gamma: float = 0.5
    weight_lr: float = 1e-3
    arch_lr: float = 3e-3
    log_every: int = 10
    search_warmup: int = 0  # first search steps that train the weights only (search_architecture's warmup_steps)
    # The outer search's backbones: `block_choices` deep, a multiple of `channel_step` wide (up to max_channels),
    # whose bare cost spans 50-100% of the budget.
    block_choices: tuple[int, ...] = (8,)
    channel_step: int = 8
    min_channels: int = 8
    max_channels: int = 256
    # DARTS practice: search and proxy-train at `proxy_width` times the channels, then derive and retrain the
    # genotype at full width. 1.0 searches at full width.
    proxy_width: float = 1.0
    # A winner's retraining that starts from its trial's weights (widened to full width, orchestrator/inherit.py)
    # continues the trial's training: these steps at full width. 0: the from-scratch schedule, retrain_steps.
    inherit_steps: int = 0
    # A sweep's trial (and its width line) starts from the shared supernet's weights at its width, which its
    # training already gave (search_space/shared_search.py), and fine-tunes them for these steps before it is
    # scored (Once-for-All and BigNAS score inherited weights with no training at all). 0: `train_steps`.
    sweep_train_steps: int = 0
    # The float format of every training step: "fp32", or "bf16" autocast (search_space/precision.py). The CLI
    # resolves --precision (auto by default) into one of the two; a stored search keeps the one it started with.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"profile precision {self.precision!r}; expected fp32 or bf16")

    def sweep_steps(self) -> int:
        return self.sweep_train_steps or self.train_steps

    def retraining_steps(self, inherited: bool) -> int:
        return self.inherit_steps if inherited and self.inherit_steps else self.retrain_steps

    def proxy_channels(self, channels: int) -> int:
        """The search-time width of a `channels`-wide backbone: a multiple of 4 (at least 4), never wider."""
        return min(channels, max(4, int(round(channels * self.proxy_width / 4)) * 4))


PROFILES = {
    "smoke": Profile("smoke", channels=8, blocks=4, stages=2, max_keys=4, patch=16, batch_size=2, lr=1e-3,
                     lr_step=1000, search_steps=3, train_steps=6, retrain_steps=8, valid_crop=48, trials=2,
                     concurrency=2, log_every=2, block_choices=(4,), channel_step=4, max_channels=32,
                     sweep_train_steps=3),
    "quick": Profile("quick", channels=32, blocks=8, stages=4, max_keys=9, patch=48, batch_size=8, lr=5e-4,
                     lr_step=400, search_steps=64, train_steps=200, retrain_steps=400, valid_crop=256, trials=2,
                     concurrency=2, log_every=16, search_warmup=32, block_choices=(8,), channel_step=8, max_channels=128,
                     proxy_width=0.5, inherit_steps=150, sweep_train_steps=32),
    "paper": Profile("paper", channels=64, blocks=16, stages=4, max_keys=9, patch=48, batch_size=16, lr=1e-4,
                     lr_step=200_000, search_steps=50_000, train_steps=100_000, retrain_steps=600_000,
                     valid_crop=0, trials=32, concurrency=4, weight_lr=1e-4, arch_lr=3e-4, log_every=1000,
                     search_warmup=10_000, block_choices=(8, 12, 16), channel_step=8, max_channels=256,
                     sweep_train_steps=25_000),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")
    return PROFILES[name]
