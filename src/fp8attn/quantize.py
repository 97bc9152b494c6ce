"""Quantization of fp16/bf16 Q, K, V into the E4M3 layout the attention kernel reads.

Two launches:

1. ``_kv_stats_kernel`` reduces K's per-channel sum (for smoothing) and V's per-channel amax over
   chunks of tokens, writing one partial per chunk (deterministic: no atomics).
2. ``_quantize_qkv_kernel`` is one launch over Q blocks and K/V blocks. Each Q program scales one
   block of ``q_block`` tokens; each K/V program reduces the partials, smooths and scales one block
   of ``k_block`` keys and writes that block of V transposed (``[D, Sk]``), the K-major layout FP8
   P·V needs on Hopper.

The kernel layout (:class:`QuantizedQKV`) pads the head dimension to a power of two and the key
length to a multiple of ``k_block``, with zeros, so the attention kernel's K/V loads need no masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fp8attn.fp8 import E4M3, E4M3_MAX
from fp8attn.kernels.launch import Launch
from fp8attn.recipe import Recipe

# Tokens one stats program reduces; the partials it writes are summed by every K/V block program,
# so chunks are made larger for long sequences to keep that sum short.
_STATS_MIN_CHUNK = 256
_STATS_MAX_CHUNKS = 32
_STATS_TILE_ELEMENTS = 4096  # tokens per stats tile = this / padded head dim: ~128 registers a thread, no spills

E4M3_MAX_F32: tl.constexpr = tl.constexpr(E4M3_MAX)


@dataclass(frozen=True)
class QuantizedQKV:
    """Q, K, V in E4M3 plus the fp32 scales that undo the quantization.

    Shapes (``Dp`` = head dim padded to a power of two, ``Skp`` = Sk padded to ``k_block``):
        q: ``(B, Hq, Sq, Dp)`` E4M3; q_scale: ``(B, Hq, ceil(Sq / q_block))``.
        k: ``(B, Hkv, Skp, Dp)`` E4M3, smoothed when the recipe says so; k_scale: ``(B, Hkv, Skp / k_block)``.
        v_t: ``(B, Hkv, Dp, Skp)`` E4M3, V transposed; v_scale: ``(B, Hkv, Dp)``.
        k_mean: ``(B, Hkv, Dp)`` fp32, what was subtracted from K (zeros when not smoothed), or None.
    Padding is zero in the E4M3 tensors and 1.0 in the scales.
    """

    q: torch.Tensor
    k: torch.Tensor
    v_t: torch.Tensor
    q_scale: torch.Tensor
    k_scale: torch.Tensor
    v_scale: torch.Tensor
    k_mean: torch.Tensor | None
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    q_block: int
    k_block: int


def padded_head_dim(head_dim: int) -> int:
    """The power-of-two width the kernels compute on (at least 32, the FP8 wgmma K step)."""
    return max(32, triton.next_power_of_2(head_dim))


@triton.jit
def _kv_stats_kernel(
    k_ptr, v_ptr, k_sum_ptr, v_amax_ptr,
    seqlen_k, num_kv_heads,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    CHUNK: tl.constexpr, TILE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    SMOOTH_K: tl.constexpr,
):
    chunk = tl.program_id(0)
    num_chunks = tl.num_programs(0)
    bh = tl.program_id(1)
    b = bh // num_kv_heads
    h = bh % num_kv_heads
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < HEAD_DIM
    k_base = k_ptr + b * stride_kb + h * stride_kh + offs_d[None, :] * stride_kd
    v_base = v_ptr + b * stride_vb + h * stride_vh + offs_d[None, :] * stride_vd
    k_sum = tl.zeros([HEAD_DIM_PAD], dtype=tl.float32)
    v_amax = tl.zeros([HEAD_DIM_PAD], dtype=tl.float32)
    end = tl.minimum((chunk + 1) * CHUNK, seqlen_k)
    for start in tl.range(chunk * CHUNK, end, TILE):
        offs_t = start + tl.arange(0, TILE)
        ok = (offs_t < end)[:, None] & d_ok[None, :]
        if SMOOTH_K:
            k = tl.load(k_base + offs_t[:, None] * stride_kt, mask=ok, other=0.0).to(tl.float32)
            k_sum += tl.sum(k, axis=0)
        v = tl.load(v_base + offs_t[:, None] * stride_vt, mask=ok, other=0.0).to(tl.float32)
        v_amax = tl.maximum(v_amax, tl.max(tl.abs(v), axis=0))
    out = (bh * num_chunks + chunk) * HEAD_DIM_PAD + offs_d
    tl.store(k_sum_ptr + out, k_sum)
    tl.store(v_amax_ptr + out, v_amax)


@triton.jit
def _scale_from_amax(amax):
    """amax / 448 in fp32, exactly 1.0 for an all-zero block (mirrors fp8attn.fp8.scale_from_amax)."""
    return tl.where(amax > 0, tl.math.div_rn(amax, E4M3_MAX_F32), 1.0)


@triton.jit
def _quantize_qkv_kernel(
    q_ptr, k_ptr, v_ptr,
    q8_ptr, k8_ptr, vt8_ptr, q_scale_ptr, k_scale_ptr, v_scale_ptr, k_mean_ptr,
    k_sum_ptr, v_amax_ptr,
    seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_chunks, num_q_programs,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    Q_BLOCK: tl.constexpr, K_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    SMOOTH_K: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < HEAD_DIM
    if pid < num_q_programs:
        # One block of Q_BLOCK query tokens: a single scale over the block.
        num_blocks = tl.cdiv(seqlen_q, Q_BLOCK)
        bh = pid // num_blocks
        block = pid % num_blocks
        b = bh // num_q_heads
        h = bh % num_q_heads
        offs_t = block * Q_BLOCK + tl.arange(0, Q_BLOCK)
        t_ok = offs_t < seqlen_q
        ptrs = q_ptr + b * stride_qb + h * stride_qh + offs_t[:, None] * stride_qt + offs_d[None, :] * stride_qd
        x = tl.load(ptrs, mask=t_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        scale = _scale_from_amax(tl.max(tl.abs(x)))
        x8 = (x * tl.math.div_rn(1.0, scale)).to(tl.float8e4nv)
        out = q8_ptr + (bh * seqlen_q + offs_t[:, None]) * HEAD_DIM_PAD + offs_d[None, :]
        tl.store(out, x8, mask=t_ok[:, None])
        tl.store(q_scale_ptr + bh * num_blocks + block, scale)
    else:
        # One block of K_BLOCK keys and the same tokens of V. Rows past seqlen_k are written as zeros.
        kv_pid = pid - num_q_programs
        num_blocks = seqlen_k_pad // K_BLOCK
        bh = kv_pid // num_blocks
        block = kv_pid % num_blocks
        b = bh // num_kv_heads
        h = bh % num_kv_heads
        offs_t = block * K_BLOCK + tl.arange(0, K_BLOCK)
        ok = (offs_t < seqlen_k)[:, None] & d_ok[None, :]
        stats = (bh * num_chunks) * HEAD_DIM_PAD + offs_d
        v_amax = tl.zeros([HEAD_DIM_PAD], dtype=tl.float32)
        k_sum = tl.zeros([HEAD_DIM_PAD], dtype=tl.float32)
        for c in range(num_chunks):
            v_amax = tl.maximum(v_amax, tl.load(v_amax_ptr + stats + c * HEAD_DIM_PAD))
            if SMOOTH_K:
                k_sum += tl.load(k_sum_ptr + stats + c * HEAD_DIM_PAD)

        k_ptrs = k_ptr + b * stride_kb + h * stride_kh + offs_t[:, None] * stride_kt + offs_d[None, :] * stride_kd
        k = tl.load(k_ptrs, mask=ok, other=0.0).to(tl.float32)
        if SMOOTH_K:
            k_mean = k_sum / seqlen_k
            k = tl.where(ok, k - k_mean[None, :], 0.0)
        k_scale = _scale_from_amax(tl.max(tl.abs(k)))
        k8 = (k * tl.math.div_rn(1.0, k_scale)).to(tl.float8e4nv)
        tl.store(k8_ptr + (bh * seqlen_k_pad + offs_t[:, None]) * HEAD_DIM_PAD + offs_d[None, :], k8)
        tl.store(k_scale_ptr + bh * num_blocks + block, k_scale)

        v_scale = _scale_from_amax(v_amax)
        v_ptrs = v_ptr + b * stride_vb + h * stride_vh + offs_t[:, None] * stride_vt + offs_d[None, :] * stride_vd
        v = tl.load(v_ptrs, mask=ok, other=0.0).to(tl.float32)
        v8 = (v * tl.math.div_rn(1.0, v_scale)[None, :]).to(tl.float8e4nv)
        tl.store(vt8_ptr + (bh * HEAD_DIM_PAD + offs_d[None, :]) * seqlen_k_pad + offs_t[:, None], v8)
        if block == 0:
            tl.store(v_scale_ptr + bh * HEAD_DIM_PAD + offs_d, v_scale)
            if SMOOTH_K:
                tl.store(k_mean_ptr + bh * HEAD_DIM_PAD + offs_d, k_mean)


def _stats_chunk(seqlen_k: int) -> int:
    chunk = _STATS_MIN_CHUNK
    while triton.cdiv(seqlen_k, chunk) > _STATS_MAX_CHUNKS:
        chunk *= 2
    return chunk


def allocate_quantized(
    batch: int, num_q_heads: int, num_kv_heads: int, seqlen_q: int, seqlen_k: int, head_dim: int,
    recipe: Recipe, device: torch.device | str,
) -> QuantizedQKV:
    """Uninitialised buffers in the kernel layout (see :class:`QuantizedQKV`)."""
    dp = padded_head_dim(head_dim)
    skp = triton.cdiv(seqlen_k, recipe.k_block) * recipe.k_block

    def empty(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.empty(shape, device=device, dtype=dtype)

    return QuantizedQKV(
        q=empty(batch, num_q_heads, seqlen_q, dp, dtype=E4M3),
        k=empty(batch, num_kv_heads, skp, dp, dtype=E4M3),
        v_t=empty(batch, num_kv_heads, dp, skp, dtype=E4M3),
        q_scale=empty(batch, num_q_heads, triton.cdiv(seqlen_q, recipe.q_block)),
        k_scale=empty(batch, num_kv_heads, skp // recipe.k_block),
        v_scale=empty(batch, num_kv_heads, dp),
        k_mean=empty(batch, num_kv_heads, dp) if recipe.smooth_k else None,
        seqlen_q=seqlen_q, seqlen_k=seqlen_k, head_dim=head_dim, q_block=recipe.q_block, k_block=recipe.k_block,
    )


def quantize_launches(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, recipe: Recipe, out: QuantizedQKV,
) -> tuple[Launch, Launch]:
    """The two launches that fill ``out``: the K/V statistics pass, then the fused quantize pass."""
    batch, num_q_heads, seqlen_q, head_dim = q.shape
    num_kv_heads, seqlen_k = k.shape[1], k.shape[2]
    dp, skp = out.k.shape[-1], out.k.shape[2]
    chunk = _stats_chunk(seqlen_k)
    num_chunks = triton.cdiv(seqlen_k, chunk)
    k_sum = torch.empty((batch * num_kv_heads, num_chunks, dp), device=q.device, dtype=torch.float32)
    v_amax = torch.empty_like(k_sum)
    stats = Launch(
        _kv_stats_kernel, (num_chunks, batch * num_kv_heads),
        (k, v, k_sum, v_amax, seqlen_k, num_kv_heads, *k.stride(), *v.stride()),
        dict(CHUNK=chunk, TILE=_STATS_TILE_ELEMENTS // dp, HEAD_DIM=head_dim, HEAD_DIM_PAD=dp,
             SMOOTH_K=recipe.smooth_k),
        dict(num_warps=8, num_stages=2),
    )
    num_q_programs = batch * num_q_heads * out.q_scale.shape[-1]
    num_kv_programs = batch * num_kv_heads * (skp // recipe.k_block)
    quantize = Launch(
        _quantize_qkv_kernel, (num_q_programs + num_kv_programs,),
        (
            q, k, v, out.q, out.k, out.v_t, out.q_scale, out.k_scale, out.v_scale,
            out.k_mean if out.k_mean is not None else k_sum, k_sum, v_amax,
            seqlen_q, seqlen_k, skp, num_q_heads, num_kv_heads, num_chunks, num_q_programs,
            *q.stride(), *k.stride(), *v.stride(),
        ),
        dict(Q_BLOCK=recipe.q_block, K_BLOCK=recipe.k_block, HEAD_DIM=head_dim, HEAD_DIM_PAD=dp,
             SMOOTH_K=recipe.smooth_k),
        dict(num_warps=8),
    )
    return stats, quantize


def quantize_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, recipe: Recipe) -> QuantizedQKV:
    """Quantize fp16/bf16 ``q (B, Hq, Sq, D)``, ``k, v (B, Hkv, Sk, D)`` by ``recipe``.

    Inputs may have any strides. Arguments are assumed checked (see :mod:`fp8attn.api`).
    """
    batch, num_q_heads, seqlen_q, head_dim = q.shape
    out = allocate_quantized(batch, num_q_heads, k.shape[1], seqlen_q, k.shape[2], head_dim, recipe, q.device)
    for launch in quantize_launches(q, k, v, recipe, out):
        launch.run()
    return out
