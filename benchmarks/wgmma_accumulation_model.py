"""The model of the FP8 wgmma's accumulation (:mod:`fp8attn.wgmma_accumulation`) against the exact emulation
and against the kernel (perf-notes §§35-36).

Runs the ``e4m3`` recipe's float64 emulation (:func:`fp8attn.reference.attention_emulated`) with its P·V
step, and then its Q·Kᵀ too, replaced by the model, with P·V promoted per step where the Gluon kernel
promotes it (padded D ≤ 128) and not where it does not (D = 256), and prints the model's output against
the exact emulation (bf16 output, as the kernel writes it), beside the kernel's own distance from the
emulation measured on the H200 (``--measured``, a ``row_sum_accuracy.py`` JSON; same input kind, drawn at
a different shape and so not the same numbers). It models ``e4m3`` as it was before it smoothed V (the
sixteenth session's measurements); ``--smooth-v`` models ``e4m3`` as it is
(``docs/measurements/e4m3_vsmooth_h200/``), ``--unpromoted`` the D=128 accumulator without its per-step
promotion (an option perf-notes §32 left open). ``--kernel`` (on an sm_90 GPU) runs the Gluon kernel on
the same quantized inputs instead and prints it against the exact emulation and against the model (both
as bf16, so 0 means the same bits).

    python benchmarks/wgmma_accumulation_model.py \\
        --measured docs/measurements/pipelined_row_sums_h200/run3/ones_by_instruction/default/row_sum_accuracy.json
    python benchmarks/wgmma_accumulation_model.py --kernel --mantissa-bits 13 \\
        --kinds v_mean,randn,k_offset,sharp,outliers
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from fp8attn.inputs import synthetic_qkv
from fp8attn.kernels.attention_fwd import forward_config
from fp8attn.kernels.attention_fwd_hopper import hopper_forward_launch, hopper_softmax_keys
from fp8attn.metrics import compare
from fp8attn.quantize import quantize_qkv
from fp8attn.recipe import RECIPES
from fp8attn.reference import attention_emulated, quantize_emulated
from fp8attn.wgmma_accumulation import wgmma_pv, wgmma_qk


def measured_gap(path: Path | None, head_dim: int, kind: str) -> str:
    """The kernel's distance from its emulation on the H200 for e4m3, unmasked, fp32 row sums."""
    if path is None:
        return "-"
    for rec in json.loads(path.read_text())["records"]:
        if rec["recipe"] == "e4m3" and rec["shape"][-1] == head_dim and not rec["causal"] and rec["kind"] == kind:
            return f"{rec['fp32']['rel_l2_vs_emulation']:.4f}"
    return "-"


def gluon_kernel(qkv, scale: float, p_scale: float) -> torch.Tensor:
    """The Gluon kernel's output (bf16, fp32 row sums: the exact emulation's) on the quantized inputs."""
    b, hq, sq, _ = qkv.q.shape
    out = torch.full((b, hq, sq, qkv.head_dim), float("nan"), device=qkv.q.device, dtype=torch.bfloat16)
    lse = torch.full((b, hq, sq), float("nan"), device=qkv.q.device)
    hopper_forward_launch(qkv, out, lse, causal=False, softmax_scale=scale, p_scale=p_scale, exact_lse=True).run()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--head-dims", default="128,256")
    parser.add_argument("--kinds", default="v_mean,randn")
    parser.add_argument("--mantissa-bits", default="12,13,14")
    parser.add_argument("--queries", type=int, default=128, help="query rows")
    parser.add_argument("--keys", type=int, default=4096, help="keys (default 4096)")
    parser.add_argument("--measured", type=Path, default=None)
    parser.add_argument("--smooth-v", action="store_true", help="e4m3 with V smoothed (as it is since the fix)")
    parser.add_argument("--kernel", action="store_true", help="on a GPU: the kernel on the same inputs")
    parser.add_argument("--unpromoted", action="store_true",
                        help="model P·V unpromoted at every head dim (what dropping D=128's promotion would cost)")
    args = parser.parse_args()
    recipe = dataclasses.replace(RECIPES["e4m3"], smooth_v=args.smooth_v)
    device = "cuda" if args.kernel else "cpu"
    last = "kernel vs emulation / vs model" if args.kernel else "H200 kernel vs emulation"
    print(f"{'D':>4} {'inputs':8} {'bits':>4}  model vs emulation (bf16 out): P·V / P·V and Q·Kᵀ   {last}")
    for head_dim in map(int, args.head_dims.split(",")):
        for kind in args.kinds.split(","):
            shape = (1, 1, 1, args.queries, args.keys, head_dim)
            q, k, v = synthetic_qkv(kind, shape, torch.Generator().manual_seed(0), dtype=torch.bfloat16,
                                    device=device)
            qkv = quantize_qkv(q, k, v, recipe) if args.kernel else quantize_emulated(q, k, v, recipe)
            kwargs = dict(causal=False, scale=head_dim**-0.5, p_scale=recipe.p_multiplier,
                          block_n=hopper_softmax_keys(qkv.q.shape[-1], qkv.k_block))
            want = attention_emulated(qkv, **kwargs)
            kernel = gluon_kernel(qkv, kwargs["scale"], kwargs["p_scale"]).double() if args.kernel else None
            promoted = forward_config(qkv.q.shape[-1], qkv.k_block).promote_every == 1 and not args.unpromoted
            for bits in map(int, args.mantissa_bits.split(",")):
                pv = attention_emulated(qkv, pv_accumulate=wgmma_pv(promoted, bits), **kwargs)
                both = attention_emulated(qkv, pv_accumulate=wgmma_pv(promoted, bits), qk_product=wgmma_qk(bits),
                                          **kwargs)
                gaps = [compare(out.to(torch.bfloat16).double(), want).rel_l2 for out in (pv, both)]
                if kernel is None:
                    last = measured_gap(args.measured, head_dim, kind)
                else:
                    modelled = both.to(torch.bfloat16).double()
                    last = f"{compare(kernel, want).rel_l2:.4f} / {compare(kernel, modelled).rel_l2:.4f}"
                print(f"{head_dim:>4} {kind:8} {bits:>4}  {gaps[0]:.4f} / {gaps[1]:.4f}{'':34}{last}", flush=True)


if __name__ == "__main__":
    main()
