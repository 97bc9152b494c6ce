"""The merge of a split-key forward launch: partial results of each key range combined by their LSE.

Range ``s`` of a query row left ``o_s = acc_s / l_s`` (fp32, before V's per-channel scale) and
``L_s = m_s + log2 l_s`` (log2 units, ``P_SCALE`` included; ``-inf`` where the range held no visible
key). With ``M = max_s L_s`` and weights ``w_s = 2^(L_s - M)`` the row's output is
``Σ w_s o_s / Σ w_s · v_scale (+ v_mean)`` and its LSE ``M + log2 Σ w_s``: exactly what one program
over all the keys computes, :func:`fp8attn.kernels.attention_fwd._store_output` on
``acc = Σ w_s o_s``, ``l = Σ w_s``, ``m = M``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fp8attn.kernels.attention_fwd import _store_output
from fp8attn.kernels.grid_dependency import programmatic_launch, wait_for_previous_grid
from fp8attn.kernels.launch import Launch
from fp8attn.kernels.sizes import cdiv, next_power_of_2
from fp8attn.quantize import QuantizedQKV

MERGE_BLOCK_M = 16
"""Query rows per merge program (fewer when the sequence is shorter)."""


@triton.jit(do_not_specialize=["seqlen_q"])
def _merge_key_splits_kernel(
    partial_out_ptr, partial_lse_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
    seqlen_q, num_q_heads, num_kv_heads, stride_ob, stride_oh, stride_om,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_M: tl.constexpr, KEY_SPLITS: tl.constexpr,
    LOG2_P_SCALE: tl.constexpr, SMOOTH_V: tl.constexpr, GRID_DEPENDENCY: tl.constexpr,
):
    bh = tl.program_id(1)
    b = bh // num_q_heads
    h = bh % num_q_heads
    kv_bh = b * num_kv_heads + h // (num_q_heads // num_kv_heads)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    m_ok = offs_m < seqlen_q
    rows = tl.num_programs(1) * seqlen_q  # partial rows per range: B·Hq·Sq
    lse_ptrs = partial_lse_ptr + bh * seqlen_q + offs_m
    wait_for_previous_grid(GRID_DEPENDENCY)  # the partial results are the previous launch's
    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    for s in tl.static_range(KEY_SPLITS):
        m = tl.maximum(m, tl.load(lse_ptrs + s * rows, mask=m_ok, other=float("-inf")))
    m = tl.where(m == float("-inf"), 0.0, m)  # a row no range saw: every weight below is 0
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    l_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    out_offsets = (bh * seqlen_q + offs_m[:, None]) * HEAD_DIM_PAD + offs_d[None, :]
    for s in tl.static_range(KEY_SPLITS):
        w = tl.math.exp2(tl.load(lse_ptrs + s * rows, mask=m_ok, other=float("-inf")) - m)
        part = tl.load(partial_out_ptr + s * rows * HEAD_DIM_PAD + out_offsets, mask=m_ok[:, None], other=0.0)
        acc += w[:, None] * part
        l_sum += w
    v_scale = tl.load(v_scale_ptr + kv_bh * HEAD_DIM_PAD + offs_d)
    v_mean = tl.load(v_mean_ptr + kv_bh * HEAD_DIM_PAD + offs_d) if SMOOTH_V else v_scale
    out_ptrs = out_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    _store_output(acc, l_sum, m, v_scale, v_mean, out_ptrs, lse_ptr + bh * seqlen_q + offs_m, m_ok,
                  offs_d < HEAD_DIM, LOG2_P_SCALE, SMOOTH_V)


def merge_launch(qkv: QuantizedQKV, partial_out: torch.Tensor, partial_lse: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, *, p_scale: float) -> Launch:
    """The launch merging ``partial_out (splits, B·Hq, Sq, Dp)`` and ``partial_lse (splits, B·Hq, Sq)`` into
    ``out (B, Hq, Sq, D)`` and ``lse (B, Hq, Sq)`` (natural log)."""
    splits, rows, seqlen_q, dp = partial_out.shape
    batch, num_q_heads = out.shape[:2]
    if partial_lse.shape != (splits, rows, seqlen_q) or rows != batch * num_q_heads:
        raise ValueError(f"partial results {tuple(partial_out.shape)} / {tuple(partial_lse.shape)} do not match "
                         f"out {tuple(out.shape)}")
    block_m = min(MERGE_BLOCK_M, next_power_of_2(seqlen_q))
    pdl = programmatic_launch(out.device)
    args = (partial_out, partial_lse, qkv.v_scale, qkv.v_mean if qkv.v_mean is not None else qkv.v_scale, out, lse,
            seqlen_q, num_q_heads, qkv.k.shape[1], *out.stride()[:3])
    constexprs = dict(HEAD_DIM=qkv.head_dim, HEAD_DIM_PAD=dp, BLOCK_M=block_m, KEY_SPLITS=splits,
                      LOG2_P_SCALE=math.log2(p_scale), SMOOTH_V=qkv.v_mean is not None, GRID_DEPENDENCY=pdl)
    return Launch(_merge_key_splits_kernel, (cdiv(seqlen_q, block_m), rows), args, constexprs,
                  dict(num_warps=4, launch_pdl=pdl))
