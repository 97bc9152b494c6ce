"""Caller-quantized E4M3 Q, K, V brought into the forward kernel's layout in one launch.

:func:`fp8attn.attention_prequantized` receives ``(B, H, S, D)`` E4M3 tensors and per-tensor or
per-head descales. The forward kernel reads the layout of :class:`~fp8attn.quantize.QuantizedQKV`:
V transposed to ``(B, Hkv, Dp, Skp)`` (Hopper's FP8 wgmma takes its B operand K-major only), the
head dimension padded to a power of two, the key length to a multiple of ``k_block``, and scales per
block of tokens. ``_prequantized_layout_kernel`` writes all of it: one program per (block of 128
tokens, batch · KV head) transposes that block of V (keys in P·V operand order,
:mod:`fp8attn.kernels.key_order`), copies K (and the query heads of its group) when
they need padding, and writes the block's scales (and V's per-channel mean, where the caller subtracted
one before quantizing, for the kernels to add back). Q and K are used in place when they already have the
layout (D already the padded width, a power of two from 32; unit stride along D; and for K a length
that is a multiple of ``k_block``).

:func:`fp8attn.reference.prequantized_layout_emulated` is the same layout built with PyTorch copies.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from fp8attn.kernels.grid_dependency import programmatic_launch, signal_next_grid
from fp8attn.kernels.key_order import pv_key_order
from fp8attn.kernels.launch import Launch
from fp8attn.kernels.sizes import cdiv
from fp8attn.quantize import BufferLayout, QuantizedQKV, carve_workspace, padded_head_dim
from fp8attn.recipe import E4M3_BLOCK

# Caller-quantized E4M3 inputs are laid out like the "e4m3" recipe's (scale blocks, P's factor); their V is
# smoothed only where a v_mean comes with it (the planning functions take that as ``v_smoothed``).
PREQUANTIZED_LAYOUT = dataclasses.replace(E4M3_BLOCK, smooth_v=False)
_BLOCK = PREQUANTIZED_LAYOUT.k_block
assert PREQUANTIZED_LAYOUT.q_block == _BLOCK, "one program writes one Q and one K scale block"


@triton.jit
def _copy_padded(src_ptr, dst_ptr, stride_t, stride_d, offs_t, seqlen, dst_rows, head_dim,
                 HEAD_DIM_PAD: tl.constexpr):
    """Copy tokens ``offs_t`` of one head into a ``[dst_rows, Dp]`` row-major buffer, zeros past
    ``seqlen`` and ``head_dim``."""
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    ok = (offs_t < seqlen)[:, None] & (offs_d < head_dim)[None, :]
    x = tl.load(src_ptr + offs_t[:, None] * stride_t + offs_d[None, :] * stride_d, mask=ok, other=0.0)
    tl.store(dst_ptr + offs_t[:, None] * HEAD_DIM_PAD + offs_d[None, :], x, mask=(offs_t < dst_rows)[:, None])


@triton.jit
def _prequantized_layout_kernel(
    q_ptr, k_ptr, v_ptr, q_descale_ptr, k_descale_ptr, v_descale_ptr, v_mean_ptr,
    q_out_ptr, k_out_ptr, vt_ptr, q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_out_ptr,
    seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, head_dim, num_q_blocks,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_qdb, stride_qdh, stride_kdb, stride_kdh, stride_vdb, stride_vdh,
    stride_vmb, stride_vmh, stride_vmd,
    BLOCK: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, COPY_Q: tl.constexpr, COPY_K: tl.constexpr,
    V_MEAN: tl.constexpr, GRID_DEPENDENCY: tl.constexpr,
):
    signal_next_grid(GRID_DEPENDENCY)
    block = tl.program_id(0)
    kv_bh = tl.program_id(1)
    b = kv_bh // num_kv_heads
    h = kv_bh % num_kv_heads
    offs_t = block * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    # head_dim stays a runtime value: see the note in fp8attn.quantize on constant-folded padding.
    d_ok = offs_d < head_dim
    num_k_blocks = seqlen_k_pad // BLOCK
    if block < num_k_blocks:
        ok = (offs_t < seqlen_k)[:, None] & d_ok[None, :]
        v = tl.load(v_ptr + b * stride_vb + h * stride_vh + offs_t[:, None] * stride_vt + offs_d[None, :] * stride_vd,
                    mask=ok, other=0.0)
        tl.store(vt_ptr + (kv_bh * HEAD_DIM_PAD + offs_d[:, None]) * seqlen_k_pad + offs_t[None, :],
                 pv_key_order(tl.trans(v)))
        if COPY_K:
            _copy_padded(k_ptr + b * stride_kb + h * stride_kh, k_out_ptr + kv_bh * seqlen_k_pad * HEAD_DIM_PAD,
                         stride_kt, stride_kd, offs_t, seqlen_k, seqlen_k_pad, head_dim, HEAD_DIM_PAD)
        tl.store(k_scale_ptr + kv_bh * num_k_blocks + block, tl.load(k_descale_ptr + b * stride_kdb + h * stride_kdh))
        if block == 0:
            v_descale = tl.load(v_descale_ptr + b * stride_vdb + h * stride_vdh)
            tl.store(v_scale_ptr + kv_bh * HEAD_DIM_PAD + offs_d, tl.where(d_ok, v_descale, 1.0))
            if V_MEAN:
                v_mean_in = v_mean_ptr + b * stride_vmb + h * stride_vmh + offs_d * stride_vmd
                tl.store(v_mean_out_ptr + kv_bh * HEAD_DIM_PAD + offs_d, tl.load(v_mean_in, mask=d_ok, other=0.0))
    if block < num_q_blocks:
        group = num_q_heads // num_kv_heads
        for g in range(group):
            hq = h * group + g
            bhq = b * num_q_heads + hq
            q_descale = tl.load(q_descale_ptr + b * stride_qdb + hq * stride_qdh)
            tl.store(q_scale_ptr + bhq * num_q_blocks + block, q_descale)
            if COPY_Q:
                _copy_padded(q_ptr + b * stride_qb + hq * stride_qh, q_out_ptr + bhq * seqlen_q * HEAD_DIM_PAD,
                             stride_qt, stride_qd, offs_t, seqlen_q, seqlen_q, head_dim, HEAD_DIM_PAD)


def prequantized_layout(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    q_descale: torch.Tensor, k_descale: torch.Tensor, v_descale: torch.Tensor, v_mean: torch.Tensor | None = None,
    extra: BufferLayout | None = None,
) -> tuple[QuantizedQKV, Launch]:
    """The kernel layout of caller-quantized inputs and the launch that fills it.

    Args:
        q: ``(B, Hq, Sq, D)`` E4M3; k, v: ``(B, Hkv, Sk, D)`` E4M3; any strides.
        q_descale: ``(B, Hq)`` float32; k_descale, v_descale: ``(B, Hkv)`` float32 (expanded views are fine).
        v_mean: ``(B, Hkv, D)`` float32, any strides, or None: what the caller subtracted from V before
            quantizing it, copied (zero-padded) into the layout's ``v_mean`` for the kernels to add back.
        extra: more buffers to carve from the layout's allocation (``QuantizedQKV.extra``).

    Returns the :class:`QuantizedQKV` (its ``q``/``k`` are the inputs themselves where they already have
    the layout; everything else is a view of its one ``workspace`` allocation) and the :class:`Launch`
    that writes the rest; nothing is written until it runs.
    """
    batch, num_q_heads, seqlen_q, head_dim = q.shape
    num_kv_heads, seqlen_k = k.shape[1], k.shape[2]
    dp = padded_head_dim(head_dim)
    skp = cdiv(seqlen_k, _BLOCK) * _BLOCK
    num_q_blocks = cdiv(seqlen_q, _BLOCK)
    copy_q = dp != head_dim or q.stride(-1) != 1
    copy_k = dp != head_dim or skp != seqlen_k or k.stride(-1) != 1
    f32 = torch.float32
    buffers = {
        "q": ((batch, num_q_heads, seqlen_q, dp), q.dtype) if copy_q else None,
        "k": ((batch, num_kv_heads, skp, dp), q.dtype) if copy_k else None,
        "v_t": ((batch, num_kv_heads, dp, skp), q.dtype),
        "q_scale": ((batch, num_q_heads, num_q_blocks), f32),
        "k_scale": ((batch, num_kv_heads, skp // _BLOCK), f32),
        "v_scale": ((batch, num_kv_heads, dp), f32),
        "v_mean": ((batch, num_kv_heads, dp), f32) if v_mean is not None else None,
    }
    workspace, views, extra_views = carve_workspace(buffers, q.device, extra)
    layout = QuantizedQKV(
        **{**views, "q": views["q"] if copy_q else q, "k": views["k"] if copy_k else k},
        k_mean=None, seqlen_q=seqlen_q, seqlen_k=seqlen_k, head_dim=head_dim,
        q_block=_BLOCK, k_block=_BLOCK, workspace=workspace, extra=extra_views,
    )
    launch = Launch(
        _prequantized_layout_kernel, (max(skp // _BLOCK, num_q_blocks), batch * num_kv_heads),
        (
            q, k, v, q_descale, k_descale, v_descale, v_descale if v_mean is None else v_mean,
            layout.q, layout.k, layout.v_t, layout.q_scale, layout.k_scale, layout.v_scale,
            layout.v_scale if v_mean is None else layout.v_mean,
            seqlen_q, seqlen_k, skp, num_q_heads, num_kv_heads, head_dim, num_q_blocks,
            *q.stride(), *k.stride(), *v.stride(), *q_descale.stride(), *k_descale.stride(), *v_descale.stride(),
            *((0, 0, 0) if v_mean is None else v_mean.stride()),
        ),
        dict(BLOCK=_BLOCK, HEAD_DIM_PAD=dp, COPY_Q=copy_q, COPY_K=copy_k, V_MEAN=v_mean is not None,
             GRID_DEPENDENCY=programmatic_launch(q.device)),
        dict(num_warps=8),
    )
    return layout, launch
