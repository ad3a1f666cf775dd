"""ACLA's attention as Triton kernels, for CUDA tensors (and for CPU tensors under `TRITON_INTERPRET=1`, which is
how CI proves them without a GPU: tests/test_triton_kernel.py).

The contract is that of the fused CPU kernel (csrc/acla_aggregate.cpp) and of `reference_attend`: per query the
masked softmax over the keys whose gate is on, then the bias plus the weighted bilinear reads of the L value maps
at the keys' offsets. A gated-off key is never read in the forward (its loads are masked off, so no memory is
touched); with `off_key_grads=False` (a derived top-k module) it is not read in the backward either.

Precision: the value maps (and so the output and the value gradients) are float32 or bfloat16; the offsets,
logits, gates, bias, attention weights and every sum are float32 (mixed precision, as the CPU kernel).

Layout: the L value maps are stacked channels-last, (L, B, H, W, C); offsets (Q, Kt, 2), logits and gates
(Q, Kt) with Q = B*H*W queries and Kt = L*K keys, layer by layer. One program takes BLOCK_Q queries and every
channel, so each bilinear tap is one load of BLOCK_Q contiguous channel rows.

The backward has two kernels:
- `_backward_queries` gathers per query, as the forward does: the dot products of the output gradient with the
  taps give d loss / d weight and the offset gradients, and the masked-softmax backward gives the logit and gate
  gradients in registers. It also writes, for every (query, key, tap), where that tap lands and with what weight.
- The value gradient is the transpose of the forward's reads: value pixel p receives w * tap weight * grad_out[q]
  from every (q, key, tap) that read it. Scattering that with `atomic_add` is what Deformable-DETR's CUDA op does,
  and it is contended exactly where learned offsets converge on the same pixels (about 4*K writers per pixel per
  layer even when they do not). Here the taps are instead sorted by destination (`torch.sort`, stable), and
  `_gather_values` gives each value pixel one program row that sums its own contributions. No atomics at all, so
  the cost does not grow with how much the offsets agree, and the result is bitwise deterministic run to run
  (a seeded search on a GPU reproduces its genotype). The price is the sort of B*H*W*Kt*4 int32 keys and two
  buffers of that length, small beside the forward's reads.
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl


@triton.jit
def _softmax_tile(logits, gates, q, qmask, Kt, HAS_GATES: tl.constexpr, BLOCK_K: tl.constexpr):
    """The masked softmax of BLOCK_Q queries: (weights, exp(logit - max), per-query max, denominator)."""
    cols = tl.arange(0, BLOCK_K)
    tile = qmask[:, None] & (cols[None, :] < Kt)
    logit = tl.load(logits + q[:, None] * Kt + cols[None, :], mask=tile, other=float("-inf"))
    top = tl.max(logit, axis=1)
    top = tl.where(qmask, top, 0.0)
    e = tl.where(tile, tl.exp(logit - top[:, None]), 0.0)
    if HAS_GATES:
        on = e * tl.load(gates + q[:, None] * Kt + cols[None, :], mask=tile, other=0.0)
    else:
        on = e
    on_sum = tl.sum(on, axis=1)
    # With every gate off the weights are 0 and the denominator is the unmasked sum (finite gate gradients).
    denominator = tl.where(on_sum > 0, on_sum, tl.sum(e, axis=1))
    denominator = tl.where(qmask, denominator, 1.0)
    return on / denominator[:, None], e, top, denominator


@triton.jit
def _query_pixels(q, H, W):
    """Image index and (y, x) of each query (float, for the offsets)."""
    pixel = q % (H * W)
    return q // (H * W), (pixel // W).to(tl.float32), (pixel % W).to(tl.float32)


@triton.jit
def _key_position(offsets, q, qmask, Kt, k, x, y):
    """The top-left tap of key k of each query and the bilinear fractions: (x0, y0, ax, ay)."""
    px = x + tl.load(offsets + (q * Kt + k) * 2, mask=qmask, other=0.0)
    py = y + tl.load(offsets + (q * Kt + k) * 2 + 1, mask=qmask, other=0.0)
    fx, fy = tl.floor(px), tl.floor(py)
    return fx.to(tl.int32), fy.to(tl.int32), px - fx, py - fy


@triton.jit
def _forward(values, offsets, logits, gates, bias, out, weights, Q, B, H, W, C, K, Kt,
             HAS_GATES: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = q < Q
    w, e, top, denominator = _softmax_tile(logits, gates, q, qmask, Kt, HAS_GATES, BLOCK_K)
    cols = tl.arange(0, BLOCK_K)
    tl.store(weights + q[:, None] * Kt + cols[None, :], w, mask=qmask[:, None] & (cols[None, :] < Kt))
    HW = H * W
    b, y, x = _query_pixels(q, H, W)
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    acc = tl.zeros((BLOCK_Q, BLOCK_C), dtype=tl.float32) + tl.load(bias + c, mask=cmask, other=0.0)[None, :]
    for k in range(Kt):
        # Column k of the weight tile, recomputed from the same terms (a column cannot be indexed out of a tile).
        wk = tl.exp(tl.load(logits + q * Kt + k, mask=qmask, other=0.0) - top)
        if HAS_GATES:
            wk = wk * tl.load(gates + q * Kt + k, mask=qmask, other=0.0)
        wk = tl.where(qmask, wk / denominator, 0.0)
        x0, y0, ax, ay = _key_position(offsets, q, qmask, Kt, k, x, y)
        base = ((k // K) * B + b).to(tl.int64) * HW
        for i in tl.static_range(4):
            xi = x0 + (i % 2)
            yi = y0 + (i // 2)
            tap = (ax if i % 2 == 1 else 1.0 - ax) * (ay if i // 2 == 1 else 1.0 - ay)
            read = qmask & (wk != 0) & (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)  # off keys: no load
            row = (base + yi * W + xi) * C
            v = tl.load(values + row[:, None] + c[None, :], mask=read[:, None] & cmask[None, :], other=0.0)
            acc += (wk * tap)[:, None] * v.to(tl.float32)
    tl.store(out + q[:, None].to(tl.int64) * C + c[None, :], acc.to(out.dtype.element_ty),
             mask=qmask[:, None] & cmask[None, :])


@triton.jit
def _backward_queries(values, offsets, logits, gates, grad_out, grad_offsets, grad_logits, grad_gates, dest, coef,
                      Q, B, H, W, C, K, Kt, HAS_GATES: tl.constexpr, OFF_KEY_GRADS: tl.constexpr,
                      VALUE_GRAD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = q < Q
    w, e, top, denominator = _softmax_tile(logits, gates, q, qmask, Kt, HAS_GATES, BLOCK_K)
    HW = H * W
    b, y, x = _query_pixels(q, H, W)
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    g = tl.load(grad_out + q[:, None].to(tl.int64) * C + c[None, :], mask=qmask[:, None] & cmask[None, :],
                other=0.0).to(tl.float32)
    cols = tl.arange(0, BLOCK_K)
    grad_w = tl.zeros((BLOCK_Q, BLOCK_K), dtype=tl.float32)
    outside = B * (Kt // K) * HW  # the destination of a tap that adds nothing: sorted last, never gathered
    for k in range(Kt):
        on = tl.full((BLOCK_Q,), 1.0, tl.float32)
        if HAS_GATES:
            on = tl.load(gates + q * Kt + k, mask=qmask, other=0.0)
        wk = tl.where(qmask, tl.exp(tl.load(logits + q * Kt + k, mask=qmask, other=0.0) - top) * on / denominator, 0.0)
        wanted = qmask
        if not OFF_KEY_GRADS:
            wanted = wanted & (on != 0)
        x0, y0, ax, ay = _key_position(offsets, q, qmask, Kt, k, x, y)
        layer_base = ((k // K) * B + b) * HW
        gw = tl.zeros((BLOCK_Q,), dtype=tl.float32)
        gx = tl.zeros((BLOCK_Q,), dtype=tl.float32)
        gy = tl.zeros((BLOCK_Q,), dtype=tl.float32)
        for i in tl.static_range(4):
            xi = x0 + (i % 2)
            yi = y0 + (i // 2)
            wx = ax if i % 2 == 1 else 1.0 - ax
            wy = ay if i // 2 == 1 else 1.0 - ay
            inside = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
            read = wanted & inside
            row = (layer_base + yi * W + xi).to(tl.int64) * C
            v = tl.load(values + row[:, None] + c[None, :], mask=read[:, None] & cmask[None, :], other=0.0)
            dot = tl.sum(v.to(tl.float32) * g, axis=1)
            gw += wx * wy * dot
            gx += (1.0 if i % 2 == 1 else -1.0) * wy * dot  # d tap / d x
            gy += (1.0 if i // 2 == 1 else -1.0) * wx * dot  # d tap / d y
            if VALUE_GRAD:
                weight = wk * wx * wy
                slot = (q * Kt + k) * 4 + i
                tl.store(dest + slot, tl.where(inside & (weight != 0), layer_base + yi * W + xi, outside), mask=qmask)
                tl.store(coef + slot, weight, mask=qmask)
        tl.store(grad_offsets + (q * Kt + k) * 2, wk * gx, mask=qmask)
        tl.store(grad_offsets + (q * Kt + k) * 2 + 1, wk * gy, mask=qmask)
        grad_w = tl.where(cols[None, :] == k, gw[:, None], grad_w)
    tile = qmask[:, None] & (cols[None, :] < Kt)
    dot_w = tl.sum(w * grad_w, axis=1)
    tl.store(grad_logits + q[:, None] * Kt + cols[None, :], w * (grad_w - dot_w[:, None]), mask=tile)
    if HAS_GATES:  # d w_i / d gate_k = (e_k / denominator)(delta_ik - w_i)
        tl.store(grad_gates + q[:, None] * Kt + cols[None, :], e / denominator[:, None] * (grad_w - dot_w[:, None]),
                 mask=tile)


@triton.jit
def _gather_values(order, starts, counts, coef, grad_out, grad_values, rows, C, Kt,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Row r of the (L*B*H*W, C) value gradient: the sum of coef * grad_out[query] over its sorted taps."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < rows
    start = tl.load(starts + r, mask=rmask, other=0)
    count = tl.load(counts + r, mask=rmask, other=0)
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for j in range(tl.max(count, axis=0)):
        live = j < count
        slot = tl.load(order + start + j, mask=live, other=0)
        weight = tl.load(coef + slot, mask=live, other=0.0)
        query = (slot // (Kt * 4)).to(tl.int64)
        g = tl.load(grad_out + query[:, None] * C + c[None, :], mask=live[:, None] & cmask[None, :], other=0.0)
        acc += weight[:, None] * g.to(tl.float32)
    tl.store(grad_values + r[:, None].to(tl.int64) * C + c[None, :], acc.to(grad_values.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


def _blocks(channels: int, keys: int) -> tuple[int, int, int]:
    """BLOCK_Q, BLOCK_C, BLOCK_K: every channel and key in one tile, about 4096 elements per program."""
    block_c = triton.next_power_of_2(channels)
    return max(1, min(64, 4096 // block_c)), block_c, triton.next_power_of_2(keys)


class _TritonAttend(torch.autograd.Function):
    @staticmethod
    def forward(ctx, keys, off_key_grads, offsets, logits, gates, bias, stacked):
        layers, batch, height, width, channels = stacked.shape
        queries, total = batch * height * width, logits.shape[-1]
        out = torch.empty(batch, height, width, channels, dtype=stacked.dtype, device=stacked.device)
        weights = torch.empty_like(logits)
        block_q, block_c, block_k = _blocks(channels, total)
        has_gates = gates is not None
        gates_arg = gates if has_gates else logits  # never read without gates
        _forward[(triton.cdiv(queries, block_q),)](
            stacked, offsets, logits, gates_arg, bias, out, weights, queries, batch, height, width, channels, keys,
            total, HAS_GATES=has_gates, BLOCK_Q=block_q, BLOCK_C=block_c, BLOCK_K=block_k)
        ctx.keys, ctx.off_key_grads, ctx.has_gates = keys, off_key_grads, has_gates
        ctx.save_for_backward(offsets, logits, gates_arg, stacked)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        offsets, logits, gates, stacked = ctx.saved_tensors
        layers, batch, height, width, channels = stacked.shape
        queries, total = batch * height * width, logits.shape[-1]
        grad_out = grad_out.to(stacked.dtype).contiguous()
        value_grad = ctx.needs_input_grad[6]
        grad_offsets, grad_logits = torch.empty_like(offsets), torch.empty_like(logits)
        grad_gates = torch.empty_like(logits) if ctx.has_gates else logits
        slots = queries * total * 4 if value_grad else 1
        dest = torch.empty(slots, dtype=torch.int32, device=stacked.device)
        coef = torch.empty(slots, dtype=offsets.dtype, device=stacked.device)  # fp32 for bf16 maps
        block_q, block_c, block_k = _blocks(channels, total)
        _backward_queries[(triton.cdiv(queries, block_q),)](
            stacked, offsets, logits, gates, grad_out, grad_offsets, grad_logits, grad_gates, dest, coef, queries,
            batch, height, width, channels, ctx.keys, total, HAS_GATES=ctx.has_gates, OFF_KEY_GRADS=ctx.off_key_grads,
            VALUE_GRAD=value_grad, BLOCK_Q=block_q, BLOCK_C=block_c, BLOCK_K=block_k)
        grad_values = None
        if value_grad:
            rows = layers * batch * height * width
            order = torch.sort(dest, stable=True).indices.to(torch.int32)
            counts = torch.bincount(dest, minlength=rows + 1)[:rows]
            starts = (torch.cumsum(counts, 0) - counts).to(torch.int32)
            grad_values = torch.empty_like(stacked)
            block_r = max(1, min(64, 4096 // block_c))
            _gather_values[(triton.cdiv(rows, block_r),)](
                order, starts, counts.to(torch.int32), coef, grad_out, grad_values, rows, channels, total,
                BLOCK_R=block_r, BLOCK_C=block_c)
        grad_bias = grad_out.view(-1, channels).sum(0, dtype=offsets.dtype)
        return None, None, grad_offsets, grad_logits, grad_gates if ctx.has_gates else None, grad_bias, grad_values


def triton_attend(values: Sequence[torch.Tensor], offsets: torch.Tensor, logits: torch.Tensor,
                  gates: torch.Tensor | None, keys_per_ref: int, bias: torch.Tensor,
                  off_key_grads: bool = True) -> torch.Tensor:
    """`attend` (search_space.ops) through the Triton kernels: values L maps (B, C, H, W), any memory format,
    float32 or bfloat16 (then the offsets, logits, gates and bias in float32: every sum is in fp32, and the
    output and the value gradients come back in bf16); returns (B, H, W, C) in the values' dtype."""
    stacked = torch.stack([value.permute(0, 2, 3, 1) for value in values]).contiguous()  # (L, B, H, W, C)
    return _TritonAttend.apply(keys_per_ref, off_key_grads, offsets.contiguous(), logits.contiguous(),
                               None if gates is None else gates.contiguous(), bias.contiguous(), stacked)
