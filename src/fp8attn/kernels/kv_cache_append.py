"""One launch that appends E4M3 keys and values to a KV cache held in the forward kernel's layout.

:class:`fp8attn.PrequantizedKVCache` holds ``k (B, Hkv, C, Dp)`` and ``v_t (B, Hkv, Dp, C)``. Appending T tokens
writes their K rows in place and each V row into its column of Vᵀ (the column of key ``j`` is ``columns[j]``:
the kernel layout keeps Vᵀ's keys in P·V operand order within groups of 32). Two PyTorch copies did this in
two launches (4.4–4.6 µs of a decoding step in a CUDA graph, perf-notes section 41); this kernel writes both.
Bytes move as uint8 (views of the E4M3 tensors): no value is converted.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fp8attn.kernels.launch import Launch
from fp8attn.kernels.sizes import cdiv, next_power_of_2

_MAX_BLOCK_T = 32  # tokens a program


@triton.jit(do_not_specialize=["start"])
def _kv_cache_append_kernel(
    k_ptr, v_ptr, cache_k_ptr, cache_vt_ptr, columns_ptr, start, tokens, num_kv_heads,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_ckb, stride_ckh, stride_ckt,
    stride_cvb, stride_cvh, stride_cvd,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """BLOCK_T tokens of one (batch, KV head): K's rows to cache rows ``start + t``, V's rows to Vᵀ's columns
    ``columns[start + t]``; the cache's padding channels are left as they are (zero)."""
    bh = tl.program_id(1)
    b = bh // num_kv_heads
    h = bh % num_kv_heads
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    t_ok = offs_t < tokens
    mask = t_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    k = tl.load(k_ptr + b * stride_kb + h * stride_kh + offs_t[:, None] * stride_kt + offs_d[None, :] * stride_kd,
                mask=mask)
    tl.store(cache_k_ptr + b * stride_ckb + h * stride_ckh + (start + offs_t)[:, None] * stride_ckt
             + offs_d[None, :], k, mask=mask)
    v = tl.load(v_ptr + b * stride_vb + h * stride_vh + offs_t[:, None] * stride_vt + offs_d[None, :] * stride_vd,
                mask=mask)
    columns = tl.load(columns_ptr + start + offs_t, mask=t_ok, other=0)
    tl.store(cache_vt_ptr + b * stride_cvb + h * stride_cvh + offs_d[None, :] * stride_cvd + columns[:, None], v,
             mask=mask)


def kv_cache_append_launch(k: torch.Tensor, v: torch.Tensor, cache_k: torch.Tensor, cache_v_t: torch.Tensor,
                           columns: torch.Tensor, start: int) -> Launch:
    """The launch writing ``k, v (B, Hkv, T, D)`` uint8 (E4M3 bytes, any strides) at cache positions ``start ..
    start + T - 1`` of ``cache_k (B, Hkv, C, Dp)`` and ``cache_v_t (B, Hkv, Dp, C)`` uint8 (last axis
    contiguous), V's row of key ``j`` into column ``columns[j]`` (int64, ``(C,)``)."""
    batch, num_kv_heads, tokens, head_dim = k.shape
    if cache_k.stride(-1) != 1 or cache_v_t.stride(-1) != 1:
        raise ValueError("the cache's K rows and Vᵀ columns must be contiguous along their last axis")
    block_t = min(_MAX_BLOCK_T, next_power_of_2(tokens))
    args = (k, v, cache_k, cache_v_t, columns, start, tokens, num_kv_heads, *k.stride(), *v.stride(),
            *cache_k.stride()[:3], *cache_v_t.stride()[:3])
    constexprs = dict(HEAD_DIM=head_dim, BLOCK_D=max(16, next_power_of_2(head_dim)), BLOCK_T=block_t)
    return Launch(_kv_cache_append_kernel, (cdiv(tokens, block_t), batch * num_kv_heads), args, constexprs,
                  dict(num_warps=4 if block_t > 1 else 1))

