"""How far each recipe's log-sum-exp is from float64's, with and without K's smoothing undone (CPU).

``fp8attn.attention(..., return_lse=True)`` returns the LSE of the caller's scores ``scale·q·kᵀ``; the
forward kernels compute that of the scores they see, which for recipes that smooth K are short by
``scale·q·mean(K)`` per row (``fp8attn/kernels/unsmoothed_lse.py`` adds it back). This prints, per input
kind and recipe, max and mean |LSE − float64 LSE| (natural log) of the recipe's float64 emulation
(``fp8attn.reference.emulate``, which adds the term back as the library does) and of the kernels' LSE
before the shift (``attention_emulated``):

    python benchmarks/lse_accuracy.py --shape 1,2,2,1024,1024,128 --causal
"""

from __future__ import annotations

import argparse

import torch

from fp8attn.inputs import KINDS, synthetic_qkv
from fp8attn.recipe import RECIPES
from fp8attn.reference import attention_emulated, emulate, exact, quantize_emulated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="1,2,2,1024,1024,128", help="B,Hq,Hkv,Sq,Sk,D")
    parser.add_argument("--recipes", default="e4m3,int8-hadamard-vsmooth,e4m3-unsmoothed")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shape = tuple(int(x) for x in args.shape.split(","))
    scale = shape[-1] ** -0.5
    for kind in KINDS:
        q, k, v = synthetic_qkv(kind, shape, torch.Generator().manual_seed(args.seed), dtype=torch.bfloat16)
        _, truth = exact(q, k, v, causal=args.causal, return_lse=True)
        seen = truth.isfinite()
        for name in args.recipes.split(","):
            recipe = RECIPES[name]
            _, returned = emulate(q, k, v, recipe=recipe, causal=args.causal, scale=scale, return_lse=True)
            _, smoothed = attention_emulated(quantize_emulated(q, k, v, recipe), causal=args.causal, scale=scale,
                                             p_scale=recipe.p_multiplier, return_lse=True)
            now, before = ((x - truth)[seen].abs() for x in (returned, smoothed))
            print(f"{kind:9s} {name:22s} returned LSE: max {now.max():.4f} mean {now.mean():.5f}   "
                  f"without the shift: max {before.max():.4f} mean {before.mean():.5f}", flush=True)


if __name__ == "__main__":
    main()
