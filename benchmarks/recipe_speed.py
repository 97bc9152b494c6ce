"""Every recipe on the GPU: correctness against its emulation, and speed on the FA3 sweep's 8k shapes.

For each recipe: rel-L2 of the kernel against the recipe's float64 emulation and of the emulation
against float64 (B1 H4/2 S 300/700 D128, causal), then ``do_bench`` medians of ``fp8attn.attention``
(quantization included) and of the attention kernel alone at B2 S8k, D 64 and 128 (H = 2048 / D).

Run on a GPU: ``python benchmarks/recipe_speed.py --out DIR`` (writes ``recipe_speed.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton

import fp8attn
from fp8attn.inputs import synthetic_qkv
from fp8attn.kernels.attention_fwd import attention_forward
from fp8attn.metrics import compare
from fp8attn.quantize import quantize_qkv
from fp8attn.recipe import RECIPES
from fp8attn.reference import emulate, exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--recipes", default=",".join(RECIPES))
    args = parser.parse_args()
    rows = []
    for name in args.recipes.split(","):
        recipe = RECIPES[name]
        gen = torch.Generator().manual_seed(0)
        q, k, v = synthetic_qkv("randn", (1, 4, 2, 300, 700, 128), gen, dtype=torch.bfloat16, device="cuda")
        out = fp8attn.attention(q, k, v, causal=True, recipe=name)
        emulated = emulate(q.cpu(), k.cpu(), v.cpu(), recipe=recipe, causal=True)
        row = {"recipe": name, "kernel_vs_emulation": compare(out, emulated).rel_l2,
               "emulation_vs_float64": compare(emulated, exact(q.cpu(), k.cpu(), v.cpu(), causal=True)).rel_l2}
        for d in (64, 128):
            b, h, s = 2, 2048 // d, 8192
            q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            flops = 4 * b * h * s * s * d
            qkv = quantize_qkv(q, k, v, recipe)

            def whole(q=q, k=k, v=v, name=name) -> None:
                fp8attn.attention(q, k, v, recipe=name)

            def kernel(qkv=qkv, d=d, recipe=recipe) -> None:
                attention_forward(qkv, causal=False, softmax_scale=d**-0.5, p_scale=recipe.p_multiplier,
                                  out_dtype=torch.bfloat16)

            ms = triton.testing.do_bench(whole, return_mode="median")
            ms_kernel = triton.testing.do_bench(kernel, return_mode="median")
            row[f"tflops_D{d}_with_quantize"] = flops / (ms * 1e-3) / 1e12
            row[f"tflops_D{d}_kernel"] = flops / (ms_kernel * 1e-3) / 1e12
            del q, k, v, qkv
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    (args.out / "recipe_speed.json").write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows},
                                                           indent=1))


if __name__ == "__main__":
    main()
