"""Error metrics fit for 8-bit attention, computed in float64.

FP8 keeps about three mantissa bits, so element-wise ``allclose`` says little; these judge the
whole output: relative L2 error, cosine similarity, RMSE and the largest absolute error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class ErrorReport:
    """How far ``actual`` is from ``expected``. ``rel_l2 = ‖a − e‖ / ‖e‖``."""

    rel_l2: float
    cosine: float
    rmse: float
    max_abs: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return f"rel-L2 {self.rel_l2:.4g}  cosine {self.cosine:.6f}  RMSE {self.rmse:.3g}  max-abs {self.max_abs:.3g}"


def compare(actual: torch.Tensor, expected: torch.Tensor) -> ErrorReport:
    """Error metrics of ``actual`` against ``expected`` (same shape). Non-finite values give NaN metrics."""
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: actual {tuple(actual.shape)} vs expected {tuple(expected.shape)}")
    a = actual.detach().double().flatten().cpu()
    e = expected.detach().double().flatten().cpu()
    diff = a - e
    norm_e = e.norm()
    denom = a.norm() * norm_e
    return ErrorReport(
        rel_l2=float(diff.norm() / norm_e) if norm_e > 0 else float(diff.norm()),
        cosine=float(a @ e / denom) if denom > 0 else float(torch.equal(a, e)),
        rmse=float(diff.pow(2).mean().sqrt()),
        max_abs=float(diff.abs().max()) if diff.numel() else 0.0,
    )
