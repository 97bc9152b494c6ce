"""Quantization recipes: what each operand becomes before the attention kernel sees it.

A recipe is data. The quantize kernels, the attention kernel's compile-time switches, the emulation
in :mod:`fp8attn.reference` and the docs all read the same :class:`Recipe`, so they cannot drift
apart. Every recipe runs in the same two kernels; its fields are compile-time constants there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fp8attn.fp8 import E4M3_MAX

INT8_MAX = 127.0
QK_FORMATS = ("e4m3", "int8")
PV_FORMATS = ("e4m3", "fp16")
MAX_Q_BLOCK = 128  # the quantize kernel's Q tile: Q scale blocks subdivide it


@dataclass(frozen=True)
class Recipe:
    """How Q, K, V and the softmax probabilities P are brought to 8 (or 16) bits.

    Attributes:
        name: the name :func:`fp8attn.attention` accepts as ``recipe=``.
        qk_format: ``"e4m3"`` (FP8 Q·Kᵀ, QGMMA) or ``"int8"`` (INT8 Q·Kᵀ with exact int32
            accumulation, IGMMA at the same tensor-core rate; codes are the nearest integer, ties to
            even, of the exact product of a value and its inverse scale).
        pv_format: ``"e4m3"`` (FP8 P·V, V per channel) or ``"fp16"`` (fp16 P and V, HGMMA at half
            the FP8 rate, for accuracy).
        q_block: query tokens sharing one fp32 scale (a power of two up to 128; 1 = per token).
        k_block: keys sharing one fp32 scale (a power of two >= 16); the attention kernel's key
            tile divides it, so each tile reads one K scale.
        smooth_k: subtract a per-(batch, head, channel) mean of K first: over every key up to 128 of
            them, else over 128 keys spread evenly (``fp8attn.quantize.k_mean_positions``). Softmax
            is invariant to any such vector (each query's scores shift by one constant), so it is
            exact, and it removes the per-channel offsets real keys carry.
        smooth_v: subtract V's per-channel mean over tokens and add it back to the output
            (softmax rows sum to one), so V's scale covers only its spread around the mean.
        hadamard: rotate Q and K along the head dimension by the normalised Hadamard matrix
            (orthogonal, so Q·Kᵀ is unchanged); it spreads outlier channels over all channels.
        p_scale: P = exp(s - m) in [0, 1] is multiplied by this before rounding to E4M3 (the factor
            leaves with the row sum); None means 448 for E4M3 P and 1 for fp16 P.

    Every scale is amax / (448 for E4M3, 127 for INT8), or exactly 1.0 where amax is 0.
    """

    name: str
    qk_format: Literal["e4m3", "int8"] = "e4m3"
    pv_format: Literal["e4m3", "fp16"] = "e4m3"
    q_block: int = 128
    k_block: int = 128
    smooth_k: bool = True
    smooth_v: bool = False
    hadamard: bool = False
    p_scale: float | None = None

    def __post_init__(self) -> None:
        if self.qk_format not in QK_FORMATS:
            raise ValueError(f"Recipe.qk_format must be one of {QK_FORMATS}, got {self.qk_format!r}")
        if self.pv_format not in PV_FORMATS:
            raise ValueError(f"Recipe.pv_format must be one of {PV_FORMATS}, got {self.pv_format!r}")
        if self.q_block < 1 or self.q_block > MAX_Q_BLOCK or self.q_block & (self.q_block - 1):
            raise ValueError(f"Recipe.q_block must be a power of two from 1 to {MAX_Q_BLOCK}, got {self.q_block}")
        if self.k_block < 16 or self.k_block & (self.k_block - 1):
            raise ValueError(f"Recipe.k_block must be a power of two >= 16, got {self.k_block}")
        if self.p_scale is not None and not 0 < self.p_scale <= E4M3_MAX:
            raise ValueError(f"Recipe.p_scale must lie in (0, {E4M3_MAX}], got {self.p_scale}")

    @property
    def qk_max(self) -> float:
        """The largest magnitude Q and K are scaled to: 448 (E4M3) or 127 (INT8)."""
        return INT8_MAX if self.qk_format == "int8" else E4M3_MAX

    @property
    def p_multiplier(self) -> float:
        """What P is multiplied by before rounding (see ``p_scale``)."""
        if self.p_scale is not None:
            return self.p_scale
        return E4M3_MAX if self.pv_format == "e4m3" else 1.0

    def describe(self) -> str:
        """One line a person can read: the recipe as the docs and the CLI print it."""
        rot = "Hadamard-rotated " if self.hadamard else ""
        k = f"{rot}K - mean(K)" if self.smooth_k else f"{rot}K"
        qk = self.qk_format.upper()
        v = "V - mean(V)" if self.smooth_v else "V"
        if self.pv_format == "e4m3":
            pv = f"E4M3 P (x{self.p_multiplier:g}) and E4M3 {v} per channel"
        else:
            pv = f"fp16 P and fp16 {v} per channel"
        per_q = "token" if self.q_block == 1 else f"{self.q_block} tokens"
        return f"{self.name}: {qk} {rot}Q per {per_q}, {qk} {k} per {self.k_block} tokens; {pv}; fp32 accumulation"


E4M3_BLOCK = Recipe(name="e4m3", smooth_v=True)
"""E4M3 Q/K with per-128-token scales and smoothed K, E4M3 V smoothed, per channel: the core recipe."""

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        E4M3_BLOCK,
        Recipe(name="e4m3-unsmoothed", smooth_k=False),
        Recipe(name="e4m3-hadamard", hadamard=True, smooth_v=True),
        # Per-token Q scales cost nothing extra (the kernel reads one scale per query row anyway) and were
        # 1-2 % more accurate than per-32 or per-128 in emulation; K per 128 keeps 128-key tiles.
        Recipe(name="int8", qk_format="int8", q_block=1),
        Recipe(name="int8-hadamard-vsmooth", qk_format="int8", q_block=1, hadamard=True, smooth_v=True),
        Recipe(name="int8-fp16pv", qk_format="int8", pv_format="fp16", q_block=1),
    )
}
DEFAULT_RECIPE = RECIPES["int8-hadamard-vsmooth"]
"""The default: the most accurate recipe at 8-bit tensor-core rate (docs/accuracy.md has the measurements
and the speed it costs against "e4m3")."""


def recipes() -> dict[str, Recipe]:
    """The recipes :func:`fp8attn.attention` accepts by name."""
    return dict(RECIPES)


def resolve_recipe(recipe: str | Recipe | None) -> Recipe:
    """Turn ``recipe=`` into a :class:`Recipe`, with an error that lists the names on a typo."""
    if recipe is None:
        return DEFAULT_RECIPE
    if isinstance(recipe, Recipe):
        return recipe
    if not isinstance(recipe, str):
        raise TypeError(f"recipe must be a name (str), a fp8attn.Recipe or None, got {type(recipe).__name__}")
    if recipe in RECIPES:
        return RECIPES[recipe]
    raise ValueError(f"recipe must be one of {sorted(RECIPES)} or a fp8attn.Recipe, got {recipe!r}")
