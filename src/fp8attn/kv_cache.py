"""An E4M3 KV cache kept in the forward kernel's layout, for decoding.

:func:`fp8attn.attention_prequantized` lays the caller's K and V out for the kernel on every call: V
transposed (Hopper's FP8 wgmma takes its B operand K-major only), keys padded to whole scale blocks. At
decoding that copy is a large share of a step (docs/perf-notes.md, sections 39 and 40: 6.6 of 25 µs at
B1 H32/8 Sq1 Sk16k D128, 36 of 79 at Sk64k). :class:`PrequantizedKVCache` keeps the layout across calls:
:meth:`~PrequantizedKVCache.append` writes only the new tokens (each value into its column of Vᵀ, in P·V
key order), and :meth:`~PrequantizedKVCache.attention` runs the forward kernel (and the key-split merge)
on the cache as it stands, with the same arithmetic as :func:`fp8attn.attention_prequantized` on the
cached tokens.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Mapping
from types import MappingProxyType

import torch

from fp8attn.api import (
    _INPUT_DTYPES,
    MAX_HEAD_DIM,
    _check_descale,
    _check_descale_values,
    _check_device,
    _check_flags,
    _check_tensor,
    _check_v_mean,
    _PlanCache,
    _replay_key,
)
from fp8attn.fp8 import E4M3
from fp8attn.kernels.attention_fwd import (
    KEY_COUNT_ARGUMENTS,
    ForwardConfig,
    forward_config,
    forward_launches,
    key_count_arguments,
    key_split_buffers,
    planned_key_splits,
)
from fp8attn.kernels.attention_fwd_hopper import hopper_kernel_sizes
from fp8attn.kernels.key_order import pv_key_positions
from fp8attn.kernels.kv_cache_append import kv_cache_append_launch
from fp8attn.kernels.launch import LaunchPlan
from fp8attn.kernels.prequantized_layout import PREQUANTIZED_LAYOUT
from fp8attn.kernels.sizes import cdiv
from fp8attn.quantize import QuantizedQKV, carve_workspace, padded_head_dim

_BLOCK = PREQUANTIZED_LAYOUT.k_block


def _positive_int(name: str, x: object) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < 1:
        raise ValueError(f"{name} must be a positive integer, got {x!r}")
    return int(x)


@functools.lru_cache(maxsize=1024)
def _key_split_step(batch: int, num_q_heads: int, num_kv_heads: int, seqlen_q: int, seqlen_k: int, head_dim: int,
                    causal: bool, device: torch.device,
                    v_smoothed: bool = False) -> tuple[tuple[int, ForwardConfig], Mapping[str, int]]:
    """A call's key-split count over ``seqlen_k`` cached tokens with the forward kernel's tile configuration for
    that length (a replayed plan must have been recorded with both) and the kernel's per-replay key counts
    (:func:`~fp8attn.kernels.attention_fwd.key_count_arguments`, read-only). Memoized: the layers of
    a model attend to caches of one length at each step, so all but the first find it here (planning it takes
    ~10 µs of host time a call). ``v_smoothed``: the cache holds a ``v_mean``."""
    splits = planned_key_splits(batch, num_q_heads, num_kv_heads, seqlen_q, seqlen_k, head_dim, PREQUANTIZED_LAYOUT,
                                causal, device, v_smoothed)
    cfg = forward_config(padded_head_dim(head_dim), _BLOCK, causal, seqlen_k=seqlen_k, v_smoothed=v_smoothed,
                         seqlen_q=seqlen_q)
    return (splits, cfg), MappingProxyType(key_count_arguments(seqlen_k, splits, cfg))


class PrequantizedKVCache:
    """Caller-quantized E4M3 keys and values of ``batch`` sequences, appended step by step and attended to by
    E4M3 queries, without re-laying the cache out on every call.

    Args:
        batch, num_kv_heads, head_dim: the cache's ``(B, Hkv, ·, D)``; ``D`` a multiple of 8 up to 256.
        capacity: the most tokens it holds (memory is allocated for all of them, rounded up to 128).
        k_descale, v_descale: float32 of shape ``()``/``(1,)`` or ``(B, Hkv)``, or a number: what every
            appended token was divided by when quantized (fixed for the cache's life, as a KV cache's
            per-head scales are).
        v_mean: ``(B, Hkv, D)`` float32, or None: what was subtracted from V before quantizing it
            (see :func:`fp8attn.attention_prequantized`).
        device: where the cache lives (CUDA, or the CPU through Triton's interpreter).

    Holds ``k (B, Hkv, C, Dp)`` and ``v_t (B, Hkv, Dp, C)`` E4M3, zero where nothing was appended (``C``:
    capacity rounded up to 128, ``Dp``: D padded to a power of two), and their scales, as
    :class:`fp8attn.quantize.QuantizedQKV` lays them out.
    """

    def __init__(self, batch: int, num_kv_heads: int, head_dim: int, capacity: int,
                 k_descale: torch.Tensor | float, v_descale: torch.Tensor | float, *,
                 v_mean: torch.Tensor | None = None, device: torch.device | str = "cuda") -> None:
        batch, num_kv_heads, head_dim, capacity = (
            _positive_int(n, x) for n, x in (("batch", batch), ("num_kv_heads", num_kv_heads),
                                             ("head_dim", head_dim), ("capacity", capacity)))
        if head_dim % 8 or head_dim > MAX_HEAD_DIM:
            raise NotImplementedError(f"head_dim must be a multiple of 8 from 8 to {MAX_HEAD_DIM}, got {head_dim}")
        try:
            device = torch.empty(0, device=device).device  # "cuda" → "cuda:0", as the tensors' devices read
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device must name a CUDA device or the CPU, got {device!r} ({error})") from None
        kd = _check_descale("k_descale", k_descale, batch, num_kv_heads, device)
        vd = _check_descale("v_descale", v_descale, batch, num_kv_heads, device)
        _check_descale_values({"k_descale": kd, "v_descale": vd})
        _check_v_mean(v_mean, batch, num_kv_heads, head_dim, device)
        self.batch, self.num_kv_heads, self.head_dim, self.capacity = batch, num_kv_heads, head_dim, capacity
        self.length = 0
        dp = padded_head_dim(head_dim)
        slots = cdiv(capacity, _BLOCK) * _BLOCK
        self.k = torch.zeros(batch, num_kv_heads, slots, dp, dtype=E4M3, device=device)
        self.v_t = torch.zeros(batch, num_kv_heads, dp, slots, dtype=E4M3, device=device)
        self.k_scale = kd[:, :, None].expand(batch, num_kv_heads, slots // _BLOCK).contiguous()
        self.v_scale = torch.ones(batch, num_kv_heads, dp, dtype=torch.float32, device=device)
        self.v_scale[..., :head_dim] = vd[..., None]
        self.v_mean = None
        if v_mean is not None:
            self.v_mean = torch.zeros(batch, num_kv_heads, dp, dtype=torch.float32, device=device)
            self.v_mean[..., :head_dim] = v_mean
        # Vᵀ's column of each key: the kernel layout stores keys in P·V operand order within groups of 32.
        self._v_column = torch.argsort(pv_key_positions(slots, device))
        self._k_bytes, self._v_t_bytes = self.k.view(torch.uint8), self.v_t.view(torch.uint8)
        # Eager calls' launch plans: query signature → {(split count, tile configuration): plan};
        # append's: k and v's signature → plan.
        self._plans = _PlanCache(capacity=64)
        self._append_plans = _PlanCache(capacity=16)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add ``k, v (B, Hkv, T, D)`` E4M3 (any strides), quantized with the cache's descales, after the
        tokens already held: one launch (:mod:`fp8attn.kernels.kv_cache_append`), replayed by eager calls
        with the same signature at any position."""
        signature = _replay_key((k, v))
        plan = self._append_plans.get(signature) if signature is not None else None  # k, v passed the checks
        if plan is None:
            self._check_tokens(k, v)
        start, end = self.length, self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"k and v hold {k.shape[2]} tokens; the cache holds {self.length} of its capacity "
                             f"{self.capacity}, so at most {self.capacity - self.length} fit")
        # Byte views: the launch moves bytes, and not every device's kernels take float8 tensors.
        inputs = (k.view(torch.uint8), v.view(torch.uint8), self._k_bytes, self._v_t_bytes, self._v_column)
        if plan is not None:
            plan.run(inputs, runtime_ints={"start": start})
        else:
            launch = kv_cache_append_launch(*inputs, start)
            launch.run()
            if signature is not None:
                self._append_plans[signature] = LaunchPlan([launch], inputs=inputs, allocated=(),
                                                           runtime_ints=("start",))
        self.length = end

    def _check_tokens(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """``k, v`` E4M3 ``(B, Hkv, T, D)`` with the cache's B, Hkv and D, T ≥ 1, on its device."""
        k, v = _check_tensor("k", k), _check_tensor("v", v)
        expected = (self.batch, self.num_kv_heads, k.shape[2], self.head_dim)
        for name, x in (("k", k), ("v", v)):
            if x.dtype != E4M3:
                raise TypeError(f"{name} must have dtype {E4M3}, got {x.dtype}")
            if tuple(x.shape) != expected or x.shape[2] < 1:
                raise ValueError(f"{name} must have shape (batch, kv_heads, tokens, head_dim) = "
                                 f"({self.batch}, {self.num_kv_heads}, tokens ≥ 1, {self.head_dim}), got "
                                 f"{tuple(x.shape)} (k has {k.shape[2]} tokens)")
            if x.device != self.k.device:
                raise ValueError(f"{name} is on {x.device} but the cache is on {self.k.device}")

    def reset(self) -> None:
        """Empty the cache for a new sequence (same shape and descales), zeroing what was appended."""
        self.k.zero_()
        self.v_t.zero_()
        self.length = 0

    def attention(self, q: torch.Tensor, q_descale: torch.Tensor | float, *, causal: bool = False,
                  scale: float | None = None, out_dtype: torch.dtype = torch.bfloat16, return_lse: bool = False,
                  validate_descales: bool = True) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attention of ``q (B, Hq, Sq, D)`` E4M3 (``Hq`` a multiple of the cache's ``Hkv``) over the cached
        tokens: what :func:`fp8attn.attention_prequantized` computes on them, bit for bit.

        ``q_descale``: float32 ``()``/``(1,)`` or ``(B, Hq)``, or a number. ``causal`` aligns the queries to
        the last cached tokens (query ``i`` sees keys ``j <= i + length - Sq``). ``scale``, ``out_dtype``,
        ``return_lse`` and ``validate_descales`` (one host sync a call; pass False in a decoding loop) as in
        :func:`fp8attn.attention_prequantized`.

        An eager call replays the launches recorded by an earlier call with the same query signature, key-split
        count and tile configuration (:func:`~fp8attn.kernels.attention_fwd.forward_config`), whatever the
        cache's length (Triton's argument binding then runs once, not every step); calls that run the Gluon
        kernel (1024 queries and more) take the full path.
        """
        if self.length == 0:
            raise ValueError("the cache is empty: append keys and values before attending to them")
        descale_key = q_descale if isinstance(q_descale, torch.Tensor) else type(q_descale)
        signature = _replay_key((q,), descale_key, causal, scale, out_dtype, return_lse)
        plans = self._plans.get(signature) if signature is not None else None  # q's signature passed the checks
        if plans is None:
            self._check_query(q, return_lse, out_dtype)
        batch, num_q_heads, seqlen_q, head_dim = q.shape
        step, key_counts = _key_split_step(batch, num_q_heads, self.num_kv_heads, seqlen_q, self.length, head_dim,
                                           causal, q.device, self.v_mean is not None)
        replayable = signature is not None and not hopper_kernel_sizes(self.k.shape[-1], seqlen_q, self.length, causal)
        plan = plans.get(step) if plans is not None and replayable else None
        qd = _check_descale("q_descale", q_descale, batch, num_q_heads, q.device)
        if validate_descales:
            _check_descale_values({"q_descale": qd})
        q, q_scale = self._query_layout(q, qd)
        inputs = (q, q_scale, self.k, self.v_t, self.k_scale, self.v_scale)
        inputs += () if self.v_mean is None else (self.v_mean,)
        if plan is not None:
            buffers = plan.run(inputs, views=return_lse, runtime_ints=key_counts)
            return (buffers[0], buffers[-1]) if return_lse else buffers[0]
        softmax_scale = _check_flags(causal, scale, head_dim)
        out = torch.empty((batch, num_q_heads, seqlen_q, head_dim), device=q.device, dtype=out_dtype)
        split_buffers = key_split_buffers(batch, num_q_heads, self.num_kv_heads, seqlen_q, self.length, head_dim,
                                          PREQUANTIZED_LAYOUT, causal, q.device, v_smoothed=self.v_mean is not None)
        # LSE and the key splits' partial results share one allocation.
        workspace, _, extra = carve_workspace({}, q.device, extra={"lse": (q.shape[:3], torch.float32),
                                                                   **split_buffers})
        lse = extra.pop("lse")
        qkv = QuantizedQKV(q=q, k=self.k, v_t=self.v_t, q_scale=q_scale, k_scale=self.k_scale, v_scale=self.v_scale,
                           k_mean=None, v_mean=self.v_mean, seqlen_q=seqlen_q, seqlen_k=self.length,
                           head_dim=head_dim, q_block=_BLOCK, k_block=_BLOCK, extra=extra)
        launches = forward_launches(qkv, out, lse, causal=causal, softmax_scale=softmax_scale,
                                    p_scale=PREQUANTIZED_LAYOUT.p_multiplier, exact_lse=return_lse)
        for launch in launches:
            launch.run()
        if replayable:
            plans = self._plans.get(signature) or {}
            plans[step] = LaunchPlan(launches, inputs=inputs, allocated=(out, workspace), views=(lse,),
                                     runtime_ints=KEY_COUNT_ARGUMENTS)
            self._plans[signature] = plans
        return (out, lse) if return_lse else out

    def _check_query(self, q: torch.Tensor, return_lse: object, out_dtype: object) -> None:
        """``q`` E4M3 ``(B, Hq, Sq, D)`` with the cache's B and D, Hq a multiple of its KV heads, on its device."""
        q = _check_tensor("q", q)
        if q.dtype != E4M3:
            raise TypeError(f"q must have dtype {E4M3}, got {q.dtype}")
        batch, num_q_heads, _, head_dim = q.shape
        if (batch, head_dim) != (self.batch, self.head_dim):
            raise ValueError(f"q must have shape (batch, heads, seqlen, head_dim) with batch {self.batch} and "
                             f"head_dim {self.head_dim} (the cache's), got {tuple(q.shape)}")
        if num_q_heads % self.num_kv_heads:
            raise ValueError(f"q's head count must be a multiple of the cache's {self.num_kv_heads} KV heads, "
                             f"got {num_q_heads}")
        if q.device != self.k.device:
            raise ValueError(f"q is on {q.device} but the cache is on {self.k.device}")
        _check_device(q, q, q)  # the device kind and its FP8 support
        if not isinstance(return_lse, bool):
            raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
        if out_dtype not in _INPUT_DTYPES:  # out_dtype: what attention_prequantized accepts
            raise TypeError(f"out_dtype must be torch.float16 or torch.bfloat16, got {out_dtype}")

    def _query_layout(self, q: torch.Tensor, q_descale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q as the kernel reads it, padded to ``Dp`` where it must be (a copy), and its scale per block of 128
        queries, ``(B, Hq, ⌈Sq/128⌉)`` (no copy for a contiguous ``(B, Hq)`` descale and Sq ≤ 128)."""
        batch, num_q_heads, seqlen_q, head_dim = q.shape
        dp = self.k.shape[-1]
        if dp != head_dim or q.stride(-1) != 1:
            padded = torch.zeros(batch, num_q_heads, seqlen_q, dp, dtype=E4M3, device=q.device)
            padded.view(torch.uint8)[..., :head_dim] = q.view(torch.uint8)
            q = padded
        blocks = cdiv(seqlen_q, _BLOCK)
        if blocks == 1:  # a decoding step: a view of a contiguous descale (a third of the expand's host time)
            return q, q_descale.unsqueeze(-1).contiguous()
        return q, q_descale[:, :, None].expand(batch, num_q_heads, blocks).contiguous()
