"""How far the FP8 kernel lands from the float64 emulation of its own recipe on single-row outputs.

For 40 seeds per case: the kernel (on the GPU's quantization) against the emulation (``emulate``, CPU
quantization) as a share of the recipe's own error (the grid test's statistic, bound 0.25), and
against the emulation of the very tensors the GPU quantized. Variants promote the wgmma accumulators
to fp32 every 32 products (``max_num_imprecise_acc``) for Q·Kᵀ, P·V or both.

Run on a GPU: ``python benchmarks/emulation_gap_study.py``.
"""

from __future__ import annotations

import dataclasses

import torch

from fp8attn.inputs import synthetic_qkv
from fp8attn.kernels.attention_fwd import attention_forward, forward_config
from fp8attn.metrics import compare
from fp8attn.quantize import quantize_qkv
from fp8attn.recipe import RECIPES
from fp8attn.reference import attention_emulated, emulate, exact

VARIANTS = [("default", {}), ("qk32", dict(qk_imprecise_acc=32)), ("pv32", dict(pv_imprecise_acc=32)),
            ("both32", dict(qk_imprecise_acc=32, pv_imprecise_acc=32))]
SEEDS = 40


def main() -> None:
    for rname in ["e4m3-unsmoothed", "e4m3", "int8"]:
        r = RECIPES[rname]
        for shape, causal in [((1, 3, 1, 1, 257, 128), False), ((1, 2, 2, 1, 257, 64), True),
                              ((1, 2, 2, 17, 257, 128), False)]:
            worst = {n: [] for n, _ in VARIANTS}
            for seed in range(SEEDS):
                g = torch.Generator().manual_seed(seed)
                q, k, v = synthetic_qkv("randn", shape, g, dtype=torch.bfloat16)
                em = emulate(q, k, v, recipe=r, causal=causal)
                rec = compare(em, exact(q, k, v, causal=causal)).rel_l2
                qkv = quantize_qkv(q.cuda(), k.cuda(), v.cuda(), r)
                em_same = attention_emulated(qkv, causal=causal, scale=shape[-1] ** -0.5, p_scale=r.p_multiplier)
                for n, kw in VARIANTS:
                    cfg = dataclasses.replace(forward_config(qkv.q.shape[-1], r.k_block, causal), **kw)
                    out, _ = attention_forward(qkv, causal=causal, softmax_scale=shape[-1] ** -0.5,
                                               p_scale=r.p_multiplier, out_dtype=torch.bfloat16, config=cfg)
                    worst[n].append((compare(out.cpu(), em).rel_l2 / rec, compare(out.cpu(), em_same.cpu()).rel_l2))
            for n, vals in worst.items():
                ratios = sorted(x for x, _ in vals)
                same = sorted(y for _, y in vals)
                print(f"{rname:16s} {shape} causal={causal} {n:7s} kernel/recipe ratio: "
                      f"median {ratios[SEEDS // 2]:.3f} max {ratios[-1]:.3f} "
                      f"(>0.25: {sum(x > 0.25 for x in ratios)}/{SEEDS}); "
                      f"vs own-quantization emulation max {same[-1]:.2e}", flush=True)


if __name__ == "__main__":
    main()
