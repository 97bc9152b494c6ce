"""What summing P's rows on the tensor cores costs in accuracy, on a GPU (docs/perf-notes.md, sections 34-35).

The Gluon kernel can take the softmax's row sums from the tensor cores (P as rounded to E4M3 times
tiles of ones) instead of summing fp32 P on the FMA pipe: the sum of the weights P·V actually used, but
through the FP8 wgmma's accumulation, which keeps about 13 bits below the largest of an instruction's
products and its accumulator. Per input kind, recipe and seed this runs both ways on the same quantized
inputs and prints their output's relative L2 error against float64 attention on the unquantized inputs
(over the whole output, and of its worst row: a row sum that lost terms scales its row), output and LSE
against the float64 emulation of each way's own recipe (``row_sum_of_rounded_p``), and how far the
tensor cores' LSE is from the fp32 one (max and mean difference, natural log):

    python benchmarks/row_sum_accuracy.py --out out/
    python benchmarks/row_sum_accuracy.py --shapes "1,4,1,1,513,64;1,4,1,1,4096,128" --kinds k_offset,sharp \
        --seeds 12 --out out/single_rows
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fp8attn.inputs import KINDS, synthetic_qkv
from fp8attn.kernels.attention_fwd_hopper import hopper_forward_launch, hopper_softmax_keys
from fp8attn.metrics import compare
from fp8attn.quantize import quantize_qkv
from fp8attn.recipe import DEFAULT_RECIPE, RECIPES
from fp8attn.reference import attention_emulated, exact


def worst_row_rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest relative L2 error of one output row (over the head dim) among rows with a nonzero row."""
    diff = (actual.double() - expected).norm(dim=-1)
    norm = expected.norm(dim=-1)
    return (diff[norm > 0] / norm[norm > 0]).max().item()


def run_both_ways(qkv, truth: torch.Tensor, causal: bool, recipe) -> dict[str, dict]:
    """The kernel with tensor-core and with fp32 row sums on the same quantized inputs: each way's output
    against float64 attention (whole and worst row), and output and LSE against the float64 emulation of
    its own recipe (``row_sum_of_rounded_p`` as the way sums)."""
    kwargs = dict(causal=causal, p_scale=recipe.p_multiplier)
    scale = qkv.head_dim**-0.5
    runs = {}
    for exact_lse in (False, True):
        out = torch.full(truth.shape, float("nan"), device="cuda", dtype=torch.bfloat16)
        lse = torch.full(truth.shape[:3], float("nan"), device="cuda")
        hopper_forward_launch(qkv, out, lse, softmax_scale=scale, exact_lse=exact_lse, **kwargs).run()
        want, want_lse = attention_emulated(qkv, scale=scale, block_n=hopper_softmax_keys(qkv.q.shape[-1], qkv.k_block),
                                            row_sum_of_rounded_p=not exact_lse, return_lse=True, **kwargs)
        seen = want_lse.isfinite()
        runs["fp32" if exact_lse else "tensor_cores"] = dict(
            rel_l2_vs_float64=compare(out, truth).rel_l2, worst_row_rel_l2_vs_float64=worst_row_rel_l2(out, truth),
            rel_l2_vs_emulation=compare(out, want).rel_l2,
            lse_minus_emulation_max=(lse.double() - want_lse)[seen].abs().max().item(), lse=lse.double())
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="1,4,4,4096,4096,128;1,2,2,4096,4096,256", help="B,Hq,Hkv,Sq,Sk,D;...")
    parser.add_argument("--recipes", default=f"e4m3,{DEFAULT_RECIPE.name}")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seeds", type=int, default=1, help="input seeds 0, 1, ... per shape, kind and mask")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    records = []
    cases = [(tuple(map(int, shape.split(","))), causal, kind, seed) for shape in args.shapes.split(";")
             for causal in (False, True) for kind in args.kinds.split(",") for seed in range(args.seeds)]
    for shape, causal, kind, seed in cases:
        q, k, v = synthetic_qkv(kind, shape, torch.Generator().manual_seed(seed), dtype=torch.bfloat16, device="cuda")
        truth = exact(q, k, v, causal=causal)
        for name in args.recipes.split(","):
            runs = run_both_ways(quantize_qkv(q, k, v, RECIPES[name]), truth, causal, RECIPES[name])
            tc, fp32 = runs["tensor_cores"], runs["fp32"]
            seen = fp32["lse"].isfinite()
            lse_diff = (tc.pop("lse") - fp32.pop("lse"))[seen]
            rec = dict(shape=shape, causal=causal, kind=kind, seed=seed, recipe=name, **runs,
                       lse_minus_fp32_max=lse_diff.abs().max().item(), lse_minus_fp32_mean=lse_diff.mean().item())
            records.append(rec)
            print(f"D{shape[-1]:<3} S{shape[3]}x{shape[4]} {'causal' if causal else 'full  '} {kind:9s} {seed:2d} "
                  f"{name:22s} rel-L2 fp32 / tensor-core sums {fp32['rel_l2_vs_float64']:.5f} / "
                  f"{tc['rel_l2_vs_float64']:.5f} (worst row {fp32['worst_row_rel_l2_vs_float64']:.4f} / "
                  f"{tc['worst_row_rel_l2_vs_float64']:.4f}; vs emulation {fp32['rel_l2_vs_emulation']:.4f} / "
                  f"{tc['rel_l2_vs_emulation']:.4f}, its LSE max |.| {fp32['lse_minus_emulation_max']:.4f} / "
                  f"{tc['lse_minus_emulation_max']:.4f})  LSE tensor-core - fp32: max |.| "
                  f"{rec['lse_minus_fp32_max']:.4f} mean {rec['lse_minus_fp32_mean']:+.5f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "row_sum_accuracy.json").write_text(json.dumps(dict(gpu=torch.cuda.get_device_name(),
                                                                     records=records), indent=1))


if __name__ == "__main__":
    main()
