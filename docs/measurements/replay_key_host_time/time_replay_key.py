"""Host time of the eager replay's signature (fp8attn.api._replay_key) plus its plan lookup, on the CPU.

    python time_replay_key.py <src directory>   # e.g. src, or an earlier tree's src unpacked elsewhere

LaunchPlan.usable is forced true (replays need a CUDA device; the key's work is the same on the CPU).
Prints the best of 7 repeats of 50,000 calls, in microseconds per call, for the signatures of
attention() and attention_prequantized() at the mission shape (1, 8, 512, 64).
"""
import sys
import timeit

sys.path.insert(0, sys.argv[1])
import torch

from fp8attn import api
from fp8attn.kernels.launch import LaunchPlan

LaunchPlan.usable = staticmethod(lambda device: True)
q = torch.randn(1, 8, 512, 64, dtype=torch.float16)
k, v = torch.randn_like(q), torch.randn_like(q)
descale = torch.ones(1, 8)
calls = {
    "attention": lambda: api._PLANS.get(api._replay_key((q, k, v), False, None, None, False)),
    "attention_prequantized": lambda: api._PLANS.get(
        api._replay_key((q, k, v), descale, descale, descale, None, False, None, torch.float16, False)),
}
for name, call in calls.items():
    api._PLANS[api._replay_key((q, k, v), False, None, None, False)] = object()  # a hit, as on a replay
    best = min(timeit.repeat(call, number=50_000, repeat=7)) / 50_000
    print(f"{sys.argv[1]}  {name:24s} {best * 1e6:.2f} us")
