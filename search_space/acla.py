"""Adaptive Cross-Layer Attention (ACLA; Wang et al., "Adaptive Cross-Layer Attention for Image Restoration",
arXiv 2203.03619).

Each query pixel attends to a few keys in each of L previous layers. Keys sit at offsets predicted from the
query and are read bilinearly (`deformable_sample`, as in Deformable-DETR). A binary gate per
(query, layer, key) decides which keys take part: gated-off keys are removed from the softmax, not weighted
zero. During the search the gates are trained with a straight-through hard-concrete estimator (Louizos et al.,
"L0 regularization", ICLR 2018) and every expected key is priced in MACs (search_space/search.py). The derived
module stays adaptive: each query keeps its own gated-on keys (score > 0), at most a cap per reference layer
(its top-cap by score), so the count varies from pixel to pixel as the paper claims.

Two value layouts (the registry's kinds): one value projection per reference layer, with the output fusion
folded in (`acla`, `cla`), or the authors' one shared projection (SDL-ASU/ACLA `conv_refer`), applied once
after the weighted sum of the raw reference reads (`acla-shared`, `cla-shared`), which saves (L-1) C^2 MACs per
pixel and the kernel's L projected value maps.

A new module changes its network's output by almost nothing, yet every parameter learns from the first step:
the output projection starts small and random (FUSE_INIT_STD), not zero. A zero fusion would make it the only
parameter with a gradient until it had grown (the method audit's finding).

Shapes: B batch, C channels, H x W pixels, L reference layers, K candidate keys per reference layer.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import AttentionModule
from .ops import attend, masked_softmax, top_k_mask
from .sampling import deformable_sample, spread_offsets

__all__ = ["ACLA", "deformable_sample", "masked_softmax"]


GATE_INIT = 1.0  # gate logits start at +1: P(on) = 0.73, 6.6 of 9 keys, with room to move both ways
FUSE_INIT_STD = 1e-3  # the output projection's start: a new module moves its block's output by ~0.1-1%


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Forward value `hard`, gradient of `soft`."""
    return hard + (soft - soft.detach())  # soft - soft is exactly 0, so the forward value is exactly `hard`


class ACLA(AttentionModule):
    """Cross-layer attention with learned offsets and (optionally) adaptive key selection.

    `adaptive=False` is CLA: K keys per layer, no gates. `active_keys` (one cap per reference layer) turns an
    adaptive module into its derived form, where each query keeps its gated-on keys, at most the cap (its
    top-cap by gate score). `shared_values` reads the raw reference layers and projects once after the sum.
    """

    def __init__(
        self,
        channels: int,
        num_refs: int,
        keys_per_ref: int,
        adaptive: bool = True,
        active_keys: Sequence[int] | None = None,
        gate_temperature: float = 1.0,
        gate_init: float = GATE_INIT,
        shared_values: bool = False,
    ) -> None:
        super().__init__()
        if channels < 1 or num_refs < 1 or keys_per_ref < 1:
            raise ValueError("channels, num_refs and keys_per_ref must be positive")
        if active_keys is not None:
            if not adaptive:
                raise ValueError("active_keys needs adaptive=True: CLA always uses all keys")
            active_keys = tuple(int(k) for k in active_keys)
            if len(active_keys) != num_refs or not all(1 <= k <= keys_per_ref for k in active_keys):
                raise ValueError(f"active_keys must hold {num_refs} counts in 1..{keys_per_ref}, got {active_keys}")
        self.channels, self.num_refs, self.keys_per_ref = channels, num_refs, keys_per_ref
        self.adaptive = adaptive
        self.shared_values = shared_values
        self.active_keys = active_keys
        self.gate_temperature = gate_temperature
        keys = num_refs * keys_per_ref
        self.offset_proj = nn.Conv2d(channels, 2 * keys, 1)
        self.logit_proj = nn.Conv2d(channels, keys, 1)
        self.gate_proj = nn.Conv2d(channels, keys, 1) if adaptive else None
        # Shared: one projection after the sum (the fusion is that projection). Per layer: L value projections,
        # each merged with the fusion into one 1x1 conv per call (`merged_values`).
        self.value_projs = nn.ModuleList(() if shared_values else (nn.Conv2d(channels, channels, 1)
                                                                     for _ in range(num_refs)))
        self.fuse = nn.Conv2d(channels, channels, 1)
        self._reset_parameters(gate_init)
        self._seen_gates: torch.Tensor | None = None  # (B, H, W, L, K) gates of the last forward pass, no grad
        self._keys: tuple[torch.Tensor, torch.Tensor] | None = None  # counted from them on demand
        self._expected_keys: torch.Tensor | None = None  # (L,) expected active keys, differentiable

    def gate_parameters(self) -> list[nn.Parameter]:
        return [] if self.gate_proj is None else list(self.gate_proj.parameters())

    def set_gate_temperature(self, temperature: float) -> None:
        self.gate_temperature = temperature

    def key_counts(self, expected: bool) -> list | None:
        if not self.adaptive:
            return None
        value = self.last_expected_keys if expected else self.last_active_keys
        if value is None:
            return None
        return list(value.unbind(0)) if expected else [float(v) for v in value]

    @property
    def last_keys_per_query(self) -> torch.Tensor | None:
        """(L, queries): the active keys of each query in the last forward pass, per layer (counted when asked:
        a derived module's forward pass keeps only its gates)."""
        if self._keys is None and self._seen_gates is not None:
            per_query = self._seen_gates.sum(dim=4).flatten(0, 2).transpose(0, 1).float()
            self._keys = per_query, per_query.mean(dim=1)
        return None if self._keys is None else self._keys[0]

    @property
    def last_active_keys(self) -> torch.Tensor | None:
        """(L,) mean active keys per query in the last forward pass, no grad."""
        return None if self.last_keys_per_query is None else self._keys[1]

    @property
    def last_expected_keys(self) -> torch.Tensor | None:
        """(L,) expected active keys (differentiable where the gates are sampled; a derived module's active ones)."""
        return self.last_active_keys if self.active_keys is not None else self._expected_keys

    def key_quantiles(self) -> list[float] | None:
        """The 90th percentile of a query's active keys per layer in the last forward pass (None without gates)."""
        if not self.adaptive or self.last_keys_per_query is None:
            return None
        per_query = self.last_keys_per_query  # computed on demand (the search), never in a forward pass
        sample = per_query[:, :: max(1, per_query.shape[1] // 65536)]  # torch.quantile's input limit
        return [float(v) for v in torch.quantile(sample, 0.9, dim=1)]

    def _reset_parameters(self, gate_init: float) -> None:
        # Offsets start at a fixed spread around the query; weights zero so every pixel starts the same.
        nn.init.zeros_(self.offset_proj.weight)
        spread = spread_offsets(self.keys_per_ref).repeat(self.num_refs, 1)  # (L*K, 2) as (dx, dy)
        with torch.no_grad():
            self.offset_proj.bias.copy_(spread.reshape(-1))
        nn.init.zeros_(self.logit_proj.weight)
        nn.init.zeros_(self.logit_proj.bias)
        if self.gate_proj is not None:
            nn.init.normal_(self.gate_proj.weight, std=0.01)
            nn.init.constant_(self.gate_proj.bias, gate_init)
        # A small random fusion: a new module is nearly the identity, so inserting it never hurts a trained
        # backbone, and every parameter before it gets a gradient from the first step (a zero fusion gives none).
        nn.init.normal_(self.fuse.weight, std=FUSE_INIT_STD)
        nn.init.zeros_(self.fuse.bias)

    def forward(self, query: torch.Tensor, refs: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(refs) != self.num_refs:
            raise ValueError(f"ACLA expects {self.num_refs} reference layers, got {len(refs)}")
        batch, _, height, width = query.shape
        # Every query's offsets, logits and gate scores, predicted in channels-last layout (B, H, W, L*K[, 2]) by
        # matrix products on a free view of the channels-last query: no layout copy and no 1x1 convolution.
        flat = _nhwc(query)
        offsets = _linear(flat, self.offset_proj).view(batch, height, width, -1, 2)
        logits = _linear(flat, self.logit_proj)
        if self.active_keys is not None:
            gates, off_key_grads = self._capped(_linear(flat, self.gate_proj)), False
        else:
            gates = self._sample_gates(_linear(flat, self.gate_proj)) if self.adaptive else None
            off_key_grads = True  # hard-concrete gates: an off key's gate still gets a gradient
        if self.shared_values:  # the raw reads, summed, then one projection: P(sum w sample(ref)) + b
            out = attend(list(refs), offsets, logits, gates, self.keys_per_ref, torch.zeros_like(self.fuse.bias),
                         off_key_grads)  # (B, H, W, C)
            out = _linear(out, self.fuse)
        else:  # the value projections with the fusion folded in: fuse(sum V_l(sample_l)) = sum sample_l(fuse V_l)
            values = [F.linear(_nhwc(ref), weight, bias).permute(0, 3, 1, 2)  # channels-last (B, C, H, W)
                      for ref, (weight, bias) in zip(refs, self.merged_values())]
            # the skip connection too: query + out, summed in the kernel's first write of each output row
            return attend(values, offsets, logits, gates, self.keys_per_ref, self.fuse.bias, off_key_grads,
                          residual=flat).permute(0, 3, 1, 2)
        return query + out.permute(0, 3, 1, 2)

    def merged_values(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight (C, C), bias (C)) per layer: value projection l followed by the output fusion, as one 1x1 conv.

        The fusion is linear and the bilinear reads and the softmax-weighted sum commute with it, so projecting
        each reference layer by fuse @ V_l and summing the reads equals fusing the sum of the projected reads,
        biases included: a tap outside the image reads zero either way.
        """
        if self.shared_values:
            raise ValueError("a shared-value module has no per-layer value projections to merge")
        fuse = self.fuse.weight.flatten(1)  # (C, C)
        biases = torch.stack([proj.bias for proj in self.value_projs]) @ fuse.t()  # (L, C): each row contiguous,
        # so that F.linear adds it inside its matrix product (a strided bias cost a separate pass: ~3% of an
        # ACLA net's 128x128 forward)
        return [(fuse @ proj.weight.flatten(1), bias) for proj, bias in zip(self.value_projs, biases.unbind(0))]

    def _sample_gates(self, scores: torch.Tensor) -> torch.Tensor:
        """Binary gates (B, H, W, L*K) from the gate scores (same shape): hard-concrete with straight-through
        gradients in training."""
        batch, height, width, _ = scores.shape
        # P(logit + logistic noise > 0) = sigmoid(logit): the expected gate equals the probability below.
        per_key = torch.sigmoid(scores).view(batch, height, width, self.num_refs, self.keys_per_ref)
        self._expected_keys = per_key.sum(dim=4).mean(dim=(0, 1, 2))
        if self.training:
            uniform = torch.rand_like(scores).clamp(1e-6, 1 - 1e-6)
            noisy = (scores + torch.log(uniform) - torch.log1p(-uniform)) / self.gate_temperature
            soft = torch.sigmoid(noisy)
            gates = straight_through((noisy > 0).to(soft.dtype), soft)
        else:
            gates = (scores > 0).to(scores.dtype)
        self._seen(gates.detach().view(batch, height, width, self.num_refs, self.keys_per_ref))
        return gates

    def _seen(self, gates: torch.Tensor) -> None:
        """Keep the last forward pass's gates (B, H, W, L, K); their counts are taken when asked."""
        self._seen_gates, self._keys = gates, None

    def _capped(self, scores: torch.Tensor) -> torch.Tensor:
        """The derived module's gates (B, H, W, L*K) from its gate scores (same shape): each query keeps its
        gated-on keys (score > 0), at most the cap of each layer, its highest-scored first. A query may keep
        none: it then adds only the bias.

        Forward value 1 for a kept key and 0 otherwise (an off key is never read); a kept key's gate passes the
        gradient of sigmoid(score), so retraining still trains the scores.
        """
        batch, height, width, _ = scores.shape
        scores = scores.reshape(batch, height, width, self.num_refs, self.keys_per_ref)
        hard = top_k_mask(scores, self.active_keys, positive=True)
        self._seen(hard)
        if not torch.is_grad_enabled():  # inference: the hard gates alone, no gradient path to build
            return hard.flatten(3)
        return straight_through(hard, torch.sigmoid(scores) * hard).flatten(3)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, num_refs={self.num_refs}, keys_per_ref={self.keys_per_ref}, "
                f"adaptive={self.adaptive}, active_keys={self.active_keys}, shared_values={self.shared_values}")



OFFSET_LR_SCALE = 0.1  # Deformable-DETR trains its sampling offsets at 0.1x the learning rate


def parameter_groups(params, model: nn.Module, lr: float, offset_lr_scale: float = OFFSET_LR_SCALE) -> list[dict]:
    """Optimizer groups for `params`: the sampling-offset predictors of every ACLA module in `model` at
    `offset_lr_scale` times `lr`, the rest at `lr`. One group when there is no ACLA module."""
    offsets = {id(p) for m in model.modules() if isinstance(m, ACLA) for p in m.offset_proj.parameters()}
    params = list(params)
    groups = [{"params": [p for p in params if id(p) not in offsets], "lr": lr}]
    if any(id(p) in offsets for p in params):
        groups.append({"params": [p for p in params if id(p) in offsets], "lr": lr * offset_lr_scale})
    return groups


def _linear(flat: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 convolution applied to a channels-last (B, H, W, C) map as a matrix product: (B, H, W, out)."""
    return F.linear(flat, conv.weight.flatten(1), conv.bias)


def _nhwc(tensor: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C), contiguous (free when the map is channels-last)."""
    return tensor.permute(0, 2, 3, 1).contiguous()


def build_acla(*, channels: int, num_refs: int, keys_per_ref: int, active_keys: Sequence[int] | None = None,
               **_) -> ACLA:
    return ACLA(channels, num_refs, keys_per_ref, adaptive=True, active_keys=active_keys)


def build_cla(*, channels: int, num_refs: int, keys_per_ref: int, **_) -> ACLA:
    return ACLA(channels, num_refs, keys_per_ref, adaptive=False)


def build_acla_shared(*, channels: int, num_refs: int, keys_per_ref: int, active_keys: Sequence[int] | None = None,
                      **_) -> ACLA:
    return ACLA(channels, num_refs, keys_per_ref, adaptive=True, active_keys=active_keys, shared_values=True)


def build_cla_shared(*, channels: int, num_refs: int, keys_per_ref: int, **_) -> ACLA:
    return ACLA(channels, num_refs, keys_per_ref, adaptive=False, shared_values=True)
