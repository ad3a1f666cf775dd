"""fp32 against bf16 autocast, side by side in one run: speed (`speed`) and quality (`quality`). Prints JSON.

speed: for each net, one training step (forward, backward, Adam; the quick profile's batch 8 of 48x48 patches,
car q=10 on the embedded photos) in fp32 and in bf16, interleaved round by round so that drift hits both
alike: the median ms per step, steps/s and the bf16 speed-up; then the inference latency of one 256x256 image
in each precision. The nets: the plain 64x8 backbone, the searched ACLA net (--genotype, default the fidelity
study's 32x8 with ACLA after blocks 0-5) and its plain-matched rival (the plain backbone widened to its MACs,
as the ablation builds it), with the equal-MACs ratio, ACLA net / plain-matched steps per second, in each
precision. And ACLA alone (C=64, 4 reference layers, 9 keys each, batch 4, 96x96, search form: adaptive gates,
every key sampled), forward+backward, its inputs in the precision's dtype as a net under autocast hands them;
and on the CPU its attention kernel alone (the C++ extension's forward and backward, value gradients included),
with offsets spread as a trained module's (1.5 px) and with every offset (0.5, 0.5), where every key of a query
reads the same four pixels from cache: what remains there is the kernel's arithmetic, not its memory traffic.

quality: the plain 64x8 backbone and the searched ACLA net each trained in fp32 and in bf16 on `--seeds` paired
seeds (the same patches and initial weights for both precisions) for `--steps` steps at the quick profile, and
scored in fp32 on the embedded hold-out photos (the search's validation set, never trained on): the paired
bf16 - fp32 PSNR difference per seed, its mean and 95% t-interval, in Y and RGB.

Usage: python benchmarks/precision.py speed [--rounds N] [--steps N] [--device cpu|cuda]
       python benchmarks/precision.py quality [--seeds N] [--steps N]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from attention import median_ms  # benchmarks/attention.py, beside this script
from pipeline import plain_matched  # benchmarks/pipeline.py: the ablation's rival at equal MACs
from search_space.acla import ACLA
from search_space.backbone import build_network
from search_space.genotype import Genotype
from search_space.precision import autocast, compute_dtype, cpu_bf16_flags
from workers.data import DataSpec, embedded_sets
from workers.profiles import get_profile
from workers.tasks import task_from_options
from workers.train import make_optimizer, make_sampler, train, train_step

DEFAULT_GENOTYPE = Path(__file__).parent / "results" / "fidelity" / "car-acla-0-5.json"
PRECISIONS = ("fp32", "bf16")


def step_ms(genotype: Genotype, task, profile, device, precision: str, steps: int, seed: int = 0) -> float:
    """Median ms of one training step (data drawn before the clock starts)."""
    train_set, _ = embedded_sets()
    sampler = make_sampler(task, train_set, profile, seed=seed)
    torch.manual_seed(seed)
    model = build_network(genotype).to(device).train()
    optimizer, _ = make_optimizer(model, profile)
    batches = [tuple(t.to(device) for t in next(sampler)) for _ in range(steps + 1)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    train_step(model, optimizer, *batches[0], precision)  # warm-up
    times = []
    for batch in batches[1:]:
        sync()
        start = time.perf_counter()
        train_step(model, optimizer, *batch, precision)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


@torch.no_grad()
def latency_ms(genotype: Genotype, device, precision: str, size: int = 256, repeats: int = 5) -> float:
    model = build_network(genotype).to(device).eval()
    x = torch.rand(1, genotype.in_channels, size, size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeats + 1):
        sync()
        start = time.perf_counter()
        with autocast(precision, device):
            model(x)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1000


def module_ms(device, precision: str, repeats: int, channels: int = 64, layers: int = 4, keys: int = 9,
              batch: int = 4, size: int = 96) -> float:
    """ACLA alone, forward+backward, in the benchmark's standard shape."""
    torch.manual_seed(0)
    module = ACLA(channels, layers, keys, adaptive=True).train()
    torch.nn.init.normal_(module.fuse.weight, std=0.02)
    torch.nn.init.normal_(module.offset_proj.weight, std=0.1)  # offsets that vary from pixel to pixel
    module.to(device=device, memory_format=torch.channels_last)
    dtype = compute_dtype(precision)

    def tensor():
        return torch.randn(batch, channels, size, size, device=device).to(dtype).contiguous(
            memory_format=torch.channels_last)
    x, refs = tensor(), [tensor() for _ in range(layers)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeats + 1):
        module.zero_grad(set_to_none=True)
        inputs = [t.detach().requires_grad_(True) for t in [x, *refs]]
        sync()
        start = time.perf_counter()
        with autocast(precision, device):
            out = module(inputs[0], inputs[1:])
        out.backward(torch.ones_like(out))
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1000


def kernel_ms(precision: str, repeats: int, spread: float | None, channels: int = 64, layers: int = 4,
              keys: int = 9, batch: int = 4, size: int = 96) -> dict:
    """The CPU kernel alone: median ms of its forward and of its backward."""
    from search_space.ops.acla_attend import load_extension
    extension = load_extension()
    gen = torch.Generator().manual_seed(0)
    dtype = compute_dtype(precision)
    shape = (batch, size, size, layers * keys)
    values = [torch.randn(batch, size, size, channels, generator=gen).to(dtype) for _ in range(layers)]
    offsets = (torch.randn(*shape, 2, generator=gen) * spread if spread is not None
               else torch.full((*shape, 2), 0.5))
    logits, bias = torch.randn(*shape, generator=gen), torch.randn(channels, generator=gen)
    gates = (torch.rand(*shape, generator=gen) < 0.73).float()
    residual, grad = (torch.randn(batch, size, size, channels, generator=gen).to(dtype) for _ in range(2))
    _, weights = extension.forward(values, offsets, logits, gates, bias, keys, residual)
    calls = {"forward": lambda: extension.forward(values, offsets, logits, gates, bias, keys, residual),
             "backward": lambda: extension.backward(values, offsets, logits, gates, bias, weights, keys, grad, True,
                                                    True)}
    return {name: median_ms(call, repeats) for name, call in calls.items()}


def speed(args, device) -> dict:
    profile, task = get_profile("quick"), task_from_options("car")
    searched = Genotype.from_json(Path(args.genotype).read_text())
    base = dict(task=task.name, scale=task.scale, in_channels=task.in_channels, stages=profile.stages)
    nets = {"plain_64x8": Genotype(**base, channels=64, blocks=8), "acla_searched": searched,
            "plain_matched": plain_matched(searched)}
    rounds = {name: {p: [] for p in PRECISIONS} for name in nets}
    for _ in range(args.rounds):  # interleaved: fp32 and bf16 of every net in each round
        for name, genotype in nets.items():
            for precision in PRECISIONS:
                rounds[name][precision].append(step_ms(genotype, task, profile, device, precision, args.steps))
    result = {}
    for name, genotype in nets.items():
        ms = {p: statistics.median(rounds[name][p]) for p in PRECISIONS}
        lat = {p: latency_ms(genotype, device, p) for p in PRECISIONS}
        result[name] = {"shape": f"{genotype.channels}x{genotype.blocks}", "positions": list(genotype.positions),
                        **{f"{p}_step_ms": round(ms[p], 1) for p in PRECISIONS},
                        **{f"{p}_steps_per_s": round(1000 / ms[p], 2) for p in PRECISIONS},
                        "bf16_speedup": round(ms["fp32"] / ms["bf16"], 2),
                        **{f"{p}_latency_ms_256": round(lat[p], 1) for p in PRECISIONS},
                        "bf16_latency_speedup": round(lat["fp32"] / lat["bf16"], 2)}
    result["equal_macs_ratio"] = {p: round(result["acla_searched"][f"{p}_steps_per_s"]
                                           / result["plain_matched"][f"{p}_steps_per_s"], 3) for p in PRECISIONS}
    module = {p: [] for p in PRECISIONS}
    for _ in range(args.rounds):
        for precision in PRECISIONS:
            module[precision].append(module_ms(device, precision, repeats=3))
    ms = {p: statistics.median(module[p]) for p in PRECISIONS}
    result["acla_module_c64_l4_k9_b4_96"] = {**{f"{p}_ms": round(ms[p], 1) for p in PRECISIONS},
                                             "bf16_speedup": round(ms["fp32"] / ms["bf16"], 2)}
    if device.type == "cpu":
        for label, spread in (("spread_1.5px", 1.5), ("every_offset_0.5", None)):
            runs = {p: [kernel_ms(p, 5, spread) for _ in range(args.rounds)] for p in PRECISIONS}
            cell = {}
            for part in ("forward", "backward"):
                ms = {p: statistics.median(r[part] for r in runs[p]) for p in PRECISIONS}
                cell[part] = {**{f"{p}_ms": round(ms[p], 1) for p in PRECISIONS},
                              "bf16_speedup": round(ms["fp32"] / ms["bf16"], 2)}
            result.setdefault("cpu_kernel_c64_l4_k9_b4_96", {})[label] = cell
    return result


def t_interval(values: list[float]) -> list[float]:
    """[mean, low, high] of paired differences, 95% t-interval, as the ablation computes it."""
    from workers.ablation import paired_interval
    interval = paired_interval(values)
    return [round(float(interval[key]), 4) for key in ("mean", "low", "high")]


def quality(args, device) -> dict:
    import dataclasses
    task = task_from_options("car")
    data = DataSpec(*embedded_sets())
    searched = Genotype.from_json(Path(args.genotype).read_text())
    nets = {"plain_64x8": Genotype(task=task.name, scale=task.scale, in_channels=task.in_channels, channels=64,
                                   blocks=8, stages=4), "acla_searched": searched}
    result = {}
    for name, genotype in nets.items():
        scores = {p: [] for p in PRECISIONS}
        for seed in range(args.seeds):
            for precision in PRECISIONS:  # the same seed: the same patches and initial weights
                profile = dataclasses.replace(get_profile("quick"), precision=precision)
                metrics = train(genotype=genotype, task=task, data=data, profile=profile, steps=args.steps,
                                seed=seed, device=device).metrics
                scores[precision].append({"psnr_y": metrics["psnr_y"], "psnr_rgb": metrics["psnr_rgb"]})
        result[name] = {"steps": args.steps, "seeds": args.seeds, **{p: scores[p] for p in PRECISIONS}}
        for channel in ("psnr_y", "psnr_rgb"):
            gaps = [b[channel] - f[channel] for b, f in zip(scores["bf16"], scores["fp32"])]
            result[name][f"bf16_minus_fp32_{channel}"] = {"per_seed": [round(g, 4) for g in gaps],
                                                          "mean_low_high": t_interval(gaps)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("speed", "quality"))
    parser.add_argument("--rounds", type=int, default=3, help="speed: interleaved rounds (median of them)")
    parser.add_argument("--steps", type=int, help="speed: timed steps per round (default 8); quality: training "
                                                  "steps (default 400, the quick retraining schedule)")
    parser.add_argument("--seeds", type=int, default=3, help="quality: paired seeds")
    parser.add_argument("--genotype", default=str(DEFAULT_GENOTYPE), help="the searched ACLA net (JSON)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    args.steps = args.steps or (8 if args.part == "speed" else 400)
    device = torch.device(args.device)
    header = {"part": args.part, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
              platform.processor() or platform.machine(), "cpu_bf16": list(cpu_bf16_flags()),
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    body = speed(args, device) if args.part == "speed" else quality(args, device)
    print(json.dumps({**header, **body}, indent=2))


if __name__ == "__main__":
    main()
