"""Adam, and its learning rate decayed in steps, computed as torch.optim's Adam and StepLR compute them on a CPU
(the single-tensor path), to the bit; their state dicts have torch's layout, so checkpoints written with either
load into either.

Why not torch.optim itself: constructing any torch.optim optimizer imports torch._dynamo (torch._compile's
`_disable_dynamo` wraps `Optimizer.add_param_group`), about 1.5 s of CPU in every process that trains: each Ray
Tune trial, each Ray Train worker, each `acla-orch train`. Nothing here needs the compiler. tests/test_optim.py
checks both classes against torch.optim's, step by step, parameter groups, skipped gradients and resume included.
"""
from __future__ import annotations

from typing import Iterable

import torch

# What torch.optim.Adam's groups hold besides the rate, betas and eps, at the values this class computes with:
# written into every state dict, so that torch.optim.Adam loads it (its load replaces each group's settings).
TORCH_GROUP_DEFAULTS = {"weight_decay": 0.0, "amsgrad": False, "maximize": False, "foreach": None,
                        "capturable": False, "differentiable": False, "fused": None, "decoupled_weight_decay": False}


class Adam:
    """Adam (Kingma and Ba) without weight decay or AMSGrad: the subset of torch.optim.Adam this project uses.
    `params` is an iterable of tensors, or of groups (dicts with "params" and optionally "lr", "betas", "eps")."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = [{"lr": group.get("lr", lr), "betas": tuple(group.get("betas", betas)),
                              "eps": group.get("eps", eps), "params": list(group["params"])} for group in groups]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if set_to_none:
                    param.grad = None
                elif param.grad is not None:
                    param.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (one without is left alone, its moments too)."""
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = group["lr"], group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state.get(param)
                if state is None:
                    state = self.state[param] = {
                        "step": torch.tensor(0.0),
                        "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}
                state["step"] += 1
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = state["step"].item()
                step_size = lr / (1 - beta1 ** step)
                denom = (state["exp_avg_sq"].sqrt() / (1 - beta2 ** step) ** 0.5).add_(eps)
                param.addcdiv_(state["exp_avg"], denom, value=-step_size)

    def state_dict(self) -> dict:
        """torch.optim's layout: parameters numbered in group order, the state keyed by those numbers."""
        index = {}
        groups = []
        for group in self.param_groups:
            numbers = []
            for param in group["params"]:
                numbers.append(index.setdefault(param, len(index)))
            groups.append({**TORCH_GROUP_DEFAULTS, **{k: v for k, v in group.items() if k != "params"},
                           "params": numbers})
        state = {index[param]: {k: v.clone() for k, v in values.items()} for param, values in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict) -> None:
        """A state dict of this class or of torch.optim.Adam over the same parameters, in the same order; the
        groups' rates and betas come from it, as torch's does. One that computes otherwise (weight decay, AMSGrad,
        maximize) is refused."""
        if len(saved["param_groups"]) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved["param_groups"], self.param_groups)):
            raise ValueError("the saved optimizer state has other parameter groups than this optimizer")
        for saved_group in saved["param_groups"]:
            different = {k for k, v in TORCH_GROUP_DEFAULTS.items()
                         if k in ("weight_decay", "amsgrad", "maximize") and saved_group.get(k, v) != v}
            if different:
                raise ValueError(f"the saved optimizer state uses {', '.join(sorted(different))}, which this Adam "
                                 f"does not compute")
        self.state = {}
        for saved_group, group in zip(saved["param_groups"], self.param_groups):
            for key in ("lr", "betas", "eps", "initial_lr"):
                if key in saved_group:
                    group[key] = tuple(saved_group[key]) if key == "betas" else saved_group[key]
            for number, param in zip(saved_group["params"], group["params"]):
                values = saved["state"].get(number)
                if values is not None:
                    self.state[param] = {
                        "step": values["step"].detach().clone().float().cpu(),
                        "exp_avg": values["exp_avg"].detach().to(param.device, param.dtype).clone(),
                        "exp_avg_sq": values["exp_avg_sq"].detach().to(param.device, param.dtype).clone()}


class StepLR:
    """Each group's rate times `gamma` every `step_size` calls of step(), as torch.optim.lr_scheduler.StepLR
    computes it (multiplied in place, not gamma to a power: the same floats)."""

    def __init__(self, optimizer: Adam, step_size: int, gamma: float = 0.1):
        self.optimizer, self.step_size, self.gamma = optimizer, step_size, gamma
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = 0
        self._last_lr = [group["lr"] for group in optimizer.param_groups]

    def step(self) -> None:
        self.last_epoch += 1
        if self.last_epoch % self.step_size == 0:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.gamma
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """The entries torch's StepLR saves that its rate depends on; torch's own state dict loads as well."""
        return {"step_size": self.step_size, "gamma": self.gamma, "base_lrs": list(self.base_lrs),
                "last_epoch": self.last_epoch, "_last_lr": list(self._last_lr)}

    def load_state_dict(self, saved: dict) -> None:
        self.step_size, self.gamma = saved["step_size"], saved["gamma"]
        self.base_lrs, self.last_epoch = list(saved["base_lrs"]), saved["last_epoch"]
        self._last_lr = list(saved["_last_lr"])
