"""The ``fp8attn`` command: ``demo``, ``bench``, ``accuracy``, ``inspect``."""

from __future__ import annotations

import argparse
import sys
import time

import torch

import fp8attn
from fp8attn.metrics import compare
from fp8attn.recipe import DEFAULT_RECIPE
from fp8attn.reference import exact

MISSION_SHAPE = (1, 8, 512, 64)  # B, H, S, D
CPU_SHAPE = (1, 2, 128, 64)


def _inputs(shape: tuple[int, int, int, int], device: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=gen).to(device=device, dtype=torch.float16) for _ in range(3))


def _accuracy_lines(q, k, v) -> list[str]:
    truth = exact(q.cpu(), k.cpu(), v.cpu())
    lines = [f"  fp8attn, recipe {name!r:<24} vs float64: {compare(fp8attn.attention(q, k, v, recipe=name), truth)}"
             for name in (DEFAULT_RECIPE.name, "e4m3")]
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    lines.append(f"  PyTorch SDPA (fp16){'':<22} vs float64: {compare(sdpa, truth)}")
    return lines


def _time_us(fn, device_time: bool) -> float:
    if device_time:
        import triton

        return triton.testing.do_bench(fn, return_mode="median") * 1e3
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n * 1e6


def demo(_: argparse.Namespace) -> int:
    """Correctness against float64, and on a GPU speed against PyTorch SDPA, at the mission shape."""
    if not torch.cuda.is_available():
        print(f"No CUDA GPU here: running fp8attn's Triton kernels through Triton's CPU interpreter at a small "
              f"shape (B, H, S, D) = {CPU_SHAPE}. This checks correctness only; it says nothing about speed.")
        print("\n".join(_accuracy_lines(*_inputs(CPU_SHAPE, "cpu"))))
        return 0
    q, k, v = _inputs(MISSION_SHAPE, "cuda")
    print(f"GPU: {torch.cuda.get_device_name()}; shape (B, H, S, D) = {MISSION_SHAPE}, fp16 inputs")
    print("Accuracy:")
    print("\n".join(_accuracy_lines(q, k, v)))
    print(f"Speed (recipe {DEFAULT_RECIPE.name!r}, quantization included for fp8attn):")
    sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)  # noqa: E731
    ours = lambda: fp8attn.attention(q, k, v)  # noqa: E731
    for label, device_time in (("device time, do_bench median", True), ("eager host loop, per call", False)):
        t_sdpa, t_ours = _time_us(sdpa, device_time), _time_us(ours, device_time)
        print(f"  {label:<30}: SDPA {t_sdpa:7.1f} µs   fp8attn {t_ours:7.1f} µs   ratio {t_sdpa / t_ours:.2f}×")
    print("Full comparison with all peers: fp8attn bench")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="fp8attn", description="Accurate FP8 attention for PyTorch on Hopper.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="correctness vs float64 (and speed vs PyTorch SDPA on a GPU)").set_defaults(run=demo)
    sub.add_parser("bench", help="benchmark against peers (see fp8attn bench --help)", add_help=False)
    sub.add_parser("inspect", help="registers, spills and QGMMA counts of the compiled kernels", add_help=False)
    sub.add_parser("accuracy", help="every recipe's error against float64 on hard inputs", add_help=False)
    if argv and argv[0] == "accuracy":
        from fp8attn import accuracy

        return accuracy.main(argv[1:])
    if argv and argv[0] == "bench":
        from fp8attn import bench

        return bench.main(argv[1:])
    if argv and argv[0] == "inspect":
        from fp8attn import kernel_report

        return kernel_report.main(argv[1:])
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
