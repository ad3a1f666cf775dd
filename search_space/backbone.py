"""EDSR-style restoration backbone (Lim et al., CVPR-W 2017) with attention insertion positions.

head conv -> S stages of residual blocks (conv-ReLU-conv, residual scaling) -> body conv + long skip -> tail.
The tail is EDSR's pixel-shuffle upsampler for SR, and a conv with a global residual (output = input + tail)
for denoise, car and demosaic. An attention module may follow any residual block; its reference layers
are the head's output and the outputs of the earlier stages, as in ACLA's 4-stage EDSR.
Every position holds a module or `NoAttention`, so the supernet and the derived network share one class.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .attention import NoAttention, make_attention
from .cost import upsampler_steps
from .genotype import Genotype, refs_at_position
from .registry import get_task


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class ResBlock(nn.Module):
    def __init__(self, channels: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x))) * self.res_scale


class RestorationNet(nn.Module):
    def __init__(
        self,
        *,
        task: str,
        scale: int,
        in_channels: int,
        channels: int,
        blocks: int,
        stages: int,
        res_scale: float = 1.0,
        attention: Sequence[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if blocks % stages:
            raise ValueError(f"blocks ({blocks}) must be a multiple of stages ({stages})")
        self.task, self.scale, self.blocks, self.stages = task, scale, blocks, stages
        self.upscales = get_task(task).upscales
        self.blocks_per_stage = blocks // stages
        self.head = conv3x3(in_channels, channels)
        self.body = nn.ModuleList(ResBlock(channels, res_scale) for _ in range(blocks))
        attention = list(attention) if attention is not None else [NoAttention() for _ in range(blocks)]
        if len(attention) != blocks:
            raise ValueError(f"need one attention module (or NoAttention) per block: {blocks}, got {len(attention)}")
        self.attention = nn.ModuleList(attention)
        self.body_end = conv3x3(channels, channels)
        upsample: list[nn.Module] = []
        for step in upsampler_steps(scale):
            upsample += [conv3x3(channels, channels * step * step), nn.PixelShuffle(step)]
        self.upsample = nn.Sequential(*upsample)
        self.tail = conv3x3(channels, in_channels)
        # Channels-last weights make every conv channels-last and hand ACLA its reference layers without a layout
        # copy: per quick-profile training step on the 2-core CPU, 2-3% faster for a plain network and 10% with
        # two ACLA modules (interleaved A/B). Values and state_dicts are unchanged.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, position_weights: torch.Tensor | None = None) -> torch.Tensor:
        """`position_weights` (blocks,) relaxes each position to f + w * (attention(f) - f), for the search."""
        head = self.head(x)
        features = self._body(head, [head], 0, position_weights)
        return self._finish(x, head, features)

    def outputs_without_each(self, x: torch.Tensor, position_weights: torch.Tensor,
                             after_first=None) -> list[torch.Tensor]:
        """The output with every position at its weight, then, for each position in turn, the output with that
        position switched off (weight 0): what the perturbation scores compare. Each of the latter continues from
        the first pass's features after its own block (the same values a whole forward with that weight zero
        computes, as the prefix is the same computation), so the set costs about half of separate forwards.
        `after_first()` is called once the first pass is done (before any module runs again)."""
        head = self.head(x)
        states: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
        outputs = [self._finish(x, head, self._body(head, [head], 0, position_weights, states))]
        if after_first is not None:
            after_first()
        for position, (features, refs) in enumerate(states):
            if (position + 1) % self.blocks_per_stage == 0:
                refs = refs + [features]
            outputs.append(self._finish(x, head, self._body(features, refs, position + 1, position_weights)))
        return outputs

    def _body(self, features: torch.Tensor, refs: list[torch.Tensor], start: int,
              position_weights: torch.Tensor | None, states: list | None = None) -> torch.Tensor:
        """Blocks `start`.. and their positions; `refs` (extended in place) are the reference layers so far.
        `states` collects, per block, its output before its position and the reference layers it saw."""
        for index in range(start, self.blocks):
            features = self.body[index](features)
            if states is not None:
                states.append((features, list(refs)))
            attention = self.attention[index]
            if not isinstance(attention, NoAttention):
                attended = attention(features, tuple(refs))
                if position_weights is None:
                    features = attended
                else:
                    features = features + position_weights[index] * (attended - features)
            if (index + 1) % self.blocks_per_stage == 0:
                refs.append(features)
        return features

    def _finish(self, x: torch.Tensor, head: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        features = self.body_end(features) + head
        # Under bf16 autocast the tail's output comes back to the input's precision before the global skip adds
        # the input back and before the loss: both in fp32 (search_space/precision.py).
        out = self.tail(self.upsample(features)).to(x.dtype)
        return out if self.upscales else x + out  # same-size tasks learn the residual on their input


def build_attention_modules(genotype: Genotype) -> list[nn.Module]:
    """One module per block: the genotype's attention at its positions, NoAttention elsewhere."""
    modules: list[nn.Module] = [NoAttention() for _ in range(genotype.blocks)]
    for position, keys in zip(genotype.positions, genotype.keys or [None] * len(genotype.positions)):
        modules[position] = make_attention(
            genotype.attention,
            channels=genotype.channels,
            num_refs=refs_at_position(position, genotype.blocks, genotype.stages),
            keys_per_ref=genotype.max_keys,
            active_keys=keys if genotype.adaptive else None,
            nonlocal_grid=genotype.nonlocal_grid,
        )
    return modules


def build_network(genotype: Genotype) -> RestorationNet:
    """The derived (fixed) network of a genotype."""
    return RestorationNet(
        task=genotype.task,
        scale=genotype.scale,
        in_channels=genotype.in_channels,
        channels=genotype.channels,
        blocks=genotype.blocks,
        stages=genotype.stages,
        res_scale=genotype.res_scale,
        attention=build_attention_modules(genotype),
    )
