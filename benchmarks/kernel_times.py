"""Device time of each kernel of one fp8attn call (torch.profiler), beside PyTorch SDPA's.

Run on a GPU: ``python benchmarks/kernel_times.py [--shape B,Hq,Hkv,S,D] [--causal]``; default the
mission shape (1, 8, 8, 512, 64). Shows where a short call's time goes: which launch, how long.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import fp8attn

CALLS = 50


def kernel_times(fn) -> dict[str, float]:
    """Mean device µs per call of each kernel ``fn`` launches."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name[:60]] += event.device_time / CALLS
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="1,8,8,512,64", help="B,Hq,Hkv,S,D")
    parser.add_argument("--causal", action="store_true")
    args = parser.parse_args()
    b, hq, hkv, s, d = map(int, args.shape.split(","))
    q = torch.randn(b, hq, s, d, device="cuda", dtype=torch.float16)
    k, v = (torch.randn(b, hkv, s, d, device="cuda", dtype=torch.float16) for _ in range(2))
    runs = {f"fp8attn {name}": (lambda name=name: fp8attn.attention(q, k, v, causal=args.causal, recipe=name))
            for name in ("int8-hadamard-vsmooth", "e4m3")}
    runs["sdpa-default"] = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=args.causal,
                                                                   enable_gqa=hq != hkv)
    print(f"shape B={b} Hq={hq} Hkv={hkv} S={s} D={d} causal={args.causal}; mean device µs per call over {CALLS}")
    for label, fn in runs.items():
        times = kernel_times(fn)
        print(f"{label}: total {sum(times.values()):.2f} µs")
        for name, us in sorted(times.items(), key=lambda kv: -kv[1]):
            print(f"    {us:8.2f}  {name}")


if __name__ == "__main__":
    main()
