"""Each quantize launch timed alone, per recipe, with the quantize launch's warps and register cap varied.

Answers where the quantize pass's time goes (statistics launch or quantize launch) and whether the
warp count or the register count (programs per SM) is the limit, for docs/perf-notes.md. Times are
``triton.testing.do_bench`` medians (L2 flushed) of one launch on buffers the pass already filled.

Run on a GPU: ``python benchmarks/quantize_launch_study.py [--out DIR] [--variants 8,8/128,4]``
(a variant is ``warps`` or ``warps/maxnreg``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
import triton
from triton.runtime.errors import PTXASError

from fp8attn.quantize import allocate_quantized, quantize_launches
from fp8attn.recipe import RECIPES

SHAPES = [(2, 16, 8192, 128), (32, 16, 512, 128), (1, 8, 16384, 256)]  # B, H, S, D


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--variants", default="8,8/128,4,16")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    args = parser.parse_args()
    records = []
    for name in args.recipes.split(","):
        recipe = RECIPES[name]
        for b, h, s, d in SHAPES:
            q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            out = allocate_quantized(b, h, h, s, s, d, recipe, q.device)
            launches = quantize_launches(q, k, v, recipe, out)
            for launch in launches:
                launch.run()
            row = {}
            for launch in launches[:-1]:
                row["stats"] = triton.testing.do_bench(launch.run, warmup=10, rep=50, return_mode="median") * 1e3
            for spec in args.variants.split(","):
                warps, _, cap = spec.partition("/")
                options = {"num_warps": int(warps), **({"maxnreg": int(cap)} if cap else {})}
                variant = dataclasses.replace(launches[-1], options=options)
                try:
                    row[f"quantize_w{spec}"] = triton.testing.do_bench(variant.run, warmup=10, rep=50,
                                                                       return_mode="median") * 1e3
                except PTXASError as error:  # ptxas refuses a register cap below what a wgmma needs
                    print(f"{name} D{d} variant {spec}: does not compile ({str(error).splitlines()[0][:80]})")
            records.append(dict(recipe=name, B=b, H=h, S=s, D=d, us=row))
            print(f"{name:22s} B{b:<2} H{h} S{s:<5} D{d}: " + "  ".join(f"{key} {t:6.1f}" for key, t in row.items())
                  + " µs", flush=True)
            del q, k, v, out
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantize_launch_study.json").write_text(json.dumps(
        dict(gpu=torch.cuda.get_device_name(), records=records), indent=1))


if __name__ == "__main__":
    main()
