"""What the default recipe costs against float64, on inputs where per-tensor FP8 is known to fail."""

from __future__ import annotations

import pytest

import fp8attn
from fp8attn.metrics import compare
from fp8attn.reference import exact
from tests.conftest import make_qkv


@pytest.mark.parametrize("head_dim", [64, 128])
def test_randn_inputs_stay_within_budget(device, gen, head_dim):
    q, k, v = make_qkv(gen, (1, 2, 2, 256, 256, head_dim), device=device)
    report = compare(fp8attn.attention(q, k, v), exact(q.cpu(), k.cpu(), v.cpu()))
    assert report.rel_l2 <= 0.06 and report.cosine >= 0.998, report


@pytest.mark.parametrize("head_dim", [64, 128])
def test_keys_with_per_channel_offsets_stay_within_budget(device, gen, head_dim):
    q, k, v = make_qkv(gen, (1, 2, 2, 256, 256, head_dim), device=device, kind="k_offset")
    truth = exact(q.cpu(), k.cpu(), v.cpu())
    smoothed = compare(fp8attn.attention(q, k, v), truth)
    unsmoothed = compare(fp8attn.attention(q, k, v, recipe="e4m3-unsmoothed"), truth)
    assert smoothed.rel_l2 <= 0.06, smoothed
    # Smoothing is what makes the difference: without it the offsets eat the E4M3 range.
    assert unsmoothed.rel_l2 >= 2 * smoothed.rel_l2, (smoothed, unsmoothed)
