"""All-zero tensors and all-zero blocks: scale 1.0, finite and exact-enough results, never NaN."""

from __future__ import annotations

import pytest
import torch

import fp8attn
from fp8attn.metrics import compare
from fp8attn.quantize import quantize_qkv
from fp8attn.recipe import DEFAULT_RECIPE
from fp8attn.reference import emulate, exact
from tests.conftest import make_qkv

SHAPE = (1, 2, 2, 200, 300, 64)


@pytest.mark.parametrize("zero", ["q", "k", "v"])
def test_all_zero_tensor_gives_the_recipes_answer(device, gen, zero, causal=True):
    """Zero Q or K: uniform attention, whose 8-bit probabilities are exact, so the kernel differs from its
    emulation only by fp32 summation order and the output's rounding; zero V: exactly zero. What is left
    against float64 is V's quantization (about 3 % relative, not a fixed absolute bound)."""
    q, k, v = make_qkv(gen, SHAPE, device=device)
    {"q": q, "k": k, "v": v}[zero].zero_()
    out = fp8attn.attention(q, k, v, causal=causal)
    assert out.isfinite().all()
    q_cpu, k_cpu, v_cpu = q.cpu(), k.cpu(), v.cpu()
    emulated = emulate(q_cpu, k_cpu, v_cpu, recipe=DEFAULT_RECIPE, causal=causal)
    torch.testing.assert_close(out.cpu().double(), emulated, rtol=2**-10, atol=2**-14)
    if zero == "v":
        assert (out == 0).all()
    else:
        assert compare(emulated, exact(q_cpu, k_cpu, v_cpu, causal=causal)).rel_l2 <= 0.05
    qkv = quantize_qkv(q, k, v, DEFAULT_RECIPE)
    scale = {"q": qkv.q_scale, "k": qkv.k_scale, "v": qkv.v_scale}[zero]
    assert (scale == 1.0).all()


def test_all_zero_blocks_inside_normal_tensors(device, gen):
    q, k, v = make_qkv(gen, SHAPE, device=device)
    q[:, 0, 0:128] = 0  # one whole Q scale block: those rows attend uniformly
    k[:, 1, 128:256] = 0
    v[:, 0, :, 7] = 0  # one channel of V
    v[:, 1, 0:128] = 0
    out = fp8attn.attention(q, k, v, recipe="e4m3-unsmoothed").cpu().double()
    truth = exact(q.cpu(), k.cpu(), v.cpu())
    assert out.isfinite().all()
    assert fp8attn.compare(out, truth).rel_l2 <= 0.06
    assert (out[:, 0, 0:128] - truth[:, 0, 0:128]).abs().max() <= 1e-2
    assert (out[:, 0, :, 7] == 0).all()
    qkv = quantize_qkv(q, k, v, fp8attn.recipes()["e4m3-unsmoothed"])
    assert (qkv.q_scale[0, 0, 0] == 1.0) and (qkv.k_scale[0, 1, 1] == 1.0) and (qkv.v_scale[0, 0, 7] == 1.0)


def test_constant_rows_attend_uniformly(device, gen):
    """Identical keys give equal scores: every query gets the mean of V, to FP8 accuracy of V."""
    q, k, v = make_qkv(gen, (1, 1, 1, 64, 130, 64), device=device)
    k[:] = k[:, :, :1]
    out = fp8attn.attention(q, k, v)
    want = v.cpu().double().mean(dim=2, keepdim=True).expand(-1, -1, 64, -1)
    assert (out.cpu().double() - want).abs().max() <= 1e-2
