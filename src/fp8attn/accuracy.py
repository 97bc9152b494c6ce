"""``fp8attn accuracy``: every recipe's error against float64 on the inputs that break 8-bit attention.

For each synthetic input kind (:mod:`fp8attn.inputs`) and each recipe it reports relative L2 error,
cosine similarity and RMSE against float64 attention, and the ratio of the relative L2 error to the
per-tensor E4M3 baseline (cuDNN-style scales, emulated on the same inputs). On the CPU the recipes
run as their exact emulation (:func:`fp8attn.reference.emulate`; ``--kernel`` runs the Triton kernels
through the interpreter instead, slowly); on a GPU they run as the kernels, and PyTorch SDPA in bf16
is added as a column.

``python -m fp8attn.accuracy --help`` lists the options; results go to a JSON file. ``--models`` runs
the real-model suite (:mod:`fp8attn.real_models`) instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import fp8attn
from fp8attn.inputs import KINDS, synthetic_qkv
from fp8attn.metrics import compare
from fp8attn.recipe import RECIPES
from fp8attn.reference import attention_emulated, emulate, exact, quantize_per_tensor_emulated

BASELINE = "per-tensor-e4m3"
DEFAULT_SHAPE = (2, 8, 8, 1024, 1024, 128)  # B, Hq, Hkv, Sq, Sk, D: the anchors' setup
LONG_SHAPE = (1, 2, 2, 8192, 8192, 128)


def _run_recipe(name: str, q, k, v, causal: bool, use_kernel: bool) -> torch.Tensor:
    if name == BASELINE:
        qkv = quantize_per_tensor_emulated(q.cpu(), k.cpu(), v.cpu())
        return attention_emulated(qkv, causal=causal, scale=q.shape[-1] ** -0.5, p_scale=448.0)
    if use_kernel:
        return fp8attn.attention(q, k, v, causal=causal, recipe=name)
    return emulate(q.cpu(), k.cpu(), v.cpu(), recipe=RECIPES[name], causal=causal)


PEERS = ("cudnn-fp8", "sage1")


def _peers(q, k, v, shape, causal: bool, truth: torch.Tensor) -> dict:
    """cuDNN's FP8 SDPA and SageAttention on the same inputs, through ``fp8attn bench``'s providers,
    where they are installed; a peer that cannot run this shape is reported and left out."""
    from fp8attn import bench

    inputs = bench.Inputs(bench.Shape(*shape, causal=causal, dtype="bf16"), q, k, v)
    rows = {}
    for peer in PEERS:
        why = bench.unavailable_reason(peer)
        if why:
            print(f"  {peer}: not available: {why}", file=sys.stderr)
            continue
        try:
            runner = bench.BUILDERS[peer](inputs)
            with runner.context():
                rows[peer] = compare(runner.output(runner.fn()), truth)
        except Exception as e:  # a peer's limitation must not stop the suite
            print(f"  {peer}: skipped: {type(e).__name__}: {e}", file=sys.stderr)
    return rows


def measure(kinds, recipes, shape, *, causal: bool, device: str, use_kernel: bool, seed: int) -> list[dict]:
    """One record per (input kind, recipe): metrics against float64 and the ratio to the baseline."""
    records = []
    for kind in kinds:
        gen = torch.Generator().manual_seed(seed)
        q, k, v = synthetic_qkv(kind, shape, gen, dtype=torch.bfloat16, device=device)
        truth = exact(q.cpu(), k.cpu(), v.cpu(), causal=causal)
        rows = {}
        for name in [BASELINE, *recipes]:
            start = time.perf_counter()
            rows[name] = compare(_run_recipe(name, q, k, v, causal, use_kernel), truth)
            print(f"  {kind:<9} {name:<24} {rows[name]}  ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
        if device == "cuda":
            sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                                    enable_gqa=q.shape[1] != k.shape[1])
            rows["sdpa-bf16"] = compare(sdpa, truth)
            rows.update(_peers(q, k, v, shape, causal, truth))
        base = rows[BASELINE].rel_l2
        for name, report in rows.items():
            records.append({"kind": kind, "recipe": name, "shape": list(shape), "causal": causal,
                            "ratio_to_per_tensor": report.rel_l2 / base, **report.as_dict()})
    return records


def format_table(records: list[dict]) -> str:
    recipes = list(dict.fromkeys(r["recipe"] for r in records))
    kinds = list(dict.fromkeys(r["kind"] for r in records))
    by = {(r["kind"], r["recipe"]): r for r in records}
    width = max(len(n) for n in recipes) + 2
    header = f"{'inputs':<10}" + "".join(f"{n:>{width + 8}}" for n in recipes)
    lines = ["rel-L2 vs float64 (ratio to per-tensor E4M3)", header]
    for kind in kinds:
        cells = []
        for name in recipes:
            r = by.get((kind, name))
            cells.append(f"{r['rel_l2']:.4f} ({r['ratio_to_per_tensor']:.2f})" if r else "-")
        lines.append(f"{kind:<10}" + "".join(f"{c:>{width + 8}}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fp8attn accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma list (default: all)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma list from {', '.join(KINDS)}")
    parser.add_argument("--shape", default=",".join(map(str, DEFAULT_SHAPE)), help="B,Hq,Hkv,Sq,Sk,D")
    parser.add_argument("--long", action="store_true", help=f"also randn at the long shape {LONG_SHAPE}")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--kernel", action="store_true",
                        help="on the CPU, run the Triton kernels through the interpreter instead of the emulation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the records as JSON here")
    parser.add_argument("--models", action="store_true",
                        help="run the real-model suite instead (SmolLM2 and MiniLM; see fp8attn.real_models); "
                             "remaining arguments go to it")
    args, rest = parser.parse_known_args(argv)
    if args.models:
        from fp8attn import real_models

        out = ["--out", str(args.out)] if args.out else []
        recipes = ["--recipes", args.recipes] if args.recipes != ",".join(RECIPES) else []
        return real_models.main([*recipes, *out, *rest])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    recipes = [r for r in args.recipes.split(",") if r]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes {unknown}; choose from {list(RECIPES)}")
    shape = tuple(int(x) for x in args.shape.split(","))
    use_kernel = args.device == "cuda" or args.kernel
    mode = "kernels on the GPU" if args.device == "cuda" else (
        "kernels through Triton's interpreter" if args.kernel else "exact emulation of each recipe (CPU)")
    print(f"fp8attn accuracy: {mode}; shape {shape}, {'causal' if args.causal else 'full'}", file=sys.stderr)
    records = measure(args.kinds.split(","), recipes, shape, causal=args.causal, device=args.device,
                      use_kernel=use_kernel, seed=args.seed)
    if args.long:
        records += [dict(r, kind="long") for r in measure(["randn"], recipes, LONG_SHAPE, causal=args.causal,
                                                          device=args.device, use_kernel=use_kernel, seed=args.seed)]
    print(format_table(records))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"mode": mode, "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                "command": "fp8attn accuracy " + " ".join(sys.argv[1:] if argv is None else argv)}
        args.out.write_text(json.dumps({**meta, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
