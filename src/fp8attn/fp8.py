"""The E4M3 format as fp8attn uses it: one definition shared by kernels, references and tests."""

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


def scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """fp32 scale that maps ``amax`` onto 448; exactly 1.0 where ``amax`` is 0 (an all-zero block)."""
    amax = amax.float()
    return torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
