"""The quantize pass against the kernels before, in one run (perf-notes §17).

For each bandwidth shape of ``benchmarks/quantize_bandwidth.py`` it times the pass before (``--before``:
a copy of ``src/fp8attn/quantize.py`` from an earlier commit), in other versions (``--variant``) and as
the library has it now: each launch alone (``triton.testing.do_bench``, L2 flushed, median) and the
pass in a CUDA graph (device time per call), and checks whether each writes the same bytes as before;
at the mission shape it times the pass in a CUDA graph. Optional variants of the library's own
constants: the statistics launch's target program count (its chunk length), tile size and warps, and
the quantize launch's tiles per program.

Run on a GPU: ``python benchmarks/quantize_pipeline_study.py --before PATH [--variant L=PATH] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import sys
from pathlib import Path

import torch
import triton
from benchmarks.quantize_bandwidth import GRAPH, SHAPES, copy_bandwidth, quantize_bytes

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


def parse_variants(texts: list[str]) -> dict[str, Path]:
    variants = {}
    for text in texts:
        label, sep, path = text.partition("=")
        if not sep:
            raise SystemExit(f"--variant must be LABEL=PATH, got {text!r}")
        variants[label] = Path(path)
    return variants


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def time_module(module, q, k, v, recipe, out_before, copy: float, nbytes: int, **kwargs) -> dict:
    """One version of the pass: each launch alone (do_bench) and all of them in a CUDA graph."""
    out, launches = launches_of(module, q, k, v, recipe, **kwargs)
    run_all(launches)
    graph_ms = time_cuda_graph(lambda: run_all(launches), GRAPH)
    return dict(launch_ms=[median_ms(launch.run) for launch in launches], graph_ms=graph_ms,
                fraction_of_copy=nbytes / (graph_ms * 1e-3) / copy, same_bytes=same_bytes(out_before, out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="quantize.py of the commit to compare with")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=PATH",
                        help="another version of quantize.py to time the same way (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--recipes", default=f"{DEFAULT_RECIPE.name},e4m3")
    parser.add_argument("--stats-targets", default="",
                        help="statistics launch: programs to aim for (1000000: only the 32-chunk rule, as before)")
    parser.add_argument("--stats-tiles", default="4096", help="statistics launch: elements per tile")
    parser.add_argument("--stats-warps", default="8", help="statistics launch: warps per program")
    parser.add_argument("--tiles", default="", help="quantize launch: tiles per program")
    parser.add_argument("--mission-tiles", default="",
                        help="mission shape: tiles per program to time (with each --stats-tiles value)")
    parser.add_argument("--skip-sweep-shapes", action="store_true", help="time the mission shape only")
    args = parser.parse_args()
    modules = {"before": load_module(args.before, "quantize_before")}
    for label, path in parse_variants(args.variant).items():
        modules[label] = load_module(path, f"quantize_{label}")
    modules["after"] = quantize
    copy = copy_bandwidth()
    print(f"copy bandwidth (read + write): {copy / 1e12:.2f} TB/s", flush=True)
    records = []
    stats_defaults = quantize._STATS_TARGET_PROGRAMS, quantize._STATS_TILE_ELEMENTS, quantize._STATS_WARPS
    for name, (b, h, s, d) in itertools.product(args.recipes.split(","), [] if args.skip_sweep_shapes else SHAPES):
        recipe = RECIPES[name]
        q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        out_before, _ = launches_of(modules["before"], q, k, v, recipe)
        run_all(_)
        nbytes = quantize_bytes(q, k, v, recipe.pv_format == "fp16")
        row = dict(recipe=name, B=b, H=h, S=s, D=d, bytes=nbytes)
        print(f"{name} B{b} H{h} S{s} D{d}:", flush=True)
        for label, module in modules.items():
            row[label] = time_module(module, q, k, v, recipe, out_before, copy, nbytes)
            r = row[label]
            print(f"   {label:12s} graph {r['graph_ms'] * 1e3:6.1f} µs = {r['fraction_of_copy']:.0%} of copy; "
                  f"launches {[round(t * 1e3, 1) for t in r['launch_ms']]} µs; same bytes as before {r['same_bytes']}",
                  flush=True)
        row["stats_ms"] = {}
        for target, tile, warps in itertools.product(int_list(args.stats_targets), int_list(args.stats_tiles),
                                                     int_list(args.stats_warps)):
            quantize._STATS_TARGET_PROGRAMS, quantize._STATS_TILE_ELEMENTS, quantize._STATS_WARPS = target, tile, warps
            _, launches = launches_of(quantize, q, k, v, recipe)
            run_all(launches)
            row["stats_ms"][f"{target},{tile},{warps}"] = median_ms(launches[0].run)
        quantize._STATS_TARGET_PROGRAMS, quantize._STATS_TILE_ELEMENTS, quantize._STATS_WARPS = stats_defaults
        row["quantize_ms"] = {}
        for tiles in int_list(args.tiles):
            _, launches = launches_of(quantize, q, k, v, recipe, tiles_per_program=tiles)
            run_all(launches)
            row["quantize_ms"][tiles] = median_ms(launches[-1].run)
        if row["stats_ms"]:
            print("   statistics µs by (target programs, tile elements, warps):",
                  {key: round(t * 1e3, 1) for key, t in row["stats_ms"].items()}, flush=True)
        if row["quantize_ms"]:
            print("   quantize µs by tiles per program:",
                  {key: round(t * 1e3, 1) for key, t in row["quantize_ms"].items()}, flush=True)
        records.append(row)
        del q, k, v
    mission = []
    for name in args.recipes.split(","):
        recipe = RECIPES[name]
        q, k, v = (torch.randn(*MISSION, device="cuda", dtype=torch.float16) for _ in range(3))
        row = dict(recipe=name, shape=MISSION)
        for label, module in modules.items():
            _, launches = launches_of(module, q, k, v, recipe)
            row[f"{label}_graph_us"] = 1e3 * time_cuda_graph(lambda launches=launches: run_all(launches),
                                                             TimingConfig(calls=20, repeats=50))
        row["variants_graph_us"] = {}
        for tiles, tile_elements in itertools.product(int_list(args.mission_tiles), int_list(args.stats_tiles)):
            quantize._STATS_TILE_ELEMENTS = tile_elements
            _, launches = launches_of(quantize, q, k, v, recipe, tiles_per_program=tiles)
            row["variants_graph_us"][f"{tiles},{tile_elements}"] = 1e3 * time_cuda_graph(
                lambda launches=launches: run_all(launches), TimingConfig(calls=20, repeats=50))
        quantize._STATS_TILE_ELEMENTS = stats_defaults[1]
        mission.append(row)
        print(f"mission {name}: CUDA graph µs per call", {label: round(row[f"{label}_graph_us"], 2)
                                                        for label in modules}, flush=True)
        if row["variants_graph_us"]:
            print("   by (tiles per program, statistics tile elements):",
                  {key: round(t, 2) for key, t in row["variants_graph_us"].items()}, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantize_pipeline_study.json").write_text(json.dumps(
        dict(gpu=torch.cuda.get_device_name(), copy_bytes_per_s=copy, records=records, mission=mission), indent=1))


if __name__ == "__main__":
    main()
