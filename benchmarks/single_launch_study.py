"""One launch against two at short lengths: where :func:`single_launch_applies` should draw the line.

For each shape, ``fp8attn.attention`` is timed with each path forced (the single launch, or the
quantize pass and the FP8 kernel): device time per call from a CUDA graph of 20 calls and the eager
host loop, as ``fp8attn bench`` measures them. The last column is the path the library's rule picks.

Run on a GPU: ``python benchmarks/single_launch_study.py [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import fp8attn
from fp8attn import api
from fp8attn.bench.timing import TimingConfig, time_cuda_graph, time_eager
from fp8attn.recipe import RECIPES

# B, H, S, D, causal: the mission shape, then more heads (programs) and fewer or more keys.
SHAPES = [(1, 8, 512, 64, False), (1, 8, 512, 64, True), (1, 8, 128, 64, False), (1, 8, 256, 64, False),
          (1, 32, 256, 64, False), (1, 16, 512, 64, False), (2, 16, 512, 64, False), (4, 16, 512, 64, False),
          (8, 16, 512, 64, False), (4, 16, 512, 64, True), (1, 8, 512, 32, False), (1, 8, 1024, 64, False)]
RECIPE_NAMES = ("int8-hadamard-vsmooth", "e4m3")


def _force(path: str) -> None:
    api.single_launch_applies = lambda *shape: path == "single"
    api._PLANS.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    cfg = TimingConfig(calls=20, repeats=10)
    rule = api.single_launch_applies
    records = []
    print(f"{'recipe':<22} {'B':>2} {'H':>3} {'S':>5} {'D':>3} {'causal':>6} | graph µs one / two | "
          f"eager µs one / two | rule")
    for name in RECIPE_NAMES:
        for b, h, s, d, causal in SHAPES:
            q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.float16) for _ in range(3))
            row = {"recipe": name, "B": b, "H": h, "S": s, "D": d, "causal": causal}
            for path in ("single", "two"):
                _force(path)

                def call(q=q, k=k, v=v, causal=causal, name=name):
                    return fp8attn.attention(q, k, v, causal=causal, recipe=name)

                row[f"graph_us_{path}"] = time_cuda_graph(call, cfg) * 1e3
                row[f"eager_us_{path}"] = time_eager(call, cfg) * 1e3
            row["rule"] = "single" if rule(b, h, s, s, d, RECIPES[name]) else "two"
            records.append(row)
            print(f"{name:<22} {b:>2} {h:>3} {s:>5} {d:>3} {causal!s:>6} | {row['graph_us_single']:8.1f} / "
                  f"{row['graph_us_two']:6.1f} | {row['eager_us_single']:8.1f} / {row['eager_us_two']:6.1f} | "
                  f"{row['rule']}", flush=True)
    api.single_launch_applies = rule
    gpu = torch.cuda.get_device_name()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "single_launch_study.json").write_text(json.dumps({"gpu": gpu, "records": records}, indent=1))


if __name__ == "__main__":
    main()
