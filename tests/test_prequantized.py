"""fp8attn.attention_prequantized: caller-quantized E4M3 inputs with per-tensor or per-head descales."""

from __future__ import annotations

import pytest
import torch

import fp8attn
from fp8attn.api import _kernel_layout
from fp8attn.fp8 import scale_from_amax, to_e4m3
from fp8attn.metrics import compare
from fp8attn.reference import attention_emulated, exact
from tests.conftest import make_qkv


def _quantize_per_head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    descale = scale_from_amax(x.float().abs().amax(dim=(-1, -2)))
    return to_e4m3(x.float() / descale[..., None, None]), descale


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 4, 2, 70, 200, 64), (1, 2, 2, 129, 129, 128), (1, 1, 1, 5, 33, 96)], ids=str)
def test_prequantized_matches_its_emulation(device, gen, poisoned_allocations, shape, causal):
    q, k, v = make_qkv(gen, shape, device=device)
    (q8, qd), (k8, kd), (v8, vd) = (_quantize_per_head(x) for x in (q, k, v))
    out = fp8attn.attention_prequantized(q8, k8, v8, qd, kd, vd, causal=causal, out_dtype=torch.float16)
    assert out.dtype == torch.float16 and out.isfinite().all()
    layout = _kernel_layout(*(x.cpu() for x in (q8, k8, v8, qd, kd, vd)))
    emulated = attention_emulated(layout, causal=causal, scale=shape[-1] ** -0.5, p_scale=448.0)
    truth = exact(q.cpu(), k.cpu(), v.cpu(), causal=causal)
    assert compare(out, emulated).rel_l2 <= 0.25 * compare(emulated, truth).rel_l2
    assert compare(out, truth).rel_l2 <= 0.08


def test_per_tensor_descales_as_numbers(device, gen):
    q, k, v = make_qkv(gen, (1, 2, 1, 40, 40, 64), device=device)
    out = fp8attn.attention_prequantized(*(to_e4m3(x.float() * 16) for x in (q, k, v)), 1 / 16, 1 / 16, 1 / 16)
    assert out.dtype == torch.bfloat16
    assert compare(out, exact(q.cpu(), k.cpu(), v.cpu())).rel_l2 <= 0.08
