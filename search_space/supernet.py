"""The search supernet: a candidate attention module after every residual block, each with an architecture
logit alpha_i (p_i = sigmoid(alpha_i)). The forward pass relaxes each position to f + p_i (attention(f) - f),
as DARTS relaxes its choices, and the expected cost is

    E[MACs] = backbone + sum_i p_i * MACs(module_i at its expected active keys).

Architecture parameters (the alphas and the key-gate predictors) are kept apart from the weights, and all of
them live in `state_dict`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .backbone import RestorationNet
from .attention import make_attention
from .cost import attention_macs, backbone_macs, reference_input_size
from .genotype import Genotype, refs_at_position
from .registry import get_kind


class Supernet(nn.Module):
    def __init__(self, *, base: Genotype, alpha_init: float = 0.0) -> None:
        """`base` gives the backbone, the attention kind and the candidate keys per reference (no positions)."""
        super().__init__()
        if not get_kind(base.attention).inserts:
            raise ValueError(f"a supernet needs an attention kind to search over, not {base.attention!r}")
        self.base = base.bare()
        self.adaptive = get_kind(base.attention).adaptive
        modules = [make_attention(base.attention, channels=base.channels,
                                  num_refs=refs_at_position(i, base.blocks, base.stages),
                                  keys_per_ref=base.max_keys, nonlocal_grid=base.nonlocal_grid)
                   for i in range(base.blocks)]
        self.net = RestorationNet(task=base.task, scale=base.scale, in_channels=base.in_channels,
                                  channels=base.channels, blocks=base.blocks, stages=base.stages,
                                  res_scale=base.res_scale, attention=modules)
        self.alpha = nn.Parameter(torch.full((base.blocks,), float(alpha_init)))
        self.reference_size = reference_input_size(base.task, base.scale)

    def position_probs(self) -> torch.Tensor:
        return torch.sigmoid(self.alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, position_weights=self.position_probs())

    def perturbed_outputs(self, x: torch.Tensor, position_weights: torch.Tensor):
        """What a perturbation score compares on one batch: the output with every position at its weight, the
        active keys and their 90th percentiles of that pass, and the output with each position switched off in
        turn (`RestorationNet.outputs_without_each`)."""
        seen = {}
        outputs = self.net.outputs_without_each(
            x, position_weights, after_first=lambda: seen.update(keys=self.active_keys(), caps=self.key_quantiles()))
        return outputs[0], seen["keys"], seen["caps"], outputs[1:]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha, *(p for m in self.net.attention for p in m.gate_parameters())]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def set_gate_temperature(self, temperature: float) -> None:
        for module in self.net.attention:
            module.set_gate_temperature(temperature)

    def _keys_of(self, module: nn.Module, expected: bool) -> list:
        """The module's key counts, or all its keys where it has no gates (or has not run yet)."""
        counts = module.key_counts(expected)
        return [float(self.base.max_keys)] * module.num_refs if counts is None else counts

    def active_keys(self) -> list[list[float]]:
        """Mean active keys per query, per position and reference layer, from the last forward pass."""
        return [self._keys_of(m, expected=False) for m in self.net.attention]

    def key_quantiles(self) -> list[list[float]]:
        """The 90th percentile of a query's active keys, per position and reference layer, from the last forward
        pass (all keys where a module has no gates)."""
        return [m.key_quantiles() or [float(self.base.max_keys)] * m.num_refs for m in self.net.attention]

    def expected_key_macs(self) -> torch.Tensor:
        """Differentiable MACs of the expected active keys at the reference size: each key's bilinear reads (4 taps
        over C channels per pixel), weighted by its position's probability (held fixed: this prices keys, not
        positions)."""
        height, width = self.reference_size
        per_key = 4 * self.base.channels * height * width
        probs = self.position_probs().detach()
        total = torch.zeros(())
        for index, module in enumerate(self.net.attention):
            counts = module.key_counts(expected=True)
            if counts is not None:
                total = total + probs[index] * per_key * sum(counts)
        return total

    def expected_macs(self) -> torch.Tensor:
        """Differentiable E[MACs] at the reference size, from the last forward pass's gate probabilities."""
        base, (height, width) = self.base, self.reference_size
        total = torch.tensor(float(backbone_macs(scale=base.scale, in_channels=base.in_channels, channels=base.channels,
                                                 blocks=base.blocks, height=height, width=width)))
        probs = self.position_probs()
        for index, module in enumerate(self.net.attention):
            cost = attention_macs(kind=base.attention, channels=base.channels, num_refs=module.num_refs,
                                  keys_per_ref=base.max_keys, adaptive=self.adaptive,
                                  active_keys=self._keys_of(module, expected=True), height=height, width=width,
                                  nonlocal_grid=base.nonlocal_grid)
            total = total + probs[index] * cost
        return total
