"""How the keys per online-softmax step (where P is rounded) change a recipe's error against float64.

The Triton kernel rounds P once per key tile, the Hopper kernel once per two tiles
(``fp8attn.kernels.attention_fwd_hopper.hopper_softmax_keys``: 256 keys at padded D=128, 128 at
D=256). Both follow the same recipe; only the running max P is taken against differs. This runs the
recipe's float64 emulation (``fp8attn.reference.attention_emulated``) with each step on the same
quantized inputs and prints each one's relative L2 error against exact float64 attention, per input
kind (CPU only, no GPU needed):

    python benchmarks/softmax_step_accuracy.py --shape 1,2,2,4096,4096,128 --steps 128,256
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fp8attn.inputs import KINDS, synthetic_qkv
from fp8attn.metrics import compare
from fp8attn.recipe import DEFAULT_RECIPE, RECIPES
from fp8attn.reference import attention_emulated, exact, quantize_emulated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="1,2,2,4096,4096,128", help="B,Hq,Hkv,Sq,Sk,D")
    parser.add_argument("--steps", default="128,256", help="keys per softmax step, comma list")
    parser.add_argument("--recipes", default=f"{DEFAULT_RECIPE.name},e4m3")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the records as JSON here")
    args = parser.parse_args()
    shape = tuple(int(x) for x in args.shape.split(","))
    steps = [int(x) for x in args.steps.split(",")]
    records = []
    for kind in KINDS:
        q, k, v = synthetic_qkv(kind, shape, torch.Generator().manual_seed(args.seed), dtype=torch.bfloat16)
        truth = exact(q, k, v, causal=args.causal)
        for name in args.recipes.split(","):
            recipe = RECIPES[name]
            qkv = quantize_emulated(q, k, v, recipe)
            errors = {}
            for step in steps:
                out = attention_emulated(qkv, causal=args.causal, scale=shape[-1] ** -0.5,
                                         p_scale=recipe.p_multiplier, block_n=step)
                errors[step] = compare(out, truth).rel_l2
            records.append(dict(kind=kind, recipe=name, shape=shape, causal=args.causal, rel_l2=errors))
            print(f"{kind:9s} {name:22s} " + "  ".join(f"{s} keys: {e:.4e}" for s, e in errors.items()), flush=True)
    if args.out:
        args.out.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
