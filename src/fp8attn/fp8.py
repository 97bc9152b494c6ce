"""The 8-bit formats as fp8attn uses them: one definition shared by kernels, references and tests."""

from __future__ import annotations

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448.0


def to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round ``x`` to E4M3 the way Hopper's ``cvt.rn.satfinite`` does.

    Round to nearest, ties to even; finite values beyond ±448 and ±inf saturate to ±448; NaN stays NaN.
    The clamp makes the saturation explicit instead of relying on the torch version's overflow rule.
    """
    return x.clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


def to_int8(x: torch.Tensor, inv_scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """``x * inv_scale`` (both fp32) rounded to int8 the way the quantize kernel's one FMA does: the
    product taken exactly (in float64, where a product of two fp32 values is exact), then to nearest,
    ties to even; clamped to ±127 (a scale derived from the amax keeps products within it anyway)."""
    product = x.double() * torch.as_tensor(inv_scale, dtype=torch.float64, device=x.device)
    return torch.round(product).clamp(-127, 127).to(torch.int8)


def scale_from_amax(amax: torch.Tensor, qmax: float = E4M3_MAX) -> torch.Tensor:
    """fp32 scale that maps ``amax`` onto ``qmax`` (448 for E4M3, 127 for INT8); exactly 1.0 where
    ``amax`` is 0 (an all-zero block)."""
    amax = amax.float()
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


def quantize_per_head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (B, H, S, D)`` as E4M3 with one fp32 scale per (batch, head): ``(x8, descale)`` with
    ``descale (B, H)`` = amax / 448 (1.0 for an all-zero head), the inputs
    :func:`fp8attn.attention_prequantized` takes (``x ≈ x8.float() * descale[..., None, None]``)."""
    descale = scale_from_amax(x.float().abs().amax(dim=(-1, -2)))
    return to_e4m3(x.float() / descale[..., None, None]), descale
