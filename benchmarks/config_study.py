"""Forward-kernel tile configurations against the default, kernel alone, on a Hopper GPU.

For each head dimension, every variant of :func:`fp8attn.kernels.attention_fwd.forward_config` below
runs on the same pre-quantized inputs (FA3 sweep shapes: 16k tokens, hidden 2048) and is timed with
``triton.testing.do_bench`` (L2 flushed, median). Each variant's output is checked against the
default's. Run: ``python benchmarks/config_study.py --out DIR`` (writes ``config_study.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path

import torch
import triton

from fp8attn.bench import attention_flops
from fp8attn.kernels.attention_fwd import attention_forward, layout_forward_config
from fp8attn.metrics import compare
from fp8attn.quantize import QuantizedQKV, quantize_qkv
from fp8attn.recipe import DEFAULT_RECIPE, RECIPES

SHAPES = [(4096, False), (16384, False), (1024, True), (4096, True)]  # (S, causal); B = 16384 // S


def variants(qkv: QuantizedQKV, causal: bool) -> dict[str, object]:
    """The library's configuration for this shape ("default", what `forward_launch` runs on the Triton kernel) and
    variants of it (from the twenty-fifth session the default at D=128 and short keys is ``bn64-p0`` where V is
    smoothed)."""
    head_dim = qkv.q.shape[-1]
    base = layout_forward_config(qkv, causal)
    out = {
        "default": base,
        "stages2": dataclasses.replace(base, num_stages=2),
        "stages4": dataclasses.replace(base, num_stages=4),
        "bm64w4": dataclasses.replace(base, block_m=64, num_warps=4),
    }
    if head_dim <= 128:
        out["bn64"] = dataclasses.replace(base, block_n=64)
        out["bn64-stages2"] = dataclasses.replace(base, block_n=64, num_stages=2)
        out["bn64-stages4"] = dataclasses.replace(base, block_n=64, num_stages=4)
        out["bm128w8"] = dataclasses.replace(base, block_m=128, num_warps=8)
        # P·V accumulated in the wgmma's accumulator, as at D=256: 64-key tiles then take 158 registers at D=128
        # (three programs an SM instead of two; perf-notes section 49)
        out["p0"] = dataclasses.replace(base, promote_every=0)
        out["bn64-p0"] = dataclasses.replace(base, block_n=64, promote_every=0)
        out["bn64-p0-stages2"] = dataclasses.replace(base, block_n=64, promote_every=0, num_stages=2)
        out["bn64-p0-stages4"] = dataclasses.replace(base, block_n=64, promote_every=0, num_stages=4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--recipes", default=f"e4m3,{DEFAULT_RECIPE.name}")
    parser.add_argument("--head-dims", default="64,128,256", help="comma list (default 64,128,256)")
    parser.add_argument("--variants", help="comma list of variant names to run (default: all); 'default' always runs")
    parser.add_argument("--shapes", help="sequence lengths, a 'c' suffix for causal: e.g. 512c,1024c "
                        "(default: 4096,16384,1024c,4096c)")
    args = parser.parse_args()
    shapes = SHAPES if not args.shapes else [(int(x.rstrip("c")), x.endswith("c")) for x in args.shapes.split(",")]
    records = []
    for recipe_name in args.recipes.split(","):
        recipe = RECIPES[recipe_name]
        for d in map(int, args.head_dims.split(",")):
            for s, causal in shapes:
                b, h = 16384 // s, 2048 // d
                g = torch.Generator(device="cuda").manual_seed(0)
                q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
                qkv = quantize_qkv(q, k, v, recipe)
                flops = attention_flops(b, h, s, s, d, causal)
                ref = None
                chosen = variants(qkv, causal)
                if args.variants:
                    chosen = {n: c for n, c in chosen.items() if n == "default" or n in args.variants.split(",")}
                for name, cfg in chosen.items():
                    run = functools.partial(attention_forward, qkv, causal=causal, softmax_scale=d**-0.5,
                                            p_scale=recipe.p_multiplier, out_dtype=torch.bfloat16, config=cfg)
                    out = run()[0]
                    ref = out if ref is None else ref
                    diff = compare(out.float(), ref.float()).rel_l2
                    ms = triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median")
                    rec = dict(recipe=recipe_name, D=d, S=s, B=b, H=h, causal=causal, variant=name,
                               config=dataclasses.asdict(cfg), median_ms=ms, tflops=flops / ms / 1e9,
                               rel_l2_vs_default=diff)
                    records.append(rec)
                    print(f"{recipe_name:22s} D{d:<3} S{s:<5} {'causal' if causal else 'full  '} {name:13s} "
                          f"{rec['tflops']:7.1f} TFLOP/s  {ms * 1e3:8.1f} µs  diff {diff:.1e}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config_study.json").write_text(json.dumps(dict(gpu=torch.cuda.get_device_name(), records=records),
                                                           indent=1))


if __name__ == "__main__":
    main()
