"""A decoding step on :class:`fp8attn.PrequantizedKVCache`: appending one token against attending to the cache.

For one query row of 32 query heads over 8 KV heads (D=128) and each cache length, prints the median time
(µs) of ``append`` of one token, of ``attention``, and of both (a step), each timed in a CUDA graph (device
time) and in an eager loop (what a Python decoding loop pays, host included). The cache's length is set
back before every call, so each call appends at the same position and attends to the same tokens.
``--profile`` adds, at the first length, the eager loops of attention_prequantized and of SDPA on the same
tokens (host time compared within one run: it varies between machines) and a cProfile of the cache's calls.

Run on a GPU: ``python benchmarks/kv_cache_step.py [--seqlens 1024,4096,16384,65536] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
from collections.abc import Callable

import torch
import torch.nn.functional as F

import fp8attn
from fp8attn.bench.timing import TimingConfig, time_cuda_graph, time_eager
from fp8attn.fp8 import quantize_per_head

Q_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128


def decoding_calls(batch: int, seqlen_k: int) -> dict[str, Callable[[], object]]:
    """Calls on a cache of ``seqlen_k`` tokens whose ``append`` writes the last token again each call: append,
    attention and both (a step); and on the same tokens attention_prequantized and SDPA (bf16, GQA)."""
    def randn(heads: int, tokens: int) -> torch.Tensor:
        return torch.randn(batch, heads, tokens, HEAD_DIM, device="cuda", dtype=torch.bfloat16)

    q, k, v = randn(Q_HEADS, 1), randn(KV_HEADS, seqlen_k), randn(KV_HEADS, seqlen_k)
    (q8, qd), (k8, kd), (v8, vd) = (quantize_per_head(x) for x in (q, k, v))
    cache = fp8attn.PrequantizedKVCache(batch, KV_HEADS, HEAD_DIM, seqlen_k, kd, vd)
    cache.append(k8[:, :, :-1], v8[:, :, :-1])
    new_k, new_v = k8[:, :, -1:], v8[:, :, -1:]

    def append() -> None:
        cache.length = seqlen_k - 1
        cache.append(new_k, new_v)

    def attend() -> torch.Tensor:
        return cache.attention(q8, qd, validate_descales=False)

    def step() -> torch.Tensor:
        append()
        return attend()

    return {
        "append": append, "attention": attend, "step": step,
        "attention_prequantized": lambda: fp8attn.attention_prequantized(q8, k8, v8, qd, kd, vd,
                                                                         validate_descales=False),
        "SDPA bf16": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
    }


def host_profile(calls: dict[str, Callable[[], object]], cfg: TimingConfig) -> None:
    """Eager µs per call of every call, then the cache's append and attention under cProfile."""
    print("eager µs per call, same run:", "  ".join(f"{name} {time_eager(fn, cfg) * 1e3:.1f}"
                                                   for name, fn in calls.items()))
    for name in ("append", "attention"):
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(1000):
            calls[name]()
        profile.disable()
        torch.cuda.synchronize()
        print(f"cProfile of 1000 eager {name} calls (tottime, s):")
        pstats.Stats(profile).sort_stats("tottime").print_stats(14)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlens", default="1024,4096,16384,65536")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    cfg = TimingConfig(calls=20, repeats=10)
    print(f"{torch.cuda.get_device_name()}  B{args.batch} H{Q_HEADS}/{KV_HEADS} Sq1 D{HEAD_DIM}, µs per call")
    print(f"{'Sk':>6} {'append graph':>13} {'append eager':>13} {'attend graph':>13} {'attend eager':>13} "
          f"{'step graph':>11} {'step eager':>11}")
    for i, seqlen_k in enumerate(int(s) for s in args.seqlens.split(",")):
        calls = decoding_calls(args.batch, seqlen_k)
        times = [timer(calls[name], cfg) * 1e3 for name in ("append", "attention", "step")
                 for timer in (time_cuda_graph, time_eager)]
        print(f"{seqlen_k:>6} " + " ".join(f"{t:>13.1f}" if j < 4 else f"{t:>11.1f}" for j, t in enumerate(times)))
        if args.profile and i == 0:
            host_profile(calls, cfg)


if __name__ == "__main__":
    main()
