"""Short sequences in one launch: each program quantizes what it reads, then attends.

At short lengths the two-launch path (quantize pass, then the FP8 kernel) is latency-bound: at
B1 H8 S512 D64 its quantize launch took 10.6 µs and the attention 6.2 µs of device time on an H100
(docs/measurements/kernel_times_h100_session4.txt), each waiting on the other. Here one program per
(``BLOCK_M`` query rows, batch · query head):

1. reduces its KV head's K sum and V sum, max and min over all keys (the recipe's statistics are per
   head, so causal masking does not shorten this pass);
2. rotates and quantizes its Q rows in registers;
3. streams the key tiles it sees; each tile of ``BLOCK_N = k_block`` keys is rotated, smoothed and
   quantized to 8 bits with one scale (the recipe's K block), V's tile by the per-channel scales of
   step 1, and goes straight into the same softmax and P·V steps as the two-launch kernel.

Every quantization step is the quantize kernel's own helper (:mod:`fp8attn.quantize`), every attention
step the FP8 kernel's (:mod:`fp8attn.kernels.attention_fwd`), so the recipe has one definition and
the emulation in :mod:`fp8attn.reference` covers both paths. The price is redundancy: every query
block of a head re-reads and re-quantizes that head's K and V, which pays only while launches, not
work, bound the call — :func:`single_launch_applies` says where.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton import knobs

from fp8attn.kernels.attention_fwd import (
    LOG2_E,
    _accumulate_pv,
    _key_range,
    _mask_scores,
    _softmax_step,
    _store_output,
    forward_config,
)
from fp8attn.kernels.launch import Launch
from fp8attn.quantize import (
    _k_mean,
    _kv_token_stats,
    _load_rotated,
    _quantize_k_block,
    _quantize_q_rows,
    _quantize_v_block,
    _v_mean_and_scale,
    hadamard_matrix,
    hadamard_scale,
    padded_head_dim,
)
from fp8attn.recipe import Recipe

# Where one launch beats two on an H100 (benchmarks/single_launch_study.py, docs/perf-notes.md §13):
# keys this short, and few enough programs that the redundant K/V work runs in one wave.
SINGLE_LAUNCH_MAX_SEQLEN_K = 512
SINGLE_LAUNCH_MAX_PROGRAMS = 264
# Padded D=128 spills (int8-hadamard-vsmooth: 34 spill loads, 26 stores in the offline sm_90 SASS of this
# kernel at 8 warps: the fp32 K tile, its Hadamard matrix and the accumulator live at once).
_MAX_HEAD_DIM_PAD = 64
_STATS_TILE_ELEMENTS = 2048  # tokens per statistics tile = this / Dp: ~64 registers a thread at 4 warps


def _block_m(recipe: Recipe) -> int:
    """Query rows per program: 64, or 128 where Q's scale block is 128 rows (one scale per program)."""
    return max(64, recipe.q_block)


def single_launch_supports(head_dim: int, recipe: Recipe) -> bool:
    """Whether the kernel can run this head dim and recipe at all: padded D up to 64, and K's scale
    block no longer than one key tile (128)."""
    return padded_head_dim(head_dim) <= _MAX_HEAD_DIM_PAD and recipe.k_block <= 128


def single_launch_applies(
    batch: int, num_q_heads: int, seqlen_q: int, seqlen_k: int, head_dim: int, recipe: Recipe,
) -> bool:
    """Whether :func:`fp8attn.attention` takes the single launch (else the quantize pass and the FP8
    kernel): where the kernel supports the shape and launches, not the redundant K/V work, bound it."""
    programs = batch * num_q_heads * triton.cdiv(seqlen_q, _block_m(recipe))
    return (single_launch_supports(head_dim, recipe) and seqlen_k <= SINGLE_LAUNCH_MAX_SEQLEN_K
            and programs <= SINGLE_LAUNCH_MAX_PROGRAMS)


@triton.jit
def _attend_quantizing_kv_tiles(
    acc, acc_part, l_i, m_i, q8, row_scale, offs_m,
    k_base, v_base, h_ptr, k_mean, v_mean, v_inv, stride_kt, stride_vt, d_ok,
    lo, hi, seqlen_k, diagonal, rot_scale,
    BLOCK_N: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
    LOG2_P_SCALE: tl.constexpr, PROMOTE_EVERY: tl.constexpr, QK_INT8: tl.constexpr, QK_MAX: tl.constexpr,
    PV_FP16: tl.constexpr, SMOOTH_K: tl.constexpr, SMOOTH_V: tl.constexpr, HADAMARD: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    for start_n in tl.range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < seqlen_k
        ok = n_ok[:, None] & d_ok[None, :]
        k = _load_rotated(k_base + offs_n[:, None] * stride_kt, ok, h_ptr, rot_scale, HEAD_DIM_PAD, HADAMARD,
                          DOT_IN_FP32)
        k8, k_scale = _quantize_k_block(k, k_mean, n_ok, QK_MAX, QK_INT8, SMOOTH_K)
        # V is quantized before the scores exist: its fp32 tile and the scores are never live together.
        v = tl.load(v_base + offs_n[:, None] * stride_vt, mask=ok, other=0.0).to(tl.float32)
        v8 = _quantize_v_block(v, v_mean, v_inv, ok, SMOOTH_V, PV_FP16)
        if QK_INT8:
            qk = tl.dot(q8, tl.trans(k8)).to(tl.float32)  # exact int32 accumulation
        else:
            qk = tl.dot(q8, tl.trans(k8))
        if MASKED:
            qk = _mask_scores(qk, offs_m, offs_n, seqlen_k, diagonal, CAUSAL)
        p, alpha, m_i, l_i = _softmax_step(qk, row_scale * k_scale, m_i, l_i, LOG2_P_SCALE)
        acc, acc_part = _accumulate_pv(acc, acc_part, p, alpha, v8, start_n // BLOCK_N, PROMOTE_EVERY, None,
                                       PV_FP16)
    return acc, acc_part, l_i, m_i


@triton.jit
def _single_launch_attention_kernel(
    q_ptr, k_ptr, v_ptr, h_ptr, out_ptr, lse_ptr,
    seqlen_q, seqlen_k, num_q_heads, num_kv_heads, head_dim, rot_scale, qk_scale_log2,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_ob, stride_oh, stride_om,
    HEAD_DIM_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, Q_BLOCK: tl.constexpr,
    CAUSAL: tl.constexpr, LOG2_P_SCALE: tl.constexpr, PROMOTE_EVERY: tl.constexpr,
    QK_INT8: tl.constexpr, QK_MAX: tl.constexpr, PV_FP16: tl.constexpr,
    SMOOTH_K: tl.constexpr, SMOOTH_V: tl.constexpr, HADAMARD: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    STATS_TILE: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // num_q_heads
    h = bh % num_q_heads
    h_kv = h // (num_q_heads // num_kv_heads)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < head_dim  # a runtime bound, as in the quantize kernel (see the note there)
    k_base = k_ptr + b * stride_kb + h_kv * stride_kh + offs_d[None, :] * stride_kd
    v_base = v_ptr + b * stride_vb + h_kv * stride_vh + offs_d[None, :] * stride_vd

    # 1. The KV head's statistics over every key.
    k_sum, v_sum, v_max, v_min = _kv_token_stats(k_base, v_base, stride_kt, stride_vt, 0, seqlen_k, d_ok,
                                                 STATS_TILE, HEAD_DIM_PAD, SMOOTH_K)
    k_mean = _k_mean(k_sum, seqlen_k, rot_scale, HEAD_DIM_PAD, HADAMARD) if SMOOTH_K else k_sum
    v_mean, v_scale = _v_mean_and_scale(v_sum, tl.where(d_ok, v_max, 0.0), tl.where(d_ok, v_min, 0.0), seqlen_k,
                                        SMOOTH_V)
    v_inv = tl.math.div_rn(tl.full(v_scale.shape, 1.0, tl.float32), v_scale)

    # 2. This program's query rows in 8 bits; the scores' per-row factor folds in Q's scale.
    offs_m = start_m + tl.arange(0, BLOCK_M)
    m_ok = offs_m < seqlen_q
    q_ptrs = q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd
    x = _load_rotated(q_ptrs, m_ok[:, None] & d_ok[None, :], h_ptr, rot_scale, HEAD_DIM_PAD, HADAMARD, DOT_IN_FP32)
    q8, q_scale = _quantize_q_rows(x, BLOCK_M, Q_BLOCK, QK_MAX, QK_INT8)
    row_scale = tl.reshape(tl.broadcast_to(q_scale[:, None], (BLOCK_M // Q_BLOCK, Q_BLOCK)), (BLOCK_M,)) * qk_scale_log2

    # 3. The visible key tiles, quantized as they arrive.
    full_hi, hi, diagonal = _key_range(start_m, seqlen_q, seqlen_k, BLOCK_M, BLOCK_N, CAUSAL)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    acc_part = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    acc, acc_part, l_i, m_i = _attend_quantizing_kv_tiles(
        acc, acc_part, l_i, m_i, q8, row_scale, offs_m, k_base, v_base, h_ptr, k_mean, v_mean, v_inv,
        stride_kt, stride_vt, d_ok, 0, full_hi, seqlen_k, diagonal, rot_scale,
        BLOCK_N, HEAD_DIM_PAD, CAUSAL, False, LOG2_P_SCALE, PROMOTE_EVERY, QK_INT8, QK_MAX, PV_FP16,
        SMOOTH_K, SMOOTH_V, HADAMARD, DOT_IN_FP32,
    )
    acc, acc_part, l_i, m_i = _attend_quantizing_kv_tiles(
        acc, acc_part, l_i, m_i, q8, row_scale, offs_m, k_base, v_base, h_ptr, k_mean, v_mean, v_inv,
        stride_kt, stride_vt, d_ok, full_hi, hi, seqlen_k, diagonal, rot_scale,
        BLOCK_N, HEAD_DIM_PAD, CAUSAL, True, LOG2_P_SCALE, PROMOTE_EVERY, QK_INT8, QK_MAX, PV_FP16,
        SMOOTH_K, SMOOTH_V, HADAMARD, DOT_IN_FP32,
    )
    if PROMOTE_EVERY > 1:
        acc += acc_part

    out_ptrs = out_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    _store_output(acc, l_i, m_i, v_scale, v_mean, out_ptrs, lse_ptr + bh * seqlen_q + offs_m, m_ok, d_ok,
                  LOG2_P_SCALE, SMOOTH_V)


def single_launch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, *,
    recipe: Recipe, causal: bool, softmax_scale: float,
) -> Launch:
    """The launch that computes ``out (B, Hq, Sq, D)`` and ``lse (B, Hq, Sq)`` from fp16/bf16
    ``q (B, Hq, Sq, D)``, ``k, v (B, Hkv, Sk, D)`` by ``recipe`` (``out`` unit-stride along D).

    Only for shapes :func:`single_launch_applies` accepts; arguments are assumed checked.
    """
    batch, num_q_heads, seqlen_q, head_dim = q.shape
    num_kv_heads, seqlen_k = k.shape[1], k.shape[2]
    dp = padded_head_dim(head_dim)
    pv_fp16 = recipe.pv_format == "fp16"
    # The two-launch kernel's key tile and promotion at this width; the tile is one K scale block.
    tile = forward_config(dp, recipe.k_block, causal, pv_fp16=pv_fp16)
    block_m = _block_m(recipe)
    hadamard = hadamard_matrix(dp, q.dtype, q.device) if recipe.hadamard else out
    args = (
        q, k, v, hadamard, out, lse,
        seqlen_q, seqlen_k, num_q_heads, num_kv_heads, head_dim, hadamard_scale(dp), softmax_scale * LOG2_E,
        *q.stride(), *k.stride(), *v.stride(), *out.stride()[:3],
    )
    constexprs = dict(
        HEAD_DIM_PAD=dp, BLOCK_M=block_m, BLOCK_N=tile.block_n, Q_BLOCK=recipe.q_block, CAUSAL=causal,
        LOG2_P_SCALE=math.log2(recipe.p_multiplier), PROMOTE_EVERY=tile.promote_every,
        QK_INT8=recipe.qk_format == "int8", QK_MAX=recipe.qk_max, PV_FP16=pv_fp16,
        SMOOTH_K=recipe.smooth_k, SMOOTH_V=recipe.smooth_v, HADAMARD=recipe.hadamard,
        DOT_IN_FP32=bool(knobs.runtime.interpret), STATS_TILE=_STATS_TILE_ELEMENTS // dp,
    )
    grid = (triton.cdiv(seqlen_q, block_m), batch * num_q_heads)
    return Launch(_single_launch_attention_kernel, grid, args, constexprs,
                  # 8 warps: the K and V tiles' quantization is element-wise work, and at 4 warps
                  # D=40 spilled. One stage: prefetched K/V tiles would stay in registers (loads with masks).
                  dict(num_warps=8, num_stages=1),
                  constants=(hadamard,) if recipe.hadamard else ())
