"""The log-sum-exp of the scores the caller asked for, where the recipe smoothed K.

Smoothing subtracts K's per-channel mean ``k̄`` before quantizing (``Recipe.smooth_k``). Softmax is
shift-invariant per row, so the output is unchanged, but the forward kernels' log-sum-exp is that of the
smoothed scores ``s' = scale·q·(k - k̄)``: short of the caller's ``s = scale·q·k`` by ``scale·q·k̄`` in
every row (34.5 on keys with per-channel offsets, ``docs/accuracy.md``). This launch adds that term back,
from q as the caller passed it (the 8-bit copy would carry its rounding into a term that can be large)
and ``k̄`` unrotated where the recipe rotated it: the normalised Hadamard matrix is symmetric and
orthogonal, so rotating again undoes it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fp8attn.kernels.launch import Launch
from fp8attn.kernels.sizes import cdiv
from fp8attn.quantize import QuantizedQKV, _walsh_hadamard, hadamard_scale

_BLOCK_T = 32  # query rows a program


@triton.jit
def _unsmoothed_lse_kernel(
    q_ptr, k_mean_ptr, lse_ptr, seqlen_q, num_q_heads, num_kv_heads, head_dim, rot_scale, softmax_scale,
    stride_qb, stride_qh, stride_qt, stride_qd,
    BLOCK_T: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, HADAMARD: tl.constexpr,
):
    """``lse += scale·q·k̄`` for BLOCK_T query rows of one (batch, head); rows that saw no key stay -inf."""
    bh = tl.program_id(1)
    b = bh // num_q_heads
    h = bh % num_q_heads
    kv_bh = b * num_kv_heads + h // (num_q_heads // num_kv_heads)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    k_mean = tl.load(k_mean_ptr + kv_bh * HEAD_DIM_PAD + offs_d)
    if HADAMARD:
        k_mean = _walsh_hadamard(k_mean, HEAD_DIM_PAD) * rot_scale
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = offs_t < seqlen_q
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_t[:, None] * stride_qt + offs_d[None, :] * stride_qd,
                mask=t_ok[:, None] & (offs_d < head_dim)[None, :], other=0.0)
    shift = tl.sum(q.to(tl.float32) * k_mean[None, :], axis=1) * softmax_scale
    lse_ptrs = lse_ptr + bh * seqlen_q + offs_t
    tl.store(lse_ptrs, tl.load(lse_ptrs, mask=t_ok) + shift, mask=t_ok)


def unsmoothed_lse_launch(q: torch.Tensor, qkv: QuantizedQKV, lse: torch.Tensor, *, softmax_scale: float,
                          rotated: bool) -> Launch:
    """The launch that turns ``lse (B, Hq, Sq)`` (contiguous, written by a forward kernel on ``qkv``, whose
    ``k_mean (B, Hkv, Dp)`` is rotated when ``rotated``) into the log-sum-exp of ``softmax_scale·q·kᵀ``
    for ``q (B, Hq, Sq, D)`` as the caller passed it."""
    if qkv.k_mean is None:
        raise ValueError("the recipe did not smooth K: its LSE needs no shift")
    batch, num_q_heads, seqlen_q, head_dim = q.shape
    dp = qkv.k_mean.shape[-1]
    return Launch(
        _unsmoothed_lse_kernel, (cdiv(seqlen_q, _BLOCK_T), batch * num_q_heads),
        (q, qkv.k_mean, lse, seqlen_q, num_q_heads, qkv.k_mean.shape[1], head_dim, hadamard_scale(dp), softmax_scale,
         *q.stride()),
        dict(BLOCK_T=_BLOCK_T, HEAD_DIM_PAD=dp, HADAMARD=rotated),
        dict(num_warps=4),
    )
