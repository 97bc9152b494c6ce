"""A decoding step on :class:`fp8attn.PrequantizedKVCache`: appending one token against attending to the cache.

For one query row of 32 query heads over 8 KV heads (D=128) and each cache length, prints the median time
(µs) of ``append`` of one token, of ``attention``, and of both (a step), each timed in a CUDA graph (device
time) and in an eager loop (what a Python decoding loop pays, host included). The cache's length is set
back before every call, so each call appends at the same position and attends to the same tokens.

Run on a GPU: ``python benchmarks/kv_cache_step.py [--seqlens 1024,4096,16384,65536]``.
"""

from __future__ import annotations

import argparse

import torch

import fp8attn
from fp8attn.bench.timing import TimingConfig, time_cuda_graph, time_eager
from fp8attn.fp8 import quantize_per_head


def step_times(batch: int, q_heads: int, kv_heads: int, seqlen_k: int, head_dim: int,
               cfg: TimingConfig) -> list[float]:
    """µs of append (graph, eager), attention (graph, eager) and both (graph, eager) on a cache of
    ``seqlen_k`` tokens, the last one appended by every call."""
    def randn(heads: int, tokens: int) -> torch.Tensor:
        return torch.randn(batch, heads, tokens, head_dim, device="cuda", dtype=torch.bfloat16)

    (k8, kd), (v8, vd) = quantize_per_head(randn(kv_heads, seqlen_k)), quantize_per_head(randn(kv_heads, seqlen_k))
    q8, qd = quantize_per_head(randn(q_heads, 1))
    cache = fp8attn.PrequantizedKVCache(batch, kv_heads, head_dim, seqlen_k, kd, vd)
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

    return [timer(fn, cfg) * 1e3 for fn in (append, attend, step) for timer in (time_cuda_graph, time_eager)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlens", default="1024,4096,16384,65536")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    batch, q_heads, kv_heads, head_dim = args.batch, 32, 8, 128
    cfg = TimingConfig(calls=20, repeats=10)
    print(f"{torch.cuda.get_device_name()}  B{batch} H{q_heads}/{kv_heads} Sq1 D{head_dim}, µs per call")
    print(f"{'Sk':>6} {'append graph':>13} {'append eager':>13} {'attend graph':>13} {'attend eager':>13} "
          f"{'step graph':>11} {'step eager':>11}")
    for seqlen_k in (int(s) for s in args.seqlens.split(",")):
        times = step_times(batch, q_heads, kv_heads, seqlen_k, head_dim, cfg)
        print(f"{seqlen_k:>6} " + " ".join(f"{t:>13.1f}" if i < 4 else f"{t:>11.1f}" for i, t in enumerate(times)))


if __name__ == "__main__":
    main()
