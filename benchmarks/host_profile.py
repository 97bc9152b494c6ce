"""Where the host time of one eager fp8attn call goes: cProfile over many calls at the mission shape.

Run on a GPU: ``python benchmarks/host_profile.py``.
"""

from __future__ import annotations

import cProfile
import pstats
import time

import torch

import fp8attn


def main() -> None:
    q, k, v = (torch.randn(1, 8, 512, 64, device="cuda", dtype=torch.float16) for _ in range(3))
    for _ in range(20):
        fp8attn.attention(q, k, v)
    torch.cuda.synchronize()
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        fp8attn.attention(q, k, v)
    torch.cuda.synchronize()
    print(f"eager: {(time.perf_counter() - start) / n * 1e6:.1f} µs per call")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(n):
        fp8attn.attention(q, k, v)
    torch.cuda.synchronize()
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
