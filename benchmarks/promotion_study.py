"""Choose how often FP8 P·V partial sums are promoted to fp32: accuracy at long S against speed.

Hopper's FP8 wgmma accumulates in reduced precision. The forward kernel adds each key tile's P·V into
an fp32 accumulator every ``promote_every`` tiles (0: never; the whole row accumulates in the wgmma
accumulator). For each head dim and interval this measures

* accuracy: rel-L2 of the kernel against the float64 emulation of its own recipe (which accumulates
  exactly), at B=1, H=2 and long S, so the accumulator's rounding is all that differs;
* speed: ``triton.testing.do_bench`` median of the attention kernel alone on the FA3 sweep shape
  (16k tokens, H = 2048 / D), quantization excluded.

Run on a GPU: ``python benchmarks/promotion_study.py --out DIR``. Writes ``promotion_study.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
import triton

from fp8attn.kernels.attention_fwd import attention_forward, forward_config
from fp8attn.metrics import compare
from fp8attn.quantize import padded_head_dim, quantize_qkv
from fp8attn.recipe import E4M3_BLOCK as RECIPE  # the study was run on the "e4m3" recipe
from fp8attn.reference import attention_emulated

VARIANTS = [  # (promote_every, qk max_num_imprecise_acc, pv max_num_imprecise_acc)
    (1, None, None), (0, None, None), (0, 32, None), (0, None, 32), (0, 32, 32),
]


def _config(d: int, variant: tuple) -> object:
    pe, qk, pv = variant
    return dataclasses.replace(forward_config(padded_head_dim(d), RECIPE.k_block), promote_every=pe,
                               qk_imprecise_acc=qk, pv_imprecise_acc=pv)


def accuracy(d: int, s: int, variant: tuple, gen: torch.Generator) -> float:
    q, k, v = (torch.randn(1, 2, s, d, generator=gen).to("cuda", torch.bfloat16) for _ in range(3))
    qkv = quantize_qkv(q, k, v, RECIPE)
    cfg = _config(d, variant)
    # fp32 output, so the output's own rounding does not hide the accumulator's.
    out, _ = attention_forward(qkv, causal=False, softmax_scale=d**-0.5, p_scale=RECIPE.p_multiplier,
                               out_dtype=torch.float32, config=cfg)
    want = attention_emulated(qkv, causal=False, scale=d**-0.5, p_scale=RECIPE.p_multiplier,
                              block_n=cfg.block_n)
    return compare(out, want).rel_l2


def speed(d: int, s: int, variant: tuple, causal: bool) -> float:
    b, h = 16384 // s, 2048 // d
    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    qkv = quantize_qkv(q, k, v, RECIPE)
    cfg = _config(d, variant)
    def run() -> None:
        attention_forward(qkv, causal=causal, softmax_scale=d**-0.5, p_scale=RECIPE.p_multiplier,
                          out_dtype=torch.bfloat16, config=cfg)

    ms = triton.testing.do_bench(run, return_mode="median")
    flops = 4 * b * h * s * s * d * (0.5 if causal else 1.0)
    return flops / (ms * 1e-3) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--seqlens", type=int, nargs="+", default=[1024, 16384])
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for d in (64, 128, 256):
        for variant in VARIANTS:
            row = {"D": d, "promote_every": variant[0], "qk_imprecise_acc": variant[1], "pv_imprecise_acc": variant[2]}
            for s in args.seqlens:
                row[f"rel_l2_vs_emulation_S{s}"] = accuracy(d, s, variant, gen)
            row["tflops_S8192_full"] = speed(d, 8192, variant, causal=False)
            rows.append(row)
            print(json.dumps(row), flush=True)
            torch.cuda.empty_cache()
    (args.out / "promotion_study.json").write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows},
                                                              indent=1))


if __name__ == "__main__":
    main()
