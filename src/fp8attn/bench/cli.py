"""The ``fp8attn bench`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from fp8attn.bench.gate import default_recipe_name, run_gate
from fp8attn.bench.measure import measure_shape
from fp8attn.bench.progress import make_reporter
from fp8attn.bench.providers import PROVIDERS, unavailable_reason
from fp8attn.bench.results import gpu_slug, load_json, plot, report, versions, write_json
from fp8attn.bench.shapes import (
    DTYPES,
    QUICK_HEAD_DIMS,
    QUICK_SEQLENS,
    SWEEP_HEAD_DIMS,
    SWEEP_SEQLENS,
    Record,
    Shape,
    decode_shapes,
    mission_shape,
    parse_shape,
    sweep_shapes,
)
from fp8attn.bench.timing import METHODS, TimingConfig


def _int_list(text: str) -> list[int]:
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [p.strip() for p in text.split(",") if p.strip()]
        unknown = [v for v in values if v not in choices]
        if unknown or not values:
            bad = ", ".join(unknown) or repr(text)
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
        return values
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fp8attn bench", description="Benchmark fp8attn against SDPA, cuDNN FP8 and SageAttention.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Timing: do_bench flushes L2 before every call (Triton zeroes a 256 MB buffer); cuda_graph is "
               "device time per call of N captured calls; eager is host wall-clock of N calls.\n"
               "Default shapes: the FA3 sweep (do_bench) and the mission shape (all methods); with --shape, only "
               "the given shapes unless --suite says otherwise.")
    p.add_argument("--providers", type=_choice_list(PROVIDERS), help=f"comma list from: {', '.join(PROVIDERS)}")
    p.add_argument("--methods", type=_choice_list(METHODS),
                   help=f"comma list from: {', '.join(METHODS)} (default: do_bench; all three for the mission shape)")
    p.add_argument("--shape", action="append", type=parse_shape, default=[], metavar="B,Hq,Hkv,Sq,Sk,D",
                   help="an extra shape (repeatable); run for each --causal value, in --dtype")
    p.add_argument("--suite", type=_choice_list(("sweep", "mission", "decode", "custom")),
                   help="comma list of sweep, mission, decode (one query row a head, GQA 32/8, D=128, 1k-64k keys), "
                        "custom (default: sweep,mission; custom alone with --shape)")
    p.add_argument("--d", type=_int_list, help="sweep head dims (default 64,128,256)")
    p.add_argument("--seqlens", type=_int_list, help="sweep sequence lengths (default 512,...,16384)")
    p.add_argument("--causal", choices=("0", "1", "both"), default="both",
                   help="sweep and --shape masks (the mission shape is non-causal)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16",
                   help="dtype of sweep and --shape inputs (default bf16; the mission shape is fp16)")
    p.add_argument("--quick", action="store_true",
                   help=f"reduced sweep: D {','.join(map(str, QUICK_HEAD_DIMS))}, "
                        f"S {','.join(map(str, QUICK_SEQLENS))}")
    p.add_argument("--rep-ms", type=int, default=100, help="do_bench repetition time in ms (default 100)")
    p.add_argument("--calls", type=int, default=20, help="calls per CUDA graph / eager loop (default 20)")
    p.add_argument("--repeats", type=int, default=10, help="graph replays / eager loops per median (default 10)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    p.add_argument("--name", help="file stem of the JSON and PNG (default: from the GPU name, e.g. h100)")
    p.add_argument("--plot-only", type=Path, metavar="JSON",
                   help="redraw the table and the plot (next to the JSON) from a saved JSON; no GPU needed")
    p.add_argument("--gate", type=Path, metavar="JSON",
                   help="regression gate: re-run fp8attn on the shapes and methods of a committed results file "
                        "(same GPU kind) and exit 1 if any figure is more than 10%% below it (3 if every such "
                        "figure is host-side: its CUDA-graph device time held; 2 on another GPU kind)")
    return p


def plan(args: argparse.Namespace) -> list[tuple[Shape, tuple[str, ...]]]:
    """The shapes to measure, each with its timing methods."""
    suites = args.suite or (["custom"] if args.shape else ["sweep", "mission"])
    causals = {"0": [False], "1": [True], "both": [False, True]}[args.causal]
    jobs: list[tuple[Shape, tuple[str, ...]]] = []
    default = tuple(args.methods or ("do_bench",))
    if "sweep" in suites:
        head_dims = args.d or (QUICK_HEAD_DIMS if args.quick else SWEEP_HEAD_DIMS)
        seqlens = args.seqlens or (QUICK_SEQLENS if args.quick else SWEEP_SEQLENS)
        jobs += [(s, default) for s in sweep_shapes(head_dims, seqlens, causals, args.dtype)]
    if "mission" in suites and args.causal != "1":
        jobs.append((mission_shape(), tuple(args.methods or METHODS)))
    if "decode" in suites:
        jobs += [(s, tuple(args.methods or ("do_bench", "cuda_graph"))) for s in decode_shapes(args.dtype)]
    if "custom" in suites:
        jobs += [(Shape(*dims, c, args.dtype, "custom"), default) for dims in args.shape for c in causals]
    return jobs


def run_plot_only(path: Path) -> int:
    if not path.is_file():
        print(f"fp8attn bench: --plot-only: no such file {path}", file=sys.stderr)
        return 2
    meta, records = load_json(path)
    gpu = meta.get("gpu", "?")
    report(records, gpu)
    for png in plot(records, path.with_suffix(".png"), f"{gpu} · {meta.get('date', '')}"):
        print(f"plot: {png}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.plot_only is not None:
        return run_plot_only(args.plot_only)
    if not torch.cuda.is_available():
        print("fp8attn bench: CUDA is not available; the benchmark needs an NVIDIA GPU "
              "(only --plot-only works without one)", file=sys.stderr)
        return 2
    if args.gate is not None:
        return run_gate(args.gate, TimingConfig(rep_ms=args.rep_ms, calls=args.calls, repeats=args.repeats))

    gpu = torch.cuda.get_device_name()
    stem = args.name or gpu_slug(gpu)
    json_path, png_path = args.out / f"{stem}.json", args.out / f"{stem}.png"
    providers = []
    for p in args.providers or PROVIDERS:
        why = unavailable_reason(p)
        if why:
            print(f"skip {p}: unavailable: {why}")
        else:
            providers.append(p)
    jobs = plan(args)
    if not providers or not jobs:
        print("fp8attn bench: nothing to run (no available provider or no shape left after the filters)",
              file=sys.stderr)
        return 2
    meta = {"gpu": gpu, "versions": versions(), "command": " ".join(sys.argv),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "fp8attn_recipe": default_recipe_name()}
    print(f"{gpu}: {len(jobs)} shapes × {len(providers)} providers → {json_path}")
    cfg = TimingConfig(rep_ms=args.rep_ms, calls=args.calls, repeats=args.repeats)
    records: list[Record] = []
    with make_reporter(len(jobs) * len(providers)) as reporter:
        for shape, methods in jobs:
            records += measure_shape(shape, methods, providers, cfg, reporter)
            write_json(json_path, meta, records)
    report(records, gpu)
    pngs = plot(records, png_path, f"{gpu} · {meta['date']}")
    print(f"results: {json_path}" + "".join(f", plot: {png}" for png in pngs))
    return 0
