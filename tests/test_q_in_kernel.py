"""Q quantized in the attention kernel's prologue instead of the quantize launch (recipes with per-token
Q scales, padded D <= 128): the same bytes as the two-launch path, so the same output bit for bit."""

from __future__ import annotations

import pytest
import torch

from fp8attn.api import _attention_launches
from fp8attn.kernels.attention_fwd import forward_launch, kernel_quantizes_q
from fp8attn.quantize import UnquantizedQ, allocate_quantized, quantize_launches
from fp8attn.recipe import RECIPES
from tests.conftest import make_qkv

PER_TOKEN_Q = [name for name, r in RECIPES.items() if r.q_block == 1]


def _two_launch_path(q, k, v, causal, recipe):
    """Q quantized by the quantize launch (the path every recipe took before)."""
    b, hq, sq, d = q.shape
    qkv = allocate_quantized(b, hq, k.shape[1], sq, k.shape[2], d, recipe, q.device)
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)
    for launch in (*quantize_launches(q, k, v, recipe, qkv),
                   forward_launch(qkv, out, lse, causal=causal, softmax_scale=d**-0.5, p_scale=recipe.p_multiplier)):
        launch.run()
    return out, lse


@pytest.mark.parametrize("recipe", PER_TOKEN_Q)
@pytest.mark.parametrize("shape, causal, strided", [
    ((1, 2, 1, 70, 129, 64), True, False),      # grouped-query heads, ragged, causal edge inside a tile
    ((2, 2, 2, 130, 257, 128), False, True),   # two query blocks and a partial one; q a transposed view
    ((1, 1, 1, 33, 64, 96), False, False),     # padded head dim (96 -> 128)
    ((1, 2, 2, 200, 70, 40), True, True),      # rows that see no key; D=40 padded to 64
], ids=str)
def test_kernel_quantizing_q_matches_the_quantize_launch_bit_for_bit(device, gen, poisoned_allocations, recipe,
                                                                     shape, causal, strided):
    r = RECIPES[recipe]
    *_, sq, sk, d = shape
    assert kernel_quantizes_q(r, d, sq, sk, causal)
    q, k, v = (x.to(device) for x in make_qkv(gen, shape, dtype=torch.bfloat16))
    if strided:  # (B, Sq, Hq, D) memory seen as (B, Hq, Sq, D): the prologue reads Q with its strides
        q = q.transpose(1, 2).contiguous().transpose(1, 2)
    out, lse, launches, _ = _attention_launches(q, k, v, causal, d**-0.5, r)
    quantize_grid = launches[-2].grid[0]
    for launch in launches:
        launch.run()
    want, want_lse = _two_launch_path(q, k, v, causal, r)
    assert out.isfinite().all(), "unwritten (NaN-poisoned) or non-finite output"
    assert torch.equal(out, want)
    assert torch.equal(lse, want_lse)
    # The quantize launch had programs for K and V only (as many each).
    assert quantize_grid % 2 == 0 and quantize_grid < _quantize_grid_with_q(q, k, v, r)


def _quantize_grid_with_q(q, k, v, recipe) -> int:
    b, hq, sq, d = q.shape
    qkv = allocate_quantized(b, hq, k.shape[1], sq, k.shape[2], d, recipe, "meta")
    return quantize_launches(q, k, v, recipe, qkv)[-1].grid[0]


@pytest.mark.parametrize("recipe, head_dim, seqlen, causal, expected", [
    ("int8-hadamard-vsmooth", 64, 512, False, True),
    ("int8-hadamard-vsmooth", 128, 16384, True, True),
    ("int8", 120, 1000, False, True),
    ("int8-fp16pv", 128, 4096, False, True),
    ("int8-hadamard-vsmooth", 256, 512, False, False),   # D=256: the prologue would spill
    ("int8-hadamard-vsmooth", 136, 512, False, False),   # pads to 256
    ("e4m3", 64, 512, False, False),                     # Q scale blocks of 128 rows span two programs
    ("e4m3-hadamard", 128, 512, True, False),
])
def test_kernel_quantizes_q_for_per_token_scales_up_to_padded_d128(recipe, head_dim, seqlen, causal, expected):
    assert kernel_quantizes_q(RECIPES[recipe], head_dim, seqlen, seqlen, causal) is expected


def test_forward_launch_takes_q_to_quantize_exactly_when_qkv_has_no_8bit_q():
    r = RECIPES["int8"]
    q = torch.empty(1, 2, 64, 64, device="meta", dtype=torch.float16)
    out, lse = torch.empty_like(q), torch.empty(1, 2, 64, device="meta")
    with_q = allocate_quantized(1, 2, 2, 64, 64, 64, r, "meta")
    without_q = allocate_quantized(1, 2, 2, 64, 64, 64, r, "meta", quantize_q=False)
    assert without_q.q is None and without_q.q_scale is None
    kwargs = dict(causal=False, softmax_scale=0.125, p_scale=r.p_multiplier)
    with pytest.raises(ValueError, match="q_to_quantize must be given exactly when qkv holds no 8-bit Q"):
        forward_launch(without_q, out, lse, **kwargs)
    with pytest.raises(ValueError, match="q_to_quantize must be given exactly when qkv holds no 8-bit Q"):
        forward_launch(with_q, out, lse, **kwargs, q_to_quantize=UnquantizedQ(q, r))
    e4m3 = RECIPES["e4m3"]
    with pytest.raises(ValueError, match="blocks of 128 rows, which must divide its block_m=64"):
        forward_launch(allocate_quantized(1, 2, 2, 64, 64, 64, e4m3, "meta", quantize_q=False), out, lse, **kwargs,
                       q_to_quantize=UnquantizedQ(q, e4m3))
