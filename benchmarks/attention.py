"""Forward+backward time of ACLA, same-layer non-local and a 3x3 conv C->C, as ratios to the conv, in one run.

C=64, L=4 reference layers, K=9 keys per layer, batch 4, at 96x96 and 128x128, on the CPU by default.
ACLA runs as in the search (training mode, adaptive gates, all K candidate keys sampled) and as a derived
module keeping half its keys (top-k). Prints JSON.   Usage: python benchmarks/attention.py [--repeats N]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn as nn

from search_space.acla import ACLA
from search_space.attention import NonLocal


def time_fwd_bwd(module: nn.Module, x: torch.Tensor, refs: tuple, repeats: int) -> float:
    def once():
        module.zero_grad(set_to_none=True)
        inp = x.detach().requires_grad_(True)
        out = module(inp, refs) if refs is not None else module(inp)
        out.square().mean().backward()
    once()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="96,128")
    args = parser.parse_args()
    torch.manual_seed(0)
    channels, layers, keys, batch = 64, 4, 9, 4
    results = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
               "machine": platform.machine(), "channels": channels, "refs": layers, "keys": keys, "batch": batch,
               "sizes": {}}
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    acla = ACLA(channels, layers, keys, adaptive=True).train()
    half = ACLA(channels, layers, keys, adaptive=True, active_keys=(keys // 2 + 1,) * layers).train()
    for module in (acla, half):  # leave the identity initialisation, as a trained module would
        nn.init.normal_(module.fuse.weight, std=0.02)
        nn.init.normal_(module.offset_proj.weight, std=0.1)
    nonlocal_block = NonLocal(channels).train()
    for size in (int(s) for s in args.sizes.split(",")):
        x = torch.randn(batch, channels, size, size)
        refs = tuple(torch.randn(batch, channels, size, size) for _ in range(layers))
        t_conv = time_fwd_bwd(conv, x, None, args.repeats)
        t_acla = time_fwd_bwd(acla, x, refs, args.repeats)
        t_half = time_fwd_bwd(half, x, refs, args.repeats)
        t_nl = time_fwd_bwd(nonlocal_block, x, (), max(1, args.repeats // 2))
        results["sizes"][f"{size}x{size}"] = {
            "conv3x3_s": round(t_conv, 5), "acla_s": round(t_acla, 5), "acla_half_keys_s": round(t_half, 5),
            "nonlocal_s": round(t_nl, 5),
            "acla_over_conv": round(t_acla / t_conv, 2), "nonlocal_over_conv": round(t_nl / t_conv, 2),
            "nonlocal_over_acla": round(t_nl / t_acla, 2), "half_keys_over_all_keys": round(t_half / t_acla, 2)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
