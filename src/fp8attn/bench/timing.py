"""Timing methods. Each returns the median time of one call in milliseconds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

METHODS = ("do_bench", "cuda_graph", "eager")


@dataclass(frozen=True)
class TimingConfig:
    rep_ms: int = 100  # do_bench's repetition budget
    calls: int = 20  # calls per CUDA graph / per eager loop
    repeats: int = 10  # graph replays / eager loops whose median is taken


def time_do_bench(fn: Callable[[], Any], cfg: TimingConfig) -> float:
    """Triton's do_bench median; it clears L2 (zeroes a 256 MB buffer) before every timed call."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=cfg.rep_ms, return_mode="median"))


def time_cuda_graph(fn: Callable[[], Any], cfg: TimingConfig) -> float:
    """Device time per call: ``cfg.calls`` calls captured in one CUDA graph, median replay time / calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream, as PyTorch's CUDA-graph notes ask
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(cfg.calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(cfg.repeats):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / cfg.calls)
    del graph
    return statistics.median(times)


def time_eager(fn: Callable[[], Any], cfg: TimingConfig) -> float:
    """Wall-clock time per call of a host loop of ``cfg.calls`` calls synchronized once at the end."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(cfg.repeats):
        t0 = time.perf_counter()
        for _ in range(cfg.calls):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3 / cfg.calls)
    return statistics.median(times)


TIMERS: dict[str, Callable[[Callable[[], Any], TimingConfig], float]] = {
    "do_bench": time_do_bench, "cuda_graph": time_cuda_graph, "eager": time_eager,
}
