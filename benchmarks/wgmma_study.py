"""The warp-specialized Gluon forward kernel against the Triton one, kernel alone, on a Hopper GPU.

Part 1, correctness: on ragged and causal-edge shapes both kernels read the same quantized inputs;
outputs are poisoned with NaN first, and each kernel is compared with the float64 emulation of the
recipe (``fp8attn.reference.attention_emulated``) with its own softmax step: the Triton kernel's tile,
two of them for the Gluon kernel (``hopper_softmax_keys``). Part 2, speed: FA3 sweep
shapes (16k tokens, hidden 2048), ``triton.testing.do_bench`` medians with L2 flushed, for each
``NUM_STAGES`` of the Gluon kernel. Run: ``python benchmarks/wgmma_study.py --out DIR``.
(The single-warpgroup Gluon kernel measured as "gluon" in docs/measurements/wgmma_study_h100_v*.json
is at commit 15b14ba, its first draft (v1) at 1eea34a; perf-notes section 16. The warp-specialized
kernel with one tile per softmax step, bit-identical to the Triton kernel, is at commit 1fb365f.)
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch
import triton

from fp8attn.bench import attention_flops
from fp8attn.kernels.attention_fwd import forward_config, forward_launch
from fp8attn.kernels.attention_fwd_hopper import hopper_forward_launch, hopper_softmax_keys
from fp8attn.metrics import compare
from fp8attn.quantize import quantize_qkv
from fp8attn.recipe import DEFAULT_RECIPE, RECIPES
from fp8attn.reference import attention_emulated

# (B, Hq, Hkv, Sq, Sk, D, causal): ragged lengths, Sq != Sk both ways, GQA, single rows, causal edges.
CHECK_SHAPES = [
    (2, 4, 2, 300, 1000, 128, True), (1, 3, 3, 1000, 300, 128, True), (2, 2, 2, 777, 777, 128, False),
    (1, 4, 1, 1, 513, 128, False), (1, 2, 2, 257, 257, 64, True), (1, 2, 2, 1029, 1029, 64, False),
    (1, 2, 2, 400, 900, 256, True), (2, 2, 1, 640, 640, 256, False), (1, 2, 2, 96, 40, 80, True),
]
SPEED_SHAPES = [(1024, False), (4096, False), (16384, False), (1024, True), (4096, True), (16384, True)]


def _launch(kind: str, qkv, out, lse, causal: bool, recipe, stages: int):
    kwargs = dict(causal=causal, softmax_scale=qkv.head_dim**-0.5, p_scale=recipe.p_multiplier)
    if kind == "triton":
        cfg = forward_config(qkv.q.shape[-1], qkv.k_block, causal, qk_int8=qkv.q.dtype == torch.int8)
        return forward_launch(qkv, out, lse, **kwargs, config=cfg)  # an explicit config: the Triton kernel
    return hopper_forward_launch(qkv, out, lse, **kwargs, num_stages=stages)


def _inputs(b, hq, hkv, sq, sk, d, recipe, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, hq, sq, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, hkv, sk, d, device="cuda", dtype=torch.bfloat16, generator=g) + 0.5
    v = torch.randn(b, hkv, sk, d, device="cuda", dtype=torch.bfloat16, generator=g)
    return quantize_qkv(q, k, v, recipe)


def check(recipes, seed: int) -> list[dict]:
    records = []
    for recipe in recipes:
        for i, (b, hq, hkv, sq, sk, d, causal) in enumerate(CHECK_SHAPES):
            qkv = _inputs(b, hq, hkv, sq, sk, d, recipe, seed + i)
            steps = {"triton": forward_config(qkv.q.shape[-1], qkv.k_block).block_n,
                     "hopper": hopper_softmax_keys(qkv.q.shape[-1], qkv.k_block)}
            rec = dict(recipe=recipe.name, shape=[b, hq, hkv, sq, sk, d], causal=causal)
            for kind, block_n in steps.items():
                out = torch.full((b, hq, sq, d), float("nan"), device="cuda", dtype=torch.bfloat16)
                lse = torch.full((b, hq, sq), float("nan"), device="cuda")
                _launch(kind, qkv, out, lse, causal, recipe, 4).run()
                emu, emu_lse = attention_emulated(qkv, causal=causal, scale=d**-0.5, p_scale=recipe.p_multiplier,
                                                  block_n=block_n, return_lse=True)
                seen = torch.isfinite(emu_lse)
                rec[f"{kind}_nan"] = int(torch.isnan(out).sum() + torch.isnan(lse).sum())
                rec[f"{kind}_rel_l2_vs_emulation"] = compare(out.double(), emu).rel_l2
                rec[f"{kind}_lse_max_abs_vs_emulation"] = float((lse.double() - emu_lse)[seen].abs().max()) \
                    if seen.any() else 0.0
                rec[f"{kind}_lse_finite_as_emulation"] = bool(torch.equal(torch.isfinite(lse), seen))
            records.append(rec)
            print(f"check {recipe.name:22s} {rec['shape']} causal={causal!s:5} " + " ".join(
                f"{kind}: nan={rec[f'{kind}_nan']} rel-L2 {rec[f'{kind}_rel_l2_vs_emulation']:.2e} "
                f"lse {rec[f'{kind}_lse_max_abs_vs_emulation']:.1e} "
                f"-inf rows ok {rec[f'{kind}_lse_finite_as_emulation']}"
                for kind in steps), flush=True)
    return records


def speed(recipes, head_dims, variants, shapes=SPEED_SHAPES) -> list[dict]:
    records = []
    for recipe in recipes:
        for d in head_dims:
            for s, causal in shapes:
                b, h = 16384 // s, 2048 // d
                qkv = _inputs(b, h, h, s, s, d, recipe, 0)
                out = torch.empty(b, h, s, d, device="cuda", dtype=torch.bfloat16)
                lse = torch.empty(b, h, s, device="cuda")
                flops = attention_flops(b, h, s, s, d, causal)
                ref = None
                for kind, stages in [("triton", 3), *variants]:
                    launch = _launch(kind, qkv, out, lse, causal, recipe, stages)
                    launch.run()
                    result = out.clone()
                    ref = result if ref is None else ref
                    ms = triton.testing.do_bench(functools.partial(launch.run), warmup=25, rep=100,
                                                 return_mode="median")
                    rec = dict(recipe=recipe.name, D=d, S=s, B=b, H=h, causal=causal, kernel=kind, stages=stages,
                               median_ms=ms, tflops=flops / ms / 1e9,
                               rel_l2_vs_triton=compare(result.float(), ref.float()).rel_l2)
                    records.append(rec)
                    print(f"speed {recipe.name:22s} D{d:<3} S{s:<5} {'causal' if causal else 'full  '} {kind:6s} "
                          f"st{stages} {rec['tflops']:7.1f} TFLOP/s {ms * 1e3:8.1f} µs "
                          f"diff {rec['rel_l2_vs_triton']:.1e}", flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--recipes", default=f"e4m3,{DEFAULT_RECIPE.name}")
    parser.add_argument("--head-dims", default="64,128,256")
    parser.add_argument("--variants", default="hopper:4,hopper:6",
                        help="kernels to time besides the Triton one, KIND:NUM_STAGES")
    parser.add_argument("--seqlens", help="sequence lengths to time, comma-separated (default: 1024,4096,16384), "
                        "each causal and not")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--only-check", action="store_true")
    parser.add_argument("--profile-target", metavar="D,S,CAUSAL,STAGES",
                        help="run each kernel once on this FA3 sweep shape and exit (a target for ncu)")
    args = parser.parse_args()
    recipes = [RECIPES[name] for name in args.recipes.split(",")]
    if args.profile_target:
        d, s, causal, stages = map(int, args.profile_target.split(","))
        b, h = 16384 // s, 2048 // d
        for recipe in recipes:
            qkv = _inputs(b, h, h, s, s, d, recipe, 0)
            out = torch.empty(b, h, s, d, device="cuda", dtype=torch.bfloat16)
            lse = torch.empty(b, h, s, device="cuda")
            for kind in ("triton", "hopper"):
                _launch(kind, qkv, out, lse, bool(causal), recipe, stages).run()
        torch.cuda.synchronize()
        return
    result = dict(gpu=torch.cuda.get_device_name(), seed=args.seed)
    if not args.skip_check:
        result["check"] = check(recipes, args.seed)
    if not args.only_check:
        variants = [(kind, int(stages)) for kind, stages in (v.split(":") for v in args.variants.split(","))]
        shapes = SPEED_SHAPES if not args.seqlens else [
            (int(s), causal) for causal in (False, True) for s in args.seqlens.split(",")]
        result["speed"] = speed(recipes, [int(d) for d in args.head_dims.split(",")], variants, shapes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"wgmma_study{'_check' if args.only_check else ''}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
