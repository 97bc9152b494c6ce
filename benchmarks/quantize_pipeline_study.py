"""The quantize pass against the kernels before, in one run (perf-notes §17).

Variants: the statistics launch's target number of programs (its chunk length), tile size and warps,
and the quantize launch's tiles per program. For each bandwidth shape of
``benchmarks/quantize_bandwidth.py`` it times (``triton.testing.do_bench``, L2 flushed, median) each
launch alone and the whole pass, before (``--before``: a copy of ``src/fp8attn/quantize.py`` from an
earlier commit) and after, checks that both write the same bytes, and at the mission shape times the
pass in a CUDA graph (device time per call).

Run on a GPU: ``python benchmarks/quantize_pipeline_study.py --before PATH [--out DIR]``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import json
import sys
from pathlib import Path

import torch
import triton
from benchmarks.quantize_bandwidth import SHAPES, copy_bandwidth, quantize_bytes

from fp8attn import quantize
from fp8attn.bench.timing import TimingConfig, time_cuda_graph
from fp8attn.recipe import DEFAULT_RECIPE, RECIPES

MISSION = (1, 8, 512, 64)
OUTPUTS = ("q", "k", "v_t", "q_scale", "k_scale", "v_scale", "k_mean", "v_mean")


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def median_ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")


def same_bytes(a, b) -> bool:
    for name in OUTPUTS:
        x, y = getattr(a, name), getattr(b, name)
        if (x is None) != (y is None):
            return False
        if x is not None and not torch.equal(x.view(torch.uint8), y.view(torch.uint8)):
            return False
    return True


def launches_of(module, q, k, v, recipe, **kwargs):
    out = module.allocate_quantized(*q.shape[:2], k.shape[1], q.shape[2], k.shape[2], q.shape[3], recipe, q.device)
    return out, module.quantize_launches(q, k, v, recipe, out, **kwargs)


def run_all(launches) -> None:
    for launch in launches:
        launch.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="quantize.py of the commit to compare with")
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--recipes", default=f"{DEFAULT_RECIPE.name},e4m3")
    parser.add_argument("--stats-targets", default="128,256,1000000",
                        help="statistics launch: programs to aim for (1000000: only the 32-chunk rule, as before)")
    parser.add_argument("--stats-tiles", default="4096,8192", help="statistics launch: elements per tile")
    parser.add_argument("--stats-warps", default="4,8", help="statistics launch: warps per program")
    parser.add_argument("--tiles", default="4,8,16", help="quantize launch: tiles per program")
    args = parser.parse_args()
    before = load_module(args.before, "quantize_before")
    copy = copy_bandwidth()
    print(f"copy bandwidth (read + write): {copy / 1e12:.2f} TB/s", flush=True)
    records = []
    stats_defaults = quantize._STATS_TARGET_PROGRAMS, quantize._STATS_TILE_ELEMENTS, quantize._STATS_WARPS
    for name, (b, h, s, d) in itertools.product(args.recipes.split(","), SHAPES):
        recipe = RECIPES[name]
        q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        row = dict(recipe=name, B=b, H=h, S=s, D=d)
        out_before, launches = launches_of(before, q, k, v, recipe)
        run_all(launches)
        row["before_ms"] = [median_ms(launch.run) for launch in launches]
        row["before_total_ms"] = median_ms(functools.partial(before.quantize_qkv, q, k, v, recipe))
        out_after = quantize.quantize_qkv(q, k, v, recipe)
        row["same_bytes"] = same_bytes(out_before, out_after)
        nbytes = quantize_bytes(q, k, v, recipe.pv_format == "fp16", out_after.kv_partials is not None)
        row["after_total_ms"] = median_ms(functools.partial(quantize.quantize_qkv, q, k, v, recipe))
        row["bytes"] = nbytes
        row["fraction_before"] = nbytes / (row["before_total_ms"] * 1e-3) / copy
        row["fraction_after"] = nbytes / (row["after_total_ms"] * 1e-3) / copy
        row["stats_ms"] = {}
        for target, tile, warps in itertools.product(map(int, args.stats_targets.split(",")),
                                                     map(int, args.stats_tiles.split(",")),
                                                     map(int, args.stats_warps.split(","))):
            quantize._STATS_TARGET_PROGRAMS, quantize._STATS_TILE_ELEMENTS, quantize._STATS_WARPS = target, tile, warps
            out, launches = launches_of(quantize, q, k, v, recipe)
            run_all(launches)
            row["stats_ms"][f"{target},{tile},{warps}"] = (median_ms(launches[0].run), same_bytes(out_before, out))
        quantize._STATS_TARGET_PROGRAMS, quantize._STATS_TILE_ELEMENTS, quantize._STATS_WARPS = stats_defaults
        row["quantize_ms"] = {}
        for tiles in map(int, args.tiles.split(",")):
            out, launches = launches_of(quantize, q, k, v, recipe, tiles_per_program=tiles)
            run_all(launches)
            row["quantize_ms"][tiles] = (median_ms(launches[-1].run), same_bytes(out_before, out))
        records.append(row)
        print(f"{name:22s} B{b} H{h} S{s} D{d}: before {row['before_total_ms'] * 1e3:6.1f} µs "
              f"({row['fraction_before']:.0%}), launches {[round(t * 1e3, 1) for t in row['before_ms']]}; "
              f"after {row['after_total_ms'] * 1e3:6.1f} µs ({row['fraction_after']:.0%}), "
              f"same bytes {row['same_bytes']}", flush=True)
        print("   statistics µs by (target programs, tile elements, warps):",
              {key: (round(t * 1e3, 1), ok) for key, (t, ok) in row["stats_ms"].items()}, flush=True)
        print("   quantize µs by tiles per program:",
              {key: (round(t * 1e3, 1), ok) for key, (t, ok) in row["quantize_ms"].items()}, flush=True)
        del q, k, v
    mission = []
    for name in args.recipes.split(","):
        recipe = RECIPES[name]
        q, k, v = (torch.randn(*MISSION, device="cuda", dtype=torch.float16) for _ in range(3))
        outs = {}
        row = dict(recipe=name, shape=MISSION)
        for label, module in (("before", before), ("after", quantize)):
            out, launches = launches_of(module, q, k, v, recipe)
            row[f"{label}_graph_us"] = 1e3 * time_cuda_graph(lambda launches=launches: run_all(launches),
                                                                 TimingConfig(calls=20, repeats=50))
            outs[label] = out
        row["same_bytes"] = same_bytes(outs["before"], outs["after"])
        mission.append(row)
        print(f"mission {name}: CUDA graph per call before {row['before_graph_us']:.2f} µs, after "
              f"{row['after_graph_us']:.2f} µs, same bytes {row['same_bytes']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantize_pipeline_study.json").write_text(json.dumps(
        dict(gpu=torch.cuda.get_device_name(), copy_bytes_per_s=copy, records=records, mission=mission), indent=1))


if __name__ == "__main__":
    main()
