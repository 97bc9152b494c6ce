"""Where the host time of one eager fp8attn call goes, at the mission shape (B1 H8 S512 D64, fp16).

Times each step of a replayed call on its own (host loop of many calls, one sync at the end), beside
the whole call and PyTorch SDPA's eager call; then a cProfile of whole calls. The launch step is timed
twice: through Triton's Python launcher (``CompiledKernel.run``, what replays call) and through the C
launch function behind it (``run.launch``), to show what the Python wrapper costs.

Run on a GPU: ``python benchmarks/host_profile.py``.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import fp8attn
from fp8attn import api
from fp8attn.kernels.launch import _current_stream

CALLS = 2000


def per_call_us(fn: Callable[[], object]) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(CALLS):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / CALLS * 1e6


def main() -> None:
    q, k, v = (torch.randn(1, 8, 512, 64, device="cuda", dtype=torch.float16) for _ in range(3))
    fp8attn.attention(q, k, v)
    key = api._replay_key((q, k, v), False, None, None)
    plan = api._PLANS.get(key)
    buffers = plan.run((q, k, v))
    stream = _current_stream(q.device)
    starts = [t.data_ptr() for t in (q, k, v, *buffers)]
    calls = []
    for replay in plan._replays:
        values = list(replay.values)
        for i, owner, offset in replay.pointers:
            values[i] = starts[owner] + offset
        calls.append((replay, values))

    def c_launches() -> None:
        for replay, values in calls:
            kernel = replay.kernel
            run = kernel.run
            run.launch(*replay.grid, stream, kernel.function, run.launch_cooperative_grid, run.launch_pdl, None, None,
                       kernel.packed_metadata, None, None, None, *values)

    def python_launcher() -> None:
        for replay, values in calls:
            kernel = replay.kernel
            kernel.run(*replay.grid, stream, kernel.function, kernel.packed_metadata, None, None, None, *values)

    shapes = plan._buffers
    steps = {
        "whole call (fp8attn.attention, replayed)": lambda: fp8attn.attention(q, k, v),
        "replay key": lambda: api._replay_key((q, k, v), False, None, None),
        "plan lookup": lambda: api._PLANS.get(key),
        f"allocations ({len(shapes)} torch.empty)": lambda: [torch.empty(s, dtype=d, device=q.device)
                                                             for s, d in shapes],
        f"launches: Triton's Python launcher ({len(calls)})": python_launcher,
        f"launches: its C launch function ({len(calls)})": c_launches,
        "current stream": lambda: _current_stream(q.device),
        "PyTorch SDPA (default backends)": lambda: F.scaled_dot_product_attention(q, k, v),
    }
    print(f"host µs per call, mean of {CALLS} calls ({torch.cuda.get_device_name()})")
    for label, fn in steps.items():
        print(f"  {per_call_us(fn):7.1f}  {label}")

    profile = cProfile.Profile()
    profile.enable()
    for _ in range(200):
        fp8attn.attention(q, k, v)
    torch.cuda.synchronize()
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
