"""Function-preserving widening of a trained network (Net2WiderNet, Chen, Goodfellow and Shlens, ICLR 2016).

A trial proxy-trains its genotype at the profile's proxy width; retraining builds the same genotype at full width.
`widen_state` turns the trained proxy's weights into full-width weights that compute the same function, so the
retraining starts where the trial ended instead of from scratch:

- every wider channel c' copies a narrow channel g(c') (the first C are themselves, the rest cycle through a
  seeded permutation), so a layer's incoming weights and bias are copied by g;
- a layer that reads copies splits each narrow weight among them, in seeded random fractions that sum to one per
  weight: the sum over the copies equals the narrow weight, and the copies differ, so training breaks their
  symmetry (equal halves would keep them equal forever).

Which axis of a tensor is a channel axis is known per layer: the residual stream (head, blocks, body end), a
block's inner channels and an attention module's value channels are widened; the image channels, the attention
predictors' outputs (offsets, logits, gates) are not; an upsampler's output is its channels times step^2,
pixel-shuffled. A kind with other parameters (non-local) is refused: ValueError.
"""
from __future__ import annotations

import re

import torch

from .genotype import Genotype

SPLIT_NOISE = 0.2  # the fractions are (1 + U(-0.2, 0.2)), normalised over a channel's copies

# parameter name (without .weight/.bias) -> (output axis, input axis): "stream", "fixed" or "shuffle"
LAYERS = (
    (r"head", "stream", "fixed"),
    (r"body\.\d+\.conv[12]", "stream", "stream"),
    (r"body_end", "stream", "stream"),
    (r"attention\.\d+\.(offset_proj|logit_proj|gate_proj)", "fixed", "stream"),
    (r"attention\.\d+\.(value_projs\.\d+|fuse)", "stream", "stream"),
    (r"upsample\.\d+", "shuffle", "stream"),
    (r"tail", "fixed", "stream"),
)


def channel_map(narrow: int, wide: int, generator: torch.Generator) -> torch.Tensor:
    """g: for each of `wide` channels, the narrow channel it copies; every narrow channel at least once, the
    copies spread as evenly as they go."""
    if wide < narrow:
        raise ValueError(f"cannot widen {narrow} channels to {wide}")
    extra = torch.randperm(narrow, generator=generator).repeat((wide - narrow) // narrow + 1)[: wide - narrow]
    return torch.cat([torch.arange(narrow), extra])


def split_fractions(rows: int, mapping: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(rows, wide) fractions that sum to one over the copies of each narrow channel, in every row."""
    raw = 1 + SPLIT_NOISE * (2 * torch.rand(rows, len(mapping), generator=generator, dtype=torch.float64) - 1)
    totals = torch.zeros(rows, int(mapping.max()) + 1, dtype=torch.float64).index_add_(1, mapping, raw)
    return raw / totals[:, mapping]


def _layer(name: str) -> tuple[str, str]:
    for pattern, out_axis, in_axis in LAYERS:
        if re.fullmatch(pattern, name):
            return out_axis, in_axis
    raise ValueError(f"cannot widen {name!r}: not a layer of the residual stream or of a keyed attention kind")


def widen_state(state: dict[str, torch.Tensor], narrow: Genotype, wide: Genotype, seed: int = 0) -> dict:
    """Weights for `wide` (the same genotype as `narrow` but for its width) computing `narrow`'s function."""
    if narrow.replace(channels=wide.channels) != wide:
        raise ValueError("the wide genotype must be the narrow one with more channels")
    generator = torch.Generator().manual_seed(seed)
    mapping = channel_map(narrow.channels, wide.channels, generator)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        layer, kind = key.rsplit(".", 1)
        out_axis, in_axis = _layer(layer)
        if out_axis == "stream":
            rows = mapping
        elif out_axis == "shuffle":  # conv output c * s^2 + k feeds channel c after the pixel shuffle
            group = tensor.shape[0] // narrow.channels
            rows = (mapping[:, None] * group + torch.arange(group)).flatten()
        else:
            rows = torch.arange(tensor.shape[0])
        widened = tensor.detach()[rows]
        if kind == "weight" and in_axis == "stream":
            fractions = split_fractions(len(rows), mapping, generator).to(widened.dtype)
            widened = widened[:, mapping] * fractions.view(len(rows), len(mapping), *([1] * (widened.dim() - 2)))
        out[key] = widened.contiguous()
    return out
