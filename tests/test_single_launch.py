"""The single launch for short shapes: same recipe as the two-launch path, chosen only where it applies."""

from __future__ import annotations

import pytest
import torch

import fp8attn
from fp8attn.api import _attention_launches
from fp8attn.kernels.attention_single_launch import (
    SINGLE_LAUNCH_MAX_PROGRAMS,
    SINGLE_LAUNCH_MAX_SEQLEN_K,
    single_launch_applies,
)
from fp8attn.metrics import compare
from fp8attn.recipe import DEFAULT_RECIPE, RECIPES
from fp8attn.reference import emulate, exact
from tests.conftest import force_launch_path, make_qkv
from tests.test_attention import kernel_error_budget

# Both paths quantize with the same helpers. They differ in the order the K/V statistics are summed
# (tiles of 2048 vs 4096 elements), which can move a K mean by an ulp and flip an 8-bit rounding; under
# the interpreter the outputs came out identical (one case 3e-9 apart). Bound: fp16's epsilon.
PATHS_AGREE = torch.finfo(torch.float16).eps


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize(("shape", "causal"), [
    ((1, 3, 1, 130, 257, 64), True),  # grouped heads, ragged tiles, a causal diagonal off the tile grid
    ((2, 2, 2, 65, 40, 40), False),  # D padded 40 -> 64 with unaligned rows, fewer keys than one tile
    ((1, 2, 2, 200, 100, 32), True),  # Sq > Sk: rows that see no key
])
def test_single_launch_agrees_with_the_two_launch_path(device, gen, poisoned_allocations, monkeypatch, recipe, shape,
                                                       causal):
    q, k, v = make_qkv(gen, shape, device=device, kind="k_offset")
    outs = {}
    for path in ("single", "two"):
        force_launch_path(monkeypatch, path)
        outs[path] = fp8attn.attention(q, k, v, causal=causal, recipe=recipe, return_lse=True)
    (out_1, lse_1), (out_2, lse_2) = outs["single"], outs["two"]
    assert out_1.isfinite().all() and not lse_1.isnan().any(), "NaN-poisoned elements left unwritten"
    emulated, lse_emulated = emulate(q.cpu(), k.cpu(), v.cpu(), recipe=RECIPES[recipe], causal=causal,
                                     return_lse=True)
    recipe_err = compare(emulated, exact(q.cpu(), k.cpu(), v.cpu(), causal=causal)).rel_l2
    assert compare(out_1, emulated).rel_l2 <= kernel_error_budget(recipe_err, q.dtype)
    assert compare(out_1, out_2).rel_l2 <= PATHS_AGREE
    torch.testing.assert_close(lse_1, lse_2, rtol=0, atol=1e-3)  # -inf where a row sees no key, in both
    assert torch.equal(lse_1.cpu().isinf(), lse_emulated.isinf())


def _launch_count(batch: int, heads: int, seqlen: int, head_dim: int, recipe=DEFAULT_RECIPE) -> int:
    q = torch.empty(batch, heads, seqlen, head_dim, device="meta", dtype=torch.float16)
    return len(_attention_launches(q, q, q, False, 0.125, recipe)[2])


def test_short_calls_take_one_launch_and_the_rest_two_or_three():
    assert _launch_count(1, 8, 512, 64) == 1  # the mission shape
    assert _launch_count(1, 8, 512, 40) == 1
    assert _launch_count(1, 8, 512, 128) == 2  # D=128 would spill in one launch
    assert _launch_count(1, 8, SINGLE_LAUNCH_MAX_SEQLEN_K + 1, 64) > 1
    assert _launch_count(1, 8, 4096, 64) == 3  # statistics, quantize, attention
    rows = 64  # query rows per program for the default recipe (per-token Q scales)
    most = SINGLE_LAUNCH_MAX_PROGRAMS
    assert single_launch_applies(1, most, rows, 512, 64, DEFAULT_RECIPE)
    assert not single_launch_applies(1, most + 1, rows, 512, 64, DEFAULT_RECIPE)
    assert _launch_count(1, most + 1, rows, 64) == 2
