"""Synthetic attention inputs with the structures that break 8-bit attention (one definition for the
tests, ``fp8attn accuracy`` and the benchmarks)."""

from __future__ import annotations

import torch

KINDS = ("randn", "outliers", "k_offset", "sharp", "v_mean")


def _with_outliers(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    spikes = 10 * torch.randn(x.shape, generator=generator)
    return x + spikes * (torch.rand(x.shape, generator=generator) < 1e-3)


def synthetic_qkv(
    kind: str,
    shape: tuple[int, int, int, int, int, int],
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.float16,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``q (B, Hq, Sq, D)``, ``k, v (B, Hkv, Sk, D)`` for ``shape = (B, Hq, Hkv, Sq, Sk, D)``.

    Kinds:
        randn: N(0, 1) everywhere (diffuse attention; the hardest case for relative error).
        outliers: FA3's N(0, 1) + N(0, 100)·Bernoulli(0.001) in Q, K and V.
        k_offset: K + 8·N(0, 1) per (batch, head, channel), the per-channel offsets real keys carry.
        sharp: Q × 3, large logits (peaked attention).
        v_mean: V + 8·N(0, 1) per (batch, head, channel), values with a large mean.
    Drawn on the CPU from ``generator`` (reproducible), then moved to ``device`` in ``dtype``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    batch, hq, hkv, sq, sk, d = shape
    q = torch.randn(batch, hq, sq, d, generator=generator)
    k = torch.randn(batch, hkv, sk, d, generator=generator)
    v = torch.randn(batch, hkv, sk, d, generator=generator)
    if kind == "outliers":
        q, k, v = (_with_outliers(x, generator) for x in (q, k, v))
    elif kind == "k_offset":
        k = k + 8 * torch.randn(batch, hkv, 1, d, generator=generator)
    elif kind == "sharp":
        q = 3 * q
    elif kind == "v_mean":
        v = v + 8 * torch.randn(batch, hkv, 1, d, generator=generator)
    return tuple(x.to(dtype=dtype, device=device) for x in (q, k, v))
