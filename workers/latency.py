"""The latency a trial reports: a forward pass of the full-width network on a 128x128 input."""
from __future__ import annotations

import statistics
import time

import torch

LATENCY_INPUT = 128  # side of the square input the worker times a forward pass on


@torch.no_grad()
def measure_latency_ms(model: torch.nn.Module, in_channels: int, repeats: int = 7) -> float:
    """Median of `repeats` forward passes on one thread after two warm-up passes. One thread, because a
    trial's CPUs are shared with its neighbours' and the OS: with every thread, one genotype measured 26-142 ms."""
    model.eval()
    x = torch.rand(1, in_channels, LATENCY_INPUT, LATENCY_INPUT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model(x)
        model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return 1000 * statistics.median(times)
