"""A model of how Hopper's FP8 wgmma adds, as steps for :func:`fp8attn.reference.attention_emulated`.

An FP8 wgmma instruction does not add in fp32: for each output element it aligns its products (32 along
the reduction) and the accumulator it adds them to at the largest exponent among them and keeps about
13 bits below it, cutting off what is smaller. Where the Gluon kernel promotes P·V (padded D ≤ 128: a
fresh accumulator per softmax step, added in fp32) the cut bits stay small; where it does not (D = 256:
one accumulator per query block) and every product has one sign, they add up. On the H200 this model
puts the kernel 0.0004-0.0006 from it where the exact emulation is 0.075 away (V with a large mean at D=256),
and 0.001-0.003 from it on other inputs where the exact emulation is 0.002-0.008 away (docs/perf-notes.md,
sections 35 and 36). Ordering and rounding inside an instruction are guesses: it describes the kernel's
error, not its bits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

WGMMA_K = 32
"""Reduction elements one FP8 wgmma instruction adds (keys for P·V, channels for Q·Kᵀ)."""

WGMMA_MANTISSA_BITS = 13
"""Bits kept below the largest addend: 12 and 14 miss the H200's errors by 2x either way (section 35)."""


def cut_sum(addends: torch.Tensor, mantissa_bits: int, dim: int) -> torch.Tensor:
    """Sum over ``dim`` as one instruction adds in this model: every addend cut toward zero to a multiple of
    2^(e - mantissa_bits), e the exponent of the largest addend of its output element; returned as fp32
    values in float64."""
    largest = addends.abs().amax(dim=dim, keepdim=True)
    unit = torch.exp2(torch.floor(torch.log2(largest.clamp_min(1e-300))) - mantissa_bits)
    return (torch.trunc(addends / unit) * unit).sum(dim=dim).float().double()


def wgmma_pv(promoted: bool, mantissa_bits: int = WGMMA_MANTISSA_BITS) -> Callable:
    """``pv_accumulate`` for :func:`attention_emulated`: a softmax step's P·V in instructions of WGMMA_K keys,
    into a fresh accumulator added in fp32 (``promoted``) or into the running one."""

    def accumulate(acc, alpha, p_rounded, v_tile):
        acc = (acc * alpha[..., None]).float().double()
        running = torch.zeros_like(acc) if promoted else acc
        for start in range(0, p_rounded.shape[-1], WGMMA_K):
            products = p_rounded[..., start:start + WGMMA_K, None] * v_tile[:, :, None, start:start + WGMMA_K, :]
            running = cut_sum(torch.cat([running[..., None, :], products], dim=-2), mantissa_bits, dim=-2)
        return (acc + running).float().double() if promoted else running

    return accumulate


def wgmma_qk(mantissa_bits: int = WGMMA_MANTISSA_BITS) -> Callable:
    """``qk_product`` for :func:`attention_emulated`: E4M3 ``q @ kᵀ`` in instructions of WGMMA_K channels,
    from a fresh accumulator per tile (the kernels' score wgmmas do not accumulate across tiles)."""

    def product(q, k):
        scores = torch.zeros(*q.shape[:-1], k.shape[-2], dtype=torch.float64, device=q.device)
        for start in range(0, q.shape[-1], WGMMA_K):
            products = q[..., :, None, start:start + WGMMA_K] * k[..., None, :, start:start + WGMMA_K]
            scores = cut_sum(torch.cat([scores[..., None], products], dim=-1), mantissa_bits, dim=-1)
        return scores

    return product
