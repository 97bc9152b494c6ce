"""fp8attn.attention_prequantized: caller-quantized E4M3 inputs with per-tensor or per-head descales."""

from __future__ import annotations

import pytest
import torch

import fp8attn
from fp8attn.fp8 import quantize_per_head, to_e4m3
from fp8attn.kernels.prequantized_layout import prequantized_layout
from fp8attn.metrics import compare
from fp8attn.reference import attention_emulated, exact, prequantized_layout_emulated
from tests.conftest import make_qkv


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 4, 2, 70, 200, 64), (1, 2, 2, 129, 129, 128), (1, 1, 1, 5, 33, 96)], ids=str)
def test_prequantized_matches_its_emulation(device, gen, poisoned_allocations, shape, causal):
    q, k, v = make_qkv(gen, shape, device=device)
    (q8, qd), (k8, kd), (v8, vd) = (quantize_per_head(x) for x in (q, k, v))
    out = fp8attn.attention_prequantized(q8, k8, v8, qd, kd, vd, causal=causal, out_dtype=torch.float16)
    assert out.dtype == torch.float16 and out.isfinite().all()
    layout = prequantized_layout_emulated(*(x.cpu() for x in (q8, k8, v8, qd, kd, vd)))
    emulated = attention_emulated(layout, causal=causal, scale=shape[-1] ** -0.5, p_scale=448.0)
    truth = exact(q.cpu(), k.cpu(), v.cpu(), causal=causal)
    assert compare(out, emulated).rel_l2 <= 0.25 * compare(emulated, truth).rel_l2
    assert compare(out, truth).rel_l2 <= 0.08


@pytest.mark.parametrize("shape", [(2, 4, 2, 70, 200, 64), (1, 2, 1, 300, 129, 96), (1, 1, 1, 5, 256, 128)], ids=str)
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_layout_kernel_writes_the_emulated_layout(device, gen, poisoned_allocations, shape, strided):
    """Byte for byte: V transposed with zero padding, padded copies of Q and K where D is not a power
    of two, the keys are ragged or D is not unit-stride (in place otherwise), descales of any strides
    spread over the scale blocks."""
    q, k, v = make_qkv(gen, shape, device=device)
    (q8, qd), (k8, kd), (v8, vd) = (quantize_per_head(x) for x in (q, k, v))
    k8 = k8.transpose(1, 2).contiguous().transpose(1, 2)  # K with strides as a (B, S, H, D) model holds it
    if strided:
        q8 = q8.transpose(-1, -2).contiguous().transpose(-1, -2)  # D not unit-stride: Q must be copied
        kd = kd[:1].expand_as(kd)  # stride 0 along the batch
        vd = vd.t().contiguous().t()  # column-major (B, H)
    got, launch = prequantized_layout(q8, k8, v8, qd, kd, vd)
    launch.run()
    want = prequantized_layout_emulated(*(x.cpu() for x in (q8, k8, v8, qd, kd, vd)))
    for name in ("q", "k", "v_t"):
        g, w = getattr(got, name).cpu(), getattr(want, name)
        assert g.shape == w.shape, name
        assert torch.equal(g.view(torch.uint8), w.view(torch.uint8)), name
    for name in ("q_scale", "k_scale", "v_scale"):
        assert torch.equal(getattr(got, name).cpu(), getattr(want, name)), name
    assert (got.q is q8) == (shape[-1] != 96 and not strided)  # copied only where it lacks the layout


def test_per_tensor_descales_as_numbers(device, gen):
    q, k, v = make_qkv(gen, (1, 2, 1, 40, 40, 64), device=device)
    out = fp8attn.attention_prequantized(*(to_e4m3(x.float() * 16) for x in (q, k, v)), 1 / 16, 1 / 16, 1 / 16)
    assert out.dtype == torch.bfloat16
    assert compare(out, exact(q.cpu(), k.cpu(), v.cpu())).rel_l2 <= 0.08
