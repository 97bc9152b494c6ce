"""The quantize pass against the GPU's copy bandwidth, measured in the same run.

The performance issue asks the quantize pass to reach 75 % of the copy bandwidth (bytes read +
written). This times the pass's launches alone, as device time per call in a CUDA graph (``fp8attn.bench``'s
``cuda_graph`` method; each call moves ~0.4 GB, far more than L2 holds), and a device-to-device
``copy_`` of 1 GiB, and prints the ratio. ``do_bench`` of a whole :func:`fp8attn.quantize.quantize_qkv`
call is recorded too: it includes the host's allocation and argument binding, which at ~0.2 ms a
call can leave the GPU waiting (perf-notes §17).

Bytes counted: the floor, Q, K and V read once and their 8-bit forms written once (V in fp16 for
fp16-P·V recipes); scales are negligible. The statistics launch's second read of V (of K and V before
perf-notes §47, whose figures counted it) is not counted: it is the pass's cost, not its work.

Run on a GPU: ``python benchmarks/quantize_bandwidth.py [--out DIR]``.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch
import triton

from fp8attn.bench.timing import TimingConfig, time_cuda_graph
from fp8attn.quantize import allocate_quantized, quantize_launches, quantize_qkv
from fp8attn.recipe import DEFAULT_RECIPE, RECIPES

SHAPES = [(2, 16, 8192, 128), (2, 32, 8192, 64), (1, 8, 16384, 256)]  # B, H, S, D (FA3 sweep shapes)
GRAPH = TimingConfig(calls=5, repeats=10)


def copy_bandwidth(nbytes: int = 2**30) -> float:
    """Device-to-device copy, bytes read + written per second."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * nbytes / (ms * 1e-3)


def quantize_bytes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pv_fp16: bool) -> int:
    """The pass's floor: every input read once, every output written once."""
    reads = (q.numel() + k.numel() + v.numel()) * q.element_size()
    writes = q.numel() + k.numel() + v.numel() * (2 if pv_fp16 else 1)
    return reads + writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--recipes", default=f"{DEFAULT_RECIPE.name},e4m3")
    args = parser.parse_args()
    copy = copy_bandwidth()
    print(f"copy bandwidth (read + write): {copy / 1e12:.2f} TB/s")
    records = []
    for name in args.recipes.split(","):
        recipe = RECIPES[name]
        for b, h, s, d in SHAPES:
            q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            qkv = allocate_quantized(b, h, h, s, s, d, recipe, q.device)
            launches = quantize_launches(q, k, v, recipe, qkv)
            nbytes = quantize_bytes(q, k, v, recipe.pv_format == "fp16")
            ms = time_cuda_graph(lambda launches=launches: [launch.run() for launch in launches], GRAPH)
            call_ms = triton.testing.do_bench(functools.partial(quantize_qkv, q, k, v, recipe), warmup=25, rep=100,
                                              return_mode="median")
            rate = nbytes / (ms * 1e-3)
            records.append(dict(recipe=name, B=b, H=h, S=s, D=d, method="cuda_graph", median_ms=ms,
                                do_bench_call_ms=call_ms, bytes=nbytes, bytes_per_s=rate, fraction_of_copy=rate / copy))
            print(f"{name:22s} B{b} H{h} S{s} D{d}: {ms * 1e3:7.1f} µs, {nbytes / 1e6:6.0f} MB, "
                  f"{rate / 1e12:.2f} TB/s = {rate / copy:.0%} of copy (do_bench of a quantize_qkv call: "
                  f"{call_ms * 1e3:.1f} µs)", flush=True)
            del q, k, v, qkv
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantize_bandwidth.json").write_text(json.dumps(
        dict(gpu=torch.cuda.get_device_name(), copy_bytes_per_s=copy, records=records), indent=1))


if __name__ == "__main__":
    main()
