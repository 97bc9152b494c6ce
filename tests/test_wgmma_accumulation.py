"""The model of the FP8 wgmma's accumulation (fp8attn.wgmma_accumulation): what one instruction keeps and
cuts. The kernel is held to it in tests/test_hopper_kernel.py."""

from __future__ import annotations

import torch

from fp8attn.wgmma_accumulation import cut_sum, wgmma_pv, wgmma_qk


def test_cut_sum_keeps_mantissa_bits_below_the_largest_addend_and_cuts_toward_zero():
    ulp = 2.0**-13  # 13 bits below the largest addend, 1.0
    addends = torch.tensor([[1.0, 1.5 * ulp, 0.9 * ulp], [-1.0, -1.5 * ulp, -0.9 * ulp]], dtype=torch.float64)
    assert cut_sum(addends, 13, dim=-1).tolist() == [1.0 + ulp, -1.0 - ulp]
    assert cut_sum(addends, 40, dim=-1).tolist() == addends.sum(-1).float().double().tolist()


def test_pv_of_one_sign_falls_short_of_the_exact_sum_far_more_without_promotion(gen):
    """Positive weights times positive V (V near a large mean) into a large running sum: every cut is
    downward, and an accumulator carried across steps cuts each product at the running sum's exponent,
    while a fresh one per step (added in fp32) cuts at the step's own."""
    p = torch.rand(1, 1, 4, 256, generator=gen, dtype=torch.float64)
    v = 8 + torch.rand(1, 1, 256, 16, generator=gen, dtype=torch.float64)
    acc = torch.full((1, 1, 4, 16), 5000.0, dtype=torch.float64)
    alpha = torch.ones(1, 1, 4, dtype=torch.float64)
    exact = acc + p @ v
    shortfall = {promoted: exact - wgmma_pv(promoted)(acc, alpha, p, v) for promoted in (False, True)}
    assert (shortfall[False] > 0).all() and (shortfall[True] > 0).all()
    assert (shortfall[False] > 4 * shortfall[True]).all()
    unit = 2.0 ** (12 - 13)  # the running sum is in [4096, 8192): 13 bits below it
    torch.testing.assert_close(shortfall[False].mean().item(), 256 * unit / 2, rtol=0.2, atol=0)  # half a unit each


def test_wgmma_qk_with_wide_mantissas_is_the_plain_product(gen):
    q = torch.randn(1, 2, 5, 64, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, 7, 64, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(wgmma_qk(mantissa_bits=40)(q, k), q @ k.transpose(-1, -2), rtol=1e-6, atol=1e-6)
