"""References the kernels are judged against.

* :func:`exact`: float64 attention, the truth.
* :func:`quantize_emulated`: a recipe's quantization in plain PyTorch, producing the same
  :class:`~fp8attn.quantize.QuantizedQKV` layout as the Triton quantize kernels.
* :func:`attention_emulated`: the kernel's arithmetic on quantized inputs in float64, following its
  key tiling where the numerics depend on it (P is rounded to E4M3 against the running row maximum).
* :func:`p_rounding_slack`: how far a kernel's fp32 arithmetic may move the output from the emulation's
  where P lies at a rounding boundary of its 8-bit (or fp16) operand.
* :func:`emulate`: both together, the recipe's end-to-end numerics.

Comparing kernel with emulation catches kernel bugs that would hide inside FP8 noise; comparing
emulation with :func:`exact` measures what the recipe itself costs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from fp8attn.fp8 import scale_from_amax, to_e4m3, to_int8
from fp8attn.kernels.attention_fwd import layout_forward_config, planned_key_splits, split_keys
from fp8attn.kernels.key_order import from_pv_key_order, to_pv_key_order
from fp8attn.kernels.prequantized_layout import PREQUANTIZED_LAYOUT
from fp8attn.kernels.sizes import cdiv
from fp8attn.quantize import QuantizedQKV, hadamard_matrix, hadamard_scale, k_mean_positions, padded_head_dim
from fp8attn.recipe import Recipe


def visible_keys(seqlen_q: int, seqlen_k: int, causal: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(Sq, Sk)`` bool: which keys each query sees. Causal is bottom-right aligned: ``j <= i + Sk - Sq``."""
    if not causal:
        return torch.ones((seqlen_q, seqlen_k), dtype=torch.bool, device=device)
    i = torch.arange(seqlen_q, device=device)[:, None]
    j = torch.arange(seqlen_k, device=device)[None, :]
    return j <= i + (seqlen_k - seqlen_q)


def _repeat_kv(x: torch.Tensor, num_q_heads: int) -> torch.Tensor:
    return x.repeat_interleave(num_q_heads // x.shape[1], dim=1)


def exact(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Float64 attention. ``q (B, Hq, Sq, D)``, ``k, v (B, Hkv, Sk, D)`` → ``(B, Hq, Sq, D)`` float64.

    Rows that see no key are zero (their log-sum-exp is -inf), as in the kernel.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q64, k64, v64 = q.double(), _repeat_kv(k.double(), q.shape[1]), _repeat_kv(v.double(), q.shape[1])
    s = (q64 @ k64.transpose(-1, -2)) * scale
    s = s.masked_fill(~visible_keys(q.shape[2], k.shape[2], causal, q.device), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    out = p @ v64
    return (out, lse) if return_lse else out


def _k_smoothing_mean(k: torch.Tensor) -> torch.Tensor:
    """``(B, Hkv, 1, D)`` float64: what ``Recipe.smooth_k`` subtracts from ``k (B, Hkv, Sk, D)`` (before any
    rotation), the mean of the keys at :func:`~fp8attn.quantize.k_mean_positions`."""
    return k[:, :, k_mean_positions(k.shape[2])].double().mean(dim=2, keepdim=True)


def quantize_emulated(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, recipe: Recipe) -> QuantizedQKV:
    """The recipe's quantization in PyTorch: what :func:`fp8attn.quantize.quantize_qkv` computes."""
    seqlen_q, head_dim = q.shape[2], q.shape[3]
    seqlen_k = k.shape[2]
    dp = padded_head_dim(head_dim)
    skp = cdiv(seqlen_k, recipe.k_block) * recipe.k_block
    sqp = cdiv(seqlen_q, recipe.q_block) * recipe.q_block
    hadamard = hadamard_matrix(dp, torch.float64, q.device)
    rot_scale = hadamard_scale(dp)

    def pad(x: torch.Tensor, tokens: int) -> torch.Tensor:
        out = x.new_zeros((*x.shape[:2], tokens, dp), dtype=torch.float32)
        out[:, :, : x.shape[2], : x.shape[3]] = x.float()
        return out

    def rotate(x: torch.Tensor) -> torch.Tensor:
        return (x.double() @ hadamard).float() * rot_scale if recipe.hadamard else x

    def blockwise(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = x.unflatten(2, (x.shape[2] // block, block))
        scale = scale_from_amax(blocks.abs().amax(dim=(-1, -2)), recipe.qk_max)
        inv = (1.0 / scale)[..., None, None]
        x8 = (to_int8(blocks, inv) if recipe.qk_format == "int8" else to_e4m3(blocks * inv)).flatten(2, 3)
        return x8, scale

    q8, q_scale = blockwise(rotate(pad(q, sqp)), recipe.q_block)
    kf = rotate(pad(k, skp))
    k_mean = None
    if recipe.smooth_k:
        k_mean = rotate(pad(_k_smoothing_mean(k), 1))[:, :, 0]
        kf = kf - k_mean[:, :, None, :]
        kf[:, :, seqlen_k:] = 0.0
    k8, k_scale = blockwise(kf, recipe.k_block)
    vf = pad(v, skp)
    v_mean = None
    if recipe.smooth_v:
        v_mean = vf.double().sum(dim=2).div(seqlen_k).float()
        vf = vf - v_mean[:, :, None, :]
        vf[:, :, seqlen_k:] = 0.0
    v_scale = scale_from_amax(vf.abs().amax(dim=2))
    vf = vf * (1.0 / v_scale)[:, :, None, :]
    vq = vf.half() if recipe.pv_format == "fp16" else to_e4m3(vf)
    v_t = to_pv_key_order(vq.transpose(-1, -2), recipe.k_block).contiguous()
    return QuantizedQKV(
        q=q8[:, :, :seqlen_q].contiguous(), k=k8, v_t=v_t,
        q_scale=q_scale, k_scale=k_scale, v_scale=v_scale, k_mean=k_mean, v_mean=v_mean,
        seqlen_q=seqlen_q, seqlen_k=seqlen_k, head_dim=head_dim, q_block=recipe.q_block, k_block=recipe.k_block,
    )


def quantize_per_tensor_emulated(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> QuantizedQKV:
    """The cuDNN/TransformerEngine-style baseline: one E4M3 scale per tensor for each of Q, K and V,
    no smoothing, in the kernel layout (the same scale repeated in every block), P scaled by 448."""
    per_block = Recipe(name="per-tensor", smooth_k=False)
    qkv = quantize_emulated(q, k, v, per_block)

    def requantize(x: torch.Tensor, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        xf = torch.zeros((*x.shape[:2], tokens, qkv.q.shape[-1]), dtype=torch.float32, device=x.device)
        xf[:, :, : x.shape[2], : x.shape[3]] = x.float()
        scale = scale_from_amax(xf.abs().amax())
        return to_e4m3(xf * (1.0 / scale)), scale

    q8, q_scale = requantize(q, q.shape[2])
    k8, k_scale = requantize(k, qkv.k.shape[2])
    v8, v_scale = requantize(v, qkv.k.shape[2])
    v_t = to_pv_key_order(v8.transpose(-1, -2), qkv.k_block).contiguous()
    return dataclasses.replace(
        qkv, q=q8, k=k8, v_t=v_t, q_scale=q_scale.expand_as(qkv.q_scale),
        k_scale=k_scale.expand_as(qkv.k_scale), v_scale=v_scale.expand_as(qkv.v_scale), k_mean=None,
    )


def prequantized_layout_emulated(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    q_descale: torch.Tensor, k_descale: torch.Tensor, v_descale: torch.Tensor, v_mean: torch.Tensor | None = None,
) -> QuantizedQKV:
    """What :func:`fp8attn.kernels.prequantized_layout.prequantized_layout` writes, with PyTorch copies:
    E4M3 inputs zero-padded, V transposed, the ``(B, H)`` descales spread over the scale blocks, and the
    caller's ``(B, Hkv, D)`` ``v_mean`` (if given) zero-padded."""
    batch, num_q_heads, seqlen_q, head_dim = q.shape
    num_kv_heads, seqlen_k = k.shape[1], k.shape[2]
    block = PREQUANTIZED_LAYOUT.k_block
    dp = padded_head_dim(head_dim)
    skp = cdiv(seqlen_k, block) * block
    q_pad = q.new_zeros((batch, num_q_heads, seqlen_q, dp))
    q_pad[..., :head_dim] = q
    k_pad = k.new_zeros((batch, num_kv_heads, skp, dp))
    k_pad[:, :, :seqlen_k, :head_dim] = k
    v_t = v.new_zeros((batch, num_kv_heads, dp, skp))
    v_t[:, :, :head_dim, :seqlen_k] = v.transpose(-1, -2)
    v_t = to_pv_key_order(v_t, block)
    v_scale = torch.ones((batch, num_kv_heads, dp), device=q.device, dtype=torch.float32)
    v_scale[..., :head_dim] = v_descale[..., None]
    v_mean_pad = None
    if v_mean is not None:
        v_mean_pad = torch.zeros((batch, num_kv_heads, dp), device=q.device, dtype=torch.float32)
        v_mean_pad[..., :head_dim] = v_mean
    return QuantizedQKV(
        q=q_pad, k=k_pad, v_t=v_t,
        q_scale=q_descale[..., None].expand(batch, num_q_heads, cdiv(seqlen_q, block)).contiguous(),
        k_scale=k_descale[..., None].expand(batch, num_kv_heads, skp // block).contiguous(),
        v_scale=v_scale, k_mean=None, v_mean=v_mean_pad,
        seqlen_q=seqlen_q, seqlen_k=seqlen_k, head_dim=head_dim, q_block=block, k_block=block,
    )


def round_p_operand(p_scaled: torch.Tensor, operand_dtype: torch.dtype) -> torch.Tensor:
    """``P·p_scale`` (fp32) rounded to the P·V operand type ``operand_dtype`` (fp16 or E4M3, V's dtype),
    as float64."""
    rounded = p_scaled.half() if operand_dtype == torch.float16 else to_e4m3(p_scaled)
    return rounded.double()


def attention_emulated(
    qkv: QuantizedQKV, *, causal: bool, scale: float, p_scale: float, block_n: int | None = None,
    row_sum_of_rounded_p: bool = False, return_lse: bool = False,
    pv_accumulate: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    qk_product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    p_round: Callable[[torch.Tensor], torch.Tensor] | None = None, key_split: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel's arithmetic in float64 on quantized inputs → ``(B, Hq, Sq, D)`` float64
    (and the ``(B, Hq, Sq)`` log-sum-exp of the quantized scores with ``return_lse``).

    Keys are visited in tiles of ``block_n`` (default: the Triton kernel's tile for this shape; the Hopper
    kernel's steps are ``fp8attn.kernels.attention_fwd_hopper.hopper_softmax_keys`` keys); after each
    tile the running maximum ``m`` is updated and ``P = exp2(s - m)`` is rounded to E4M3 after scaling
    by ``p_scale``, exactly where the kernel rounds it. The row sum ``l`` uses the unrounded P, or with
    ``row_sum_of_rounded_p`` P as rounded (the P·V weights themselves: the Hopper kernel without
    ``exact_lse``, ``fp8attn.kernels.attention_fwd_hopper.hopper_forward_launch``).
    ``pv_accumulate(acc, alpha, p_rounded, v_tile)``, if given, replaces the exact step
    ``acc·alpha + p_rounded @ v_tile`` (``acc (B, Hq, Sq, Dp)``, ``alpha (B, Hq, Sq)``, ``p_rounded (B, Hq,
    Sq, block_n)``, ``v_tile (B, Hq, block_n, Dp)``), and ``qk_product(q, k)`` the raw scores ``q @ kᵀ``
    (``(B, Hq, Sq, Dp)``, ``(B, Hq, Sk, Dp)`` → ``(B, Hq, Sq, Sk)``, before any scale): models of the
    tensor cores' accumulation (:mod:`fp8attn.wgmma_accumulation`). ``p_round(p_scaled)``, if given,
    replaces the rounding of ``P·p_scale`` (fp32, ``(B, Hq, Sq, block_n)``) to the P·V operand
    (:func:`round_p_operand`) and returns float64; :func:`p_rounding_slack` uses it.
    ``key_split`` (a multiple of ``block_n``) runs the online softmax over each range of that many keys
    on its own, from a fresh running maximum, and merges the ranges' normalised outputs by their
    log-sum-exp (the split-key launches, ``fp8attn.kernels.attention_fwd.split_forward_launches``).
    """
    num_q_heads = qkv.q.shape[1]
    seqlen_q, seqlen_k = qkv.seqlen_q, qkv.seqlen_k
    block_n = block_n or layout_forward_config(qkv, causal).block_n
    q = qkv.q.double()
    q_scale = qkv.q_scale.double().repeat_interleave(qkv.q_block, dim=-1)[..., :seqlen_q]
    k = _repeat_kv(qkv.k.double()[:, :, :seqlen_k], num_q_heads)
    k_scale = _repeat_kv(qkv.k_scale.double().repeat_interleave(qkv.k_block, dim=-1)[..., :seqlen_k], num_q_heads)
    v_t = from_pv_key_order(qkv.v_t, qkv.k_block)
    v = _repeat_kv(v_t.double().transpose(-1, -2)[:, :, :seqlen_k], num_q_heads)
    v_scale = _repeat_kv(qkv.v_scale.double(), num_q_heads)

    raw = q @ k.transpose(-1, -2) if qk_product is None else qk_product(q, k)
    s_all = raw * (q_scale * scale * math.log2(math.e))[..., None] * k_scale[..., None, :]
    s_all = s_all.masked_fill(~visible_keys(seqlen_q, seqlen_k, causal, q.device), float("-inf"))
    key_split = key_split or -(-seqlen_k // block_n) * block_n  # one range: all the keys
    if key_split % block_n:
        raise ValueError(f"key_split={key_split} must be a multiple of block_n={block_n}")
    # Per key range: its output normalised by its own row sum and its log-sum-exp in log2 units.
    range_outs, range_lses = [], []
    for range_start in range(0, seqlen_k, key_split):
        m = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float64, device=q.device)
        l = torch.zeros_like(m)
        acc = torch.zeros_like(q)
        for start in range(range_start, min(range_start + key_split, seqlen_k), block_n):
            s = s_all[..., start : start + block_n]
            m_new = torch.maximum(m, s.amax(dim=-1))
            m_use = torch.where(torch.isinf(m_new), 0.0, m_new)
            alpha = torch.exp2(m - m_use)
            p = torch.exp2(s - m_use[..., None])
            p_scaled = p.float() * p_scale
            p_rounded = round_p_operand(p_scaled, qkv.v_t.dtype) if p_round is None else p_round(p_scaled)
            l = l * alpha + (p_rounded.sum(dim=-1) / p_scale if row_sum_of_rounded_p else p.sum(dim=-1))
            v_tile = v[:, :, start : start + block_n]
            acc = (acc * alpha[..., None] + p_rounded @ v_tile if pv_accumulate is None
                   else pv_accumulate(acc, alpha, p_rounded, v_tile))
            m = m_use
        range_outs.append(acc / (l * p_scale).clamp_min(torch.finfo(torch.float64).tiny)[..., None])
        range_lses.append(torch.where(l > 0, m + torch.log2(l), float("-inf")))
    lses = torch.stack(range_lses)
    top = lses.amax(dim=0)
    weights = torch.exp2(lses - torch.where(torch.isinf(top), 0.0, top))  # 1 for a single range that saw keys
    l = weights.sum(dim=0)
    merged = (weights[..., None] * torch.stack(range_outs)).sum(dim=0)
    out = merged / l.clamp_min(torch.finfo(torch.float64).tiny)[..., None] * v_scale[:, :, None, :]
    if qkv.v_mean is not None:
        out = torch.where((l > 0)[..., None], out + _repeat_kv(qkv.v_mean.double(), num_q_heads)[:, :, None, :], 0.0)
    out = out[..., : qkv.head_dim]
    if not return_lse:
        return out
    return out, torch.where(l > 0, (top + torch.log2(l)) * math.log(2.0), float("-inf"))


P_ROUNDING_NOISE = 2.0**-18
"""Relative distance from a rounding boundary of the P·V operand within which a kernel's fp32 P may round
the other way than the float64 emulation's. The kernel's exponent ``qk·c - m`` carries a few fp32
roundings of about ``|s|·2⁻²⁴`` each (``s`` the score in log2 units) and its exp2 an ulp or two: that
exponent recomputed in fp32 with PyTorch on N(0, 1) inputs (``|s|`` ≤ 7.9) puts P at most 8.9e-7 ≈
2⁻²⁰·¹ from float64 (``docs/measurements/p_rounding_slack/``); 2⁻¹⁸ ≈ 3.8e-6 is four times that."""


def p_rounding_slack(
    qkv: QuantizedQKV, *, causal: bool, scale: float, p_scale: float, block_n: int | None = None,
    relative_noise: float = P_ROUNDING_NOISE, key_split: int | None = None,
) -> torch.Tensor:
    """``(B, Hq, Sq, D)`` float64 ≥ 0: per output element, how far a kernel may be from
    :func:`attention_emulated` (same arguments) because some ``P·p_scale`` lie within ``relative_noise``
    of a rounding boundary of the P·V operand, where the kernel's fp32 P can round to the other
    neighbour.

    Such an entry moves its row's output by the operand's spacing there (for E4M3 6–12 % of the
    entry) times ``|v|`` over the row sum ``l``: on a row dominated by a few keys, one entry moves
    the whole tensor's rel-L2 by more than all of the kernel's other fp32 differences together. The
    bound sums ``spacing·|v|·v_scale / (l·p_scale)`` over all such entries; it is zero on rows that have
    none (six seeds of N(0, 1) inputs, 2 heads × 130 rows × 257 keys: all but 3–11 of the 260 rows). It
    assumes ``l`` sums the unrounded P (the Triton kernel's).
    """
    operand_dtype = qkv.v_t.dtype

    def spacing_if_ambiguous(p_scaled: torch.Tensor) -> torch.Tensor:
        below = round_p_operand((p_scaled.double() * (1 - relative_noise)).float(), operand_dtype)
        above = round_p_operand((p_scaled.double() * (1 + relative_noise)).float(), operand_dtype)
        return above - below

    def add_magnitudes(acc, alpha, spacing, v_tile):
        return acc * alpha[..., None] + spacing @ v_tile.abs()

    return attention_emulated(dataclasses.replace(qkv, v_mean=None), causal=causal, scale=scale, p_scale=p_scale,
                              block_n=block_n, p_round=spacing_if_ambiguous, pv_accumulate=add_magnitudes,
                              key_split=key_split)


def emulate(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, recipe: Recipe, causal: bool = False,
    scale: float | None = None, block_n: int | None = None, return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The recipe end to end in float64 arithmetic: ``(B, Hq, Sq, D)`` float64 (and the log-sum-exp of the
    caller's scores ``scale·q·kᵀ``: where K was smoothed, :func:`attention_emulated`'s plus ``scale·q·k̄``,
    as ``fp8attn.kernels.unsmoothed_lse`` adds it). Without ``block_n``, the Triton kernel's tiles, and the
    keys split into ranges where :func:`fp8attn.api.attention` splits them on a GPU of 132 SMs (H100, H200)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qkv = quantize_emulated(q, k, v, recipe)
    key_split = None
    if block_n is None:  # the Triton kernel's tiles: split the keys where the library does on an H100
        block_n = layout_forward_config(qkv, causal).block_n
        splits = planned_key_splits(q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3], recipe,
                                    causal, torch.device("cpu"))
        key_split = split_keys(k.shape[2], block_n, splits) if splits > 1 else None
    result = attention_emulated(qkv, causal=causal, scale=scale, p_scale=recipe.p_multiplier, block_n=block_n,
                                return_lse=return_lse, key_split=key_split)
    if not (return_lse and recipe.smooth_k):
        return result
    out, lse = result
    k_mean = _repeat_kv(_k_smoothing_mean(k), q.shape[1])
    return out, lse + scale * (q.double() @ k_mean.transpose(-1, -2))[..., 0]

