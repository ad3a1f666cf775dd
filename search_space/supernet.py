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


class Supernet(nn.Module):
    def __init__(self, *, base: Genotype, alpha_init: float = 0.0) -> None:
        """`base` gives the backbone, the attention kind and the candidate keys per reference (no positions)."""
        super().__init__()
        if base.attention == "none":
            raise ValueError("a supernet needs an attention kind to search over, not 'none'")
        self.base = base.bare()
        self.adaptive = base.attention == "acla"
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

    def _gate_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.net.attention if getattr(m, "gate_proj", None) is not None for p in m.gate_proj.parameters()]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha, *self._gate_parameters()]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def set_gate_temperature(self, temperature: float) -> None:
        for module in self.net.attention:
            if hasattr(module, "gate_temperature"):
                module.gate_temperature = temperature

    def _keys_of(self, module: nn.Module, expected: bool) -> list:
        num_refs = getattr(module, "num_refs", 0)
        value = getattr(module, "last_expected_keys" if expected else "last_active_keys", None)
        if value is None or not self.adaptive:
            return [float(self.base.max_keys)] * num_refs
        return list(value.unbind(0)) if expected else [float(v) for v in value]

    def active_keys(self) -> list[list[float]]:
        """Mean active keys per query, per position and reference layer, from the last forward pass."""
        return [self._keys_of(m, expected=False) for m in self.net.attention]

    def expected_macs(self) -> torch.Tensor:
        """Differentiable E[MACs] at the reference size, from the last forward pass's gate probabilities."""
        base, (height, width) = self.base, self.reference_size
        total = torch.tensor(float(backbone_macs(scale=base.scale, in_channels=base.in_channels, channels=base.channels,
                                                 blocks=base.blocks, height=height, width=width)))
        probs = self.position_probs()
        for index, module in enumerate(self.net.attention):
            cost = attention_macs(kind=base.attention, channels=base.channels, num_refs=getattr(module, "num_refs", 0),
                                  keys_per_ref=base.max_keys, adaptive=self.adaptive,
                                  active_keys=self._keys_of(module, expected=True), height=height, width=width,
                                  nonlocal_grid=base.nonlocal_grid)
            total = total + probs[index] * cost
        return total
