"""Split-KV at launch-bound shapes: the forward kernel with its keys in 1 to 16 ranges, kernel alone.

For each shape the inputs are quantized once (``--recipes``; ``e4m3`` runs the launches of
``fp8attn-prequant``), and each variant is timed on them: ``library`` is what the library ran before
split-KV (``forward_launch``: the Gluon kernel where it applies, else the Triton kernel over all keys),
``split-N`` the Triton kernel on N key ranges plus the merge launch (every N from 2 to 32 that splits the
key tiles into N non-empty ranges), and ``*`` marks the N the library now picks (``planned_key_splits``).
Each output's rel-L2 from float64 attention on the same bf16 inputs is recorded: a split rounds P against
each range's own running maximum, which should cost no accuracy (at one query row the recipe's P rounding
alone is a few per cent of these random outputs, for any split). Times: ``triton.testing.do_bench``
medians with L2 flushed, and device time per call of 20 calls in a CUDA graph. Prints a table and writes
``--out``/split_kv_study.json.

Run: ``python benchmarks/split_kv_study.py --out DIR`` on the GPU machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton

from fp8attn.bench.timing import TimingConfig, time_cuda_graph, time_do_bench
from fp8attn.kernels.attention_fwd import forward_config, forward_launch, planned_key_splits, split_forward_launches
from fp8attn.metrics import compare
from fp8attn.quantize import quantize_qkv
from fp8attn.recipe import RECIPES
from fp8attn.reference import exact

# (B, Hq, Hkv, Sq, Sk, D, causal): decoding with a KV cache (one query row a head, grouped heads), few heads
# of a long prompt, the mission shape, and controls with enough query blocks to fill the GPU unsplit.
SHAPES = [
    (1, 32, 8, 1, 1024, 128, False), (1, 32, 8, 1, 4096, 128, False), (1, 32, 8, 1, 16384, 128, False),
    (1, 32, 8, 1, 65536, 128, False), (1, 32, 8, 1, 16384, 64, False), (1, 16, 2, 1, 16384, 256, False),
    (4, 32, 8, 1, 16384, 128, False), (8, 32, 8, 1, 4096, 128, False),
    (1, 32, 8, 16, 8192, 128, True),
    (1, 4, 4, 2048, 2048, 128, False), (1, 4, 4, 2048, 2048, 128, True), (1, 2, 2, 8192, 8192, 128, False),
    (1, 8, 8, 512, 512, 64, False), (1, 8, 8, 512, 512, 256, False),
]


def valid_splits(seqlen_k: int, block_n: int) -> list[int]:
    tiles = triton.cdiv(seqlen_k, block_n)
    return [n for n in range(2, 33) if triton.cdiv(tiles, triton.cdiv(tiles, n)) == n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--recipes", default="e4m3,int8-hadamard-vsmooth")
    parser.add_argument("--rep-ms", type=int, default=30)
    parser.add_argument("--shape", action="append", type=lambda text: tuple(int(x) for x in text.split(",")),
                        help="B,Hq,Hkv,Sq,Sk,D,causal (0/1), repeatable; default: the built-in list")
    args = parser.parse_args()
    cfg = TimingConfig(rep_ms=args.rep_ms, calls=20, repeats=10)
    records = []
    for recipe_name in args.recipes.split(","):
        recipe = RECIPES[recipe_name]
        for b, hq, hkv, sq, sk, d, causal in args.shape or SHAPES:
            causal = bool(causal)
            g = torch.Generator(device="cuda").manual_seed(0)
            q = torch.randn(b, hq, sq, d, device="cuda", dtype=torch.bfloat16, generator=g)
            k, v = (torch.randn(b, hkv, sk, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
            qkv = quantize_qkv(q, k, v, recipe)
            dp = qkv.q.shape[-1]
            common = dict(causal=causal, softmax_scale=d**-0.5, p_scale=recipe.p_multiplier)
            out = torch.full(q.shape, float("nan"), device="cuda", dtype=torch.bfloat16)
            lse = torch.empty(q.shape[:3], device="cuda", dtype=torch.float32)
            variants = {"library": [forward_launch(qkv, out, lse, **common)]}
            block_n = forward_config(dp, qkv.k_block, causal, qk_int8=qkv.q.dtype == torch.int8).block_n
            for n in valid_splits(sk, block_n):
                partial_lse = torch.empty((n, b * hq, sq), device="cuda", dtype=torch.float32)
                partial_out = torch.empty((n, b * hq, sq, dp), device="cuda", dtype=torch.float32)
                variants[f"split-{n}"] = split_forward_launches(qkv, out, lse, partial_out, partial_lse, **common)
            planned = planned_key_splits(b, hq, hkv, sq, sk, d, recipe, causal, q.device)
            truth = exact(q, k, v, causal=causal)
            for name, launches in variants.items():
                out.fill_(float("nan"))

                def call(launches=launches):
                    for launch in launches:
                        launch.run()

                call()
                torch.cuda.synchronize()
                rel = compare(out, truth).rel_l2 if out.isfinite().all() else float("nan")
                record = dict(recipe=recipe_name, B=b, Hq=hq, Hkv=hkv, Sq=sq, Sk=sk, D=d, causal=causal,
                              variant=name, planned=name == (f"split-{planned}" if planned > 1 else "library"),
                              rel_l2_vs_float64=rel, do_bench_us=1e3 * time_do_bench(call, cfg),
                              cuda_graph_us=1e3 * time_cuda_graph(call, cfg))
                records.append(record)
                print(f"{recipe_name:22s} B{b} H{hq}/{hkv} Sq{sq} Sk{sk} D{d} {'C' if causal else 'N'} {name:9s}"
                      f"{' *' if record['planned'] else '  '} do_bench {record['do_bench_us']:8.1f} us  "
                      f"graph {record['cuda_graph_us']:8.1f} us  rel_l2 vs float64 {rel:.2e}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "split_kv_study.json").write_text(json.dumps(
        {"gpu": torch.cuda.get_device_name(), "records": records}, indent=1))


if __name__ == "__main__":
    main()
