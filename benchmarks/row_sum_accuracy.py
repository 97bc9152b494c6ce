"""What summing P's rows on the tensor cores costs in accuracy, on a GPU (docs/perf-notes.md, section 34).

The Gluon kernel can take the softmax's row sums from the tensor cores (P as rounded to E4M3 times a
tile of ones) instead of summing fp32 P on the FMA pipe: the sum of the weights P·V actually used, but
through the FP8 wgmma's accumulation, which keeps about 13 bits below the largest product and drops
smaller terms (P·V's products lose the same). Per input kind and recipe this runs both ways on the same
quantized inputs and prints their output's relative L2 error against float64 attention on the unquantized
inputs, and how far the tensor cores' LSE is from the fp32 one (max and mean |difference|, natural log):

    python benchmarks/row_sum_accuracy.py --out out/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fp8attn.inputs import KINDS, synthetic_qkv
from fp8attn.kernels.attention_fwd_hopper import hopper_forward_launch, hopper_sums_rows_on_tensor_cores
from fp8attn.metrics import compare
from fp8attn.quantize import quantize_qkv
from fp8attn.recipe import DEFAULT_RECIPE, RECIPES
from fp8attn.reference import exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="1,4,4,4096,4096,128;1,2,2,4096,4096,256", help="B,Hq,Hkv,Sq,Sk,D;...")
    parser.add_argument("--recipes", default=f"e4m3,{DEFAULT_RECIPE.name}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    records = []
    for shape in (tuple(map(int, s.split(","))) for s in args.shapes.split(";")):
        for causal in (False, True):
            for kind in KINDS:
                q, k, v = synthetic_qkv(kind, shape, torch.Generator().manual_seed(args.seed), dtype=torch.bfloat16,
                                        device="cuda")
                truth = exact(q, k, v, causal=causal)
                for name in args.recipes.split(","):
                    recipe = RECIPES[name]
                    qkv = quantize_qkv(q, k, v, recipe)
                    if not hopper_sums_rows_on_tensor_cores(qkv):
                        continue
                    runs = {}
                    for exact_lse in (False, True):
                        out = torch.full_like(q, float("nan"))
                        lse = torch.full(q.shape[:3], float("nan"), device="cuda")
                        hopper_forward_launch(qkv, out, lse, causal=causal, softmax_scale=shape[-1] ** -0.5,
                                              p_scale=recipe.p_multiplier, exact_lse=exact_lse).run()
                        runs["fp32" if exact_lse else "tensor_cores"] = (compare(out, truth).rel_l2, lse.double())
                    seen = runs["fp32"][1].isfinite()
                    lse_diff = (runs["tensor_cores"][1] - runs["fp32"][1])[seen]
                    rec = dict(shape=shape, causal=causal, kind=kind, recipe=name,
                               rel_l2_vs_float64={way: err for way, (err, _) in runs.items()},
                               lse_minus_fp32_max=lse_diff.abs().max().item(),
                               lse_minus_fp32_mean=lse_diff.mean().item())
                    records.append(rec)
                    print(f"D{shape[-1]:<3} S{shape[3]} {'causal' if causal else 'full  '} {kind:9s} {name:22s} "
                          f"rel-L2 fp32 sums {runs['fp32'][0]:.5f} tensor-core sums {runs['tensor_cores'][0]:.5f}  "
                          f"LSE tensor-core - fp32: max |.| {rec['lse_minus_fp32_max']:.4f} "
                          f"mean {rec['lse_minus_fp32_mean']:+.5f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "row_sum_accuracy.json").write_text(json.dumps(dict(gpu=torch.cuda.get_device_name(),
                                                                     records=records), indent=1))


if __name__ == "__main__":
    main()
