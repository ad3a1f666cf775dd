"""Forward+backward time of ACLA, same-layer non-local and a 3x3 conv C->C, as ratios to the conv, in one run.

C=64, L=4 reference layers, K=9 keys per layer, batch 4, at 96x96 and 128x128, on the CPU by default.
ACLA runs as in the search (training mode, adaptive gates, all K candidate keys sampled) and as a derived
module keeping about half its keys (top-5 of 9), each with the fused CPU kernel ("fast") and with the grid_sample
reference. `--memory` adds ACLA's peak memory (forward+backward, fresh process per size) at 64^2, 128^2, 256^2.
`--bounds` adds what bounds the CPU kernel at 96x96: its forward and backward alone with offsets spread as a
trained module's (about 1.5 px), with every offset (0.5, 0.5) (every key of a query reads the same 4 pixels: the
same arithmetic, nearly no cache misses) and with 8 px offsets, and its backward without the value gradients (no
scatter), and P1's bound: forward+backward of the conv and of the module's matrix products alone, and what
2x the conv leaves for the kernel and the glue after those products.
`--device cuda` instead compares, on one GPU in one run, ACLA through the Triton kernels against the grid_sample
reference and a 3x3 conv, with each one's peak GPU memory (`--sizes`, default 96). Prints JSON.
Usage: python benchmarks/attention.py [--repeats N] [--memory] [--bounds] [--device cpu|cuda]
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
from search_space.ops import attention_backend, cpu_kernel_available, use_backend, use_reference


def time_fwd_bwd(module: nn.Module, x: torch.Tensor, refs: tuple, repeats: int) -> float:
    """Median seconds of one forward and one backward (an upstream gradient in the output's layout)."""
    grad = torch.randn_like(x)  # same shape and memory format as every contender's output
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    def once():
        module.zero_grad(set_to_none=True)
        for ref in refs or ():
            ref.grad = None  # no accumulation across repeats
        inp = x.detach().requires_grad_(True)
        out = module(inp, refs) if refs is not None else module(inp)
        out.backward(grad)
    once()  # warm-up (and, on a GPU, the kernels' compilation)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        once()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_gpu_mib(module: nn.Module, x: torch.Tensor, refs: tuple | None) -> float:
    """Peak GPU memory of one forward+backward beyond what was allocated before it (inputs, weights)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = module(x.detach().requires_grad_(True), refs) if refs is not None else module(x.detach().requires_grad_(True))
    out.backward(torch.ones_like(out))
    torch.cuda.synchronize()
    module.zero_grad(set_to_none=True)
    return round((torch.cuda.max_memory_allocated() - base) / 2 ** 20, 1)


def kernel_comparison(device: torch.device, sizes: list[int], repeats: int, backend: str = "triton",
                      channels: int = 64, layers: int = 4, keys: int = 9, batch: int = 4) -> dict:
    """ACLA (search form, all keys sampled; and derived, top-5 of 9) through `backend` against the grid_sample
    reference and a 3x3 conv, on `device`, channels-last. Targets: within 3x the conv, 5x faster than the
    reference (C=64, L=4, K=9, batch 4, 96x96)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    acla = ACLA(channels, layers, keys, adaptive=True).train()
    half = ACLA(channels, layers, keys, adaptive=True, active_keys=(keys // 2 + 1,) * layers).train()
    for module in (acla, half):
        nn.init.normal_(module.fuse.weight, std=0.02)
        nn.init.normal_(module.offset_proj.weight, std=0.1)
    for module in (conv, acla, half):
        module.to(device=device, memory_format=torch.channels_last)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
               "backend": backend, "torch": torch.__version__, "channels": channels, "refs": layers, "keys": keys,
               "batch": batch, "sizes": {}}
    for size in sizes:
        x = torch.randn(batch, channels, size, size, device=device).contiguous(memory_format=torch.channels_last)
        refs = tuple(torch.randn_like(x).requires_grad_(True) for _ in range(layers))
        row = {"conv3x3_s": time_fwd_bwd(conv, x, None, repeats)}
        with use_backend(backend):
            row["acla_kernel_s"] = time_fwd_bwd(acla, x, refs, repeats)
            row["acla_half_keys_kernel_s"] = time_fwd_bwd(half, x, refs, repeats)
        with use_reference():
            row["acla_reference_s"] = time_fwd_bwd(acla, x, refs, repeats)
        row = {k: round(v, 6) for k, v in row.items()}
        row["kernel_over_conv"] = round(row["acla_kernel_s"] / row["conv3x3_s"], 2)
        row["reference_over_kernel"] = round(row["acla_reference_s"] / row["acla_kernel_s"], 2)
        row["half_keys_over_all_keys"] = round(row["acla_half_keys_kernel_s"] / row["acla_kernel_s"], 2)
        if device.type == "cuda":
            with use_backend(backend):
                row["acla_kernel_peak_mib"] = peak_gpu_mib(acla, x, refs)
            with use_reference():
                row["acla_reference_peak_mib"] = peak_gpu_mib(acla, x, refs)
            row["conv3x3_peak_mib"] = peak_gpu_mib(conv, x, None)
        results["sizes"][f"{size}x{size}"] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="96,128")
    parser.add_argument("--layout", choices=("channels_last", "contiguous"), default="channels_last")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory at 64^2, 128^2, 256^2")
    parser.add_argument("--bounds", action="store_true", help="also time the CPU kernel alone, under conditions "
                                                               "that separate its costs")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: the Triton kernel against the reference and a conv on the GPU")
    args = parser.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available() or attention_backend("cuda") != "triton":
            raise SystemExit("benchmarks/attention.py: --device cuda needs a GPU and Triton (pip install -e '.[gpu]')")
        sizes = [int(v) for v in args.sizes.split(",")] if args.sizes != "96,128" else [96]
        print(json.dumps(kernel_comparison(torch.device("cuda"), sizes, max(args.repeats, 20)), indent=2))
        return
    torch.manual_seed(0)
    channels, layers, keys, batch = 64, 4, 9, 4
    results = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
               "machine": platform.machine(), "channels": channels, "refs": layers, "keys": keys, "batch": batch,
               "sizes": {}}
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    acla = ACLA(channels, layers, keys, adaptive=True).train()
    half = ACLA(channels, layers, keys, adaptive=True, active_keys=(keys // 2 + 1,) * layers).train()
    full = ACLA(channels, layers, keys, adaptive=True, active_keys=(keys,) * layers).train()  # derived, all keys on
    for module in (acla, half):  # leave the identity initialisation, as a trained module would
        nn.init.normal_(module.fuse.weight, std=0.02)
        nn.init.normal_(module.offset_proj.weight, std=0.1)
    full.load_state_dict(half.state_dict())
    nonlocal_block = NonLocal(channels, grid=1 << 30).train()  # the full form (every pixel a key), as P2 is defined
    layout = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    results["layout"] = args.layout
    for module in (conv, acla, half, full, nonlocal_block):  # every contender in the same layout
        module.to(memory_format=layout)
    for size in (int(s) for s in args.sizes.split(",")):
        x = torch.randn(batch, channels, size, size).contiguous(memory_format=layout)
        # The reference layers need gradients, as inside a network.
        refs = tuple(torch.randn(batch, channels, size, size).contiguous(memory_format=layout).requires_grad_(True)
                     for _ in range(layers))
        t_conv = time_fwd_bwd(conv, x, None, args.repeats)
        t_acla = time_fwd_bwd(acla, x, refs, args.repeats)
        t_half = time_fwd_bwd(half, x, refs, args.repeats)
        t_full = time_fwd_bwd(full, x, refs, args.repeats)
        with use_reference():
            t_acla_ref = time_fwd_bwd(acla, x, refs, args.repeats)
            t_half_ref = time_fwd_bwd(half, x, refs, args.repeats)
        t_nl = time_fwd_bwd(nonlocal_block, x, (), max(1, args.repeats // 2))
        results["sizes"][f"{size}x{size}"] = {
            "conv3x3_s": round(t_conv, 5), "acla_fast_s": round(t_acla, 5), "acla_reference_s": round(t_acla_ref, 5),
            "acla_half_keys_fast_s": round(t_half, 5), "acla_derived_all_keys_fast_s": round(t_full, 5),
            "nonlocal_s": round(t_nl, 5),
            "acla_fast_over_conv": round(t_acla / t_conv, 2), "acla_reference_over_conv": round(t_acla_ref / t_conv, 2),
            "reference_over_fast": round(t_acla_ref / t_acla, 2),
            "nonlocal_over_conv": round(t_nl / t_conv, 2), "nonlocal_over_acla_fast": round(t_nl / t_acla, 2),
            "half_keys_over_derived_all_keys_fast": round(t_half / t_full, 2),
            "half_keys_over_search_all_keys_fast": round(t_half / t_acla, 2),
            "half_keys_over_all_keys_reference": round(t_half_ref / t_acla_ref, 2)}
    results["fast_path"] = cpu_kernel_available(torch.zeros(1))
    if args.bounds and results["fast_path"]:
        results["kernel_bounds_96x96_ms"] = kernel_bounds(channels, layers, keys, batch, 96, max(args.repeats, 5))
        results["p1_bound_96x96_ms"] = p1_bound(conv, acla, results["kernel_bounds_96x96_ms"], batch, 96,
                                                max(args.repeats, 5), layout)
    if args.memory:
        results["acla_peak_memory_mib"] = {f"{s}x{s}": peak_memory_mib(s) for s in (64, 128, 256)}
        sizes = sorted(results["acla_peak_memory_mib"].items(), key=lambda kv: int(kv[0].split("x")[0]))
        base = sizes[0][1]
        results["acla_memory_per_pixel_ratio"] = {k: round(v / base / (int(k.split("x")[0]) / 64) ** 2, 3) for k, v in sizes}
    print(json.dumps(results, indent=2))


def median_ms(call, repeats: int) -> float:
    """Median ms of `repeats` calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 1)


def kernel_bounds(channels: int, layers: int, keys: int, batch: int, size: int, repeats: int) -> dict:
    """Median ms of the CPU kernel alone (search form: 73% of keys gated on, every key's gradients), channels-last
    maps: the same work under offsets that change only where its reads land, and its backward without the value
    gradients' scatter."""
    from search_space.ops import load_extension
    kernel = load_extension()
    generator = torch.Generator().manual_seed(0)
    values = [torch.randn(batch, size, size, channels, generator=generator) for _ in range(layers)]
    shape = (batch, size, size, layers * keys)
    logits = torch.randn(*shape, generator=generator)
    gates = (torch.rand(*shape, generator=generator) < 0.73).float()
    bias, grad = torch.randn(channels, generator=generator), torch.randn(batch, size, size, channels, generator=generator)
    rows = {}
    for name, spread in (("trained_offsets_1.5px", 1.5), ("same_four_pixels", None), ("offsets_8px", 8.0)):
        offsets = (torch.full((*shape, 2), 0.5) if spread is None
                   else torch.randn(*shape, 2, generator=generator) * spread).contiguous()
        none = bias.new_empty(0)  # no residual
        _, weights = kernel.forward(values, offsets, logits, gates, bias, keys, none)
        rows[f"forward_{name}"] = median_ms(lambda: kernel.forward(values, offsets, logits, gates, bias, keys, none),
                                            repeats)
        rows[f"backward_{name}"] = median_ms(lambda: kernel.backward(values, offsets, logits, gates, bias, weights,
                                                                       keys, grad, True, True), repeats)
        if spread == 1.5:
            rows["backward_without_value_grads"] = median_ms(lambda: kernel.backward(
                values, offsets, logits, gates, bias, weights, keys, grad, False, True), repeats)
    return rows


def p1_bound(conv: nn.Module, acla: ACLA, kernel: dict, batch: int, size: int, repeats: int, layout) -> dict:
    """What P1 (ACLA at most 2x a 3x3 conv) leaves for the kernel and the glue once the module's own matrix
    products are paid: forward+backward of the conv, and of the module's offset, logit, gate and value
    projections alone (as ACLA.forward runs them: matrix products on the channels-last maps), median ms."""
    from search_space.acla import _linear, _nhwc
    channels = acla.channels
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=layout).requires_grad_(True)
    refs = [torch.randn(batch, channels, size, size).contiguous(memory_format=layout).requires_grad_(True)
            for _ in range(acla.num_refs)]

    def projections() -> None:
        flat = _nhwc(x)
        outs = [_linear(flat, acla.offset_proj), _linear(flat, acla.logit_proj), _linear(flat, acla.gate_proj)]
        outs += [torch.nn.functional.linear(_nhwc(ref), weight, bias)
                 for ref, (weight, bias) in zip(refs, acla.merged_values())]
        torch.autograd.backward(outs, [torch.ones_like(out) for out in outs])

    def conv_pass() -> None:
        out = conv(x)
        out.backward(torch.ones_like(out))

    conv_ms, projection_ms = median_ms(conv_pass, repeats), median_ms(projections, repeats)
    kernel_ms = kernel["forward_trained_offsets_1.5px"] + kernel["backward_trained_offsets_1.5px"]
    return {"conv3x3": conv_ms, "projections": projection_ms, "kernel": round(kernel_ms, 1),
            "left_for_kernel_and_glue_at_2x": round(2 * conv_ms - projection_ms, 1)}


def peak_memory_mib(size: int) -> float:
    """Peak RSS growth (Linux VmHWM) of one ACLA forward+backward (batch 4, C=64, L=4, K=9) in a fresh process."""
    import subprocess
    import sys
    code = f"""
import torch
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])  # KiB
from search_space.acla import ACLA
torch.manual_seed(0)
m = ACLA(64, 4, 9).train()
x = torch.randn(4, 64, 8, 8); refs = tuple(torch.randn(4, 64, 8, 8) for _ in range(4))
m(x, refs).square().mean().backward()  # warm-up at a tiny size: libraries loaded, kernel built
x = torch.randn(4, 64, {size}, {size}); refs = tuple(torch.randn(4, 64, {size}, {size}).requires_grad_() for _ in range(4))
m.zero_grad(set_to_none=True)
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
base = status("VmRSS")  # inputs allocated: count only the module's own memory
m(x, refs).square().mean().backward()
print((status("VmHWM") - base) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


if __name__ == "__main__":
    main()
