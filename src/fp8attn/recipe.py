"""Quantization recipes: what each operand becomes before the FP8 attention kernel sees it.

A recipe is data. The quantize kernels, the attention kernel's constants, the emulation in
:mod:`fp8attn.reference` and the docs all read the same :class:`Recipe`, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from fp8attn.fp8 import E4M3_MAX


@dataclass(frozen=True)
class Recipe:
    """How Q, K, V and the softmax probabilities P are brought to E4M3.

    Attributes:
        name: the name :func:`fp8attn.attention` accepts as ``recipe=``.
        q_block: tokens of Q that share one fp32 scale (per batch and head).
        k_block: tokens of K that share one fp32 scale (per batch and head). The attention
            kernel's key tile must divide it, so each tile reads one K scale.
        smooth_k: subtract K's per-(batch, head, channel) mean over tokens before quantizing.
            Softmax is invariant to adding a constant to each row of scores, so this is exact,
            and it removes the per-channel offsets real keys carry.
        p_scale: P = exp(s - m) lies in [0, 1]; it is multiplied by this before rounding to E4M3
            and the factor is divided out with the row sum at the end.

    V always gets one scale per (batch, head, channel), taken over all tokens, so it folds into
    the output's epilogue. Every scale is amax / 448, or exactly 1.0 where amax is 0.
    """

    name: str
    q_block: int = 128
    k_block: int = 128
    smooth_k: bool = True
    p_scale: float = E4M3_MAX

    def __post_init__(self) -> None:
        for field in ("q_block", "k_block"):
            value = getattr(self, field)
            if value < 16 or value & (value - 1):
                raise ValueError(f"Recipe.{field} must be a power of two >= 16, got {value}")
        if not 0 < self.p_scale <= E4M3_MAX:
            raise ValueError(f"Recipe.p_scale must lie in (0, {E4M3_MAX}], got {self.p_scale}")

    def describe(self) -> str:
        """One line a person can read: the recipe as the docs and the CLI print it."""
        k = "K - mean(K) (smoothed), " if self.smooth_k else "K, "
        return (
            f"{self.name}: E4M3 Q per {self.q_block} tokens, {k}E4M3 per {self.k_block} tokens; "
            f"E4M3 V per channel; E4M3 P scaled by {self.p_scale:g}; fp32 accumulation"
        )


E4M3_BLOCK = Recipe(name="e4m3")
"""The core recipe: E4M3 Q/K with per-128-token scales and smoothed K, E4M3 V per channel."""

E4M3_UNSMOOTHED = Recipe(name="e4m3-unsmoothed", smooth_k=False)
"""As :data:`E4M3_BLOCK` but without K smoothing: shows what smoothing buys on offset keys."""

RECIPES: dict[str, Recipe] = {r.name: r for r in (E4M3_BLOCK, E4M3_UNSMOOTHED)}
DEFAULT_RECIPE = E4M3_BLOCK


def recipes() -> dict[str, Recipe]:
    """The recipes :func:`fp8attn.attention` accepts by name."""
    return dict(RECIPES)


def resolve_recipe(recipe: str | Recipe | None) -> Recipe:
    """Turn ``recipe=`` into a :class:`Recipe`, with an error that lists the names on a typo."""
    if recipe is None:
        return DEFAULT_RECIPE
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, str) and recipe in RECIPES:
        return RECIPES[recipe]
    raise ValueError(f"recipe must be one of {sorted(RECIPES)} or a fp8attn.Recipe, got {recipe!r}")
