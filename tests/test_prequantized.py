"""fp8attn.attention_prequantized: caller-quantized E4M3 inputs with per-tensor or per-head descales."""

from __future__ import annotations

import pytest
import torch

import fp8attn
from fp8attn.fp8 import quantize_per_head, to_e4m3
from fp8attn.kernels.attention_fwd import planned_key_splits, split_keys
from fp8attn.kernels.attention_fwd_hopper import hopper_softmax_keys
from fp8attn.kernels.prequantized_layout import PREQUANTIZED_LAYOUT, prequantized_layout
from fp8attn.metrics import compare
from fp8attn.reference import attention_emulated, exact, prequantized_layout_emulated
from tests.conftest import HAS_CUDA, INTERPRETED, make_qkv
from tests.test_attention import kernel_error_budget
from tests.test_attention_kernel import KERNEL_VS_EMULATION


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


@pytest.mark.parametrize("v_mean", [False, True], ids=["plain", "v_mean"])
def test_prequantized_decoding_splits_the_keys_and_matches_its_emulation(device, gen, poisoned_allocations, v_mean):
    """An FP8 KV cache read by one query row a head: the keys are split into ranges and merged (V's mean,
    when given, added once after the merge)."""
    shape = (1, 8, 2, 1, 1500, 128)
    q, k, v = make_qkv(gen, shape, device=device, kind="v_mean" if v_mean else "randn")
    mean = v.float().mean(dim=2) if v_mean else None
    (q8, qd), (k8, kd), (v8, vd) = (quantize_per_head(x) for x in (q, k, v if mean is None else v - mean[:, :, None]))
    out = fp8attn.attention_prequantized(q8, k8, v8, qd, kd, vd, v_mean=mean, out_dtype=torch.float16)
    assert out.isfinite().all()
    layout = prequantized_layout_emulated(*(x.cpu() for x in (q8, k8, v8, qd, kd, vd)),
                                          *(() if mean is None else (mean.cpu(),)))
    splits = planned_key_splits(1, 8, 2, 1, 1500, 128, PREQUANTIZED_LAYOUT, False, torch.device(device))
    assert splits > 1, "this shape no longer splits: the test would not exercise the path"
    emulated = attention_emulated(layout, causal=False, scale=128**-0.5, p_scale=448.0,
                                  key_split=split_keys(1500, 128, splits))
    truth = exact(q.cpu(), k.cpu(), v.cpu())
    assert compare(out, emulated).rel_l2 <= kernel_error_budget(compare(emulated, truth).rel_l2, out.dtype)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(1, 4, 2, 70, 200, 64), (1, 2, 1, 150, 33, 96)], ids=str)
def test_prequantized_adds_back_the_v_mean_it_is_given(device, gen, poisoned_allocations, shape, causal):
    """V with a large per-channel mean, quantized after subtracting it: the output adds ``v_mean`` back
    (zero-padded at D=96; causal with Sq > Sk leaves rows that see no key at zero, without the mean), matches
    the emulation of that recipe (fp16 output: its recipe error, 0.0007 here, is below bf16's rounding) and
    is closer to float64 than with V quantized with its mean."""
    q, k, v = make_qkv(gen, shape, device=device, kind="v_mean")
    v_mean = v.float().mean(dim=2)
    (q8, qd), (k8, kd), (v8, vd) = (quantize_per_head(x) for x in (q, k, v - v_mean[:, :, None, :]))
    out = fp8attn.attention_prequantized(q8, k8, v8, qd, kd, vd, v_mean=v_mean, causal=causal, out_dtype=torch.float16)
    layout = prequantized_layout_emulated(*(x.cpu() for x in (q8, k8, v8, qd, kd, vd, v_mean)))
    emulated = attention_emulated(layout, causal=causal, scale=shape[-1] ** -0.5, p_scale=448.0)
    truth = exact(q.cpu(), k.cpu(), v.cpu(), causal=causal)
    assert compare(out, emulated).rel_l2 <= kernel_error_budget(compare(emulated, truth).rel_l2, out.dtype)
    v8_blind, vd_blind = quantize_per_head(v)
    blind = fp8attn.attention_prequantized(q8, k8, v8_blind, qd, kd, vd_blind, causal=causal, out_dtype=torch.float16)
    assert compare(out, truth).rel_l2 < 0.5 * compare(blind, truth).rel_l2
    if causal and shape[3] > shape[4]:
        assert (out[:, :, : shape[3] - shape[4]] == 0).all()


@pytest.mark.parametrize("shape", [(2, 4, 2, 70, 200, 64), (1, 2, 1, 300, 129, 96), (1, 1, 1, 5, 256, 128)], ids=str)
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_layout_kernel_writes_the_emulated_layout(device, gen, poisoned_allocations, shape, strided):
    """Byte for byte: V transposed with zero padding, padded copies of Q and K where D is not a power
    of two, the keys are ragged or D is not unit-stride (in place otherwise), descales of any strides
    spread over the scale blocks, the caller's V mean of any strides zero-padded."""
    q, k, v = make_qkv(gen, shape, device=device)
    (q8, qd), (k8, kd), (v8, vd) = (quantize_per_head(x) for x in (q, k, v))
    k8 = k8.transpose(1, 2).contiguous().transpose(1, 2)  # K with strides as a (B, S, H, D) model holds it
    if strided:
        q8 = q8.transpose(-1, -2).contiguous().transpose(-1, -2)  # D not unit-stride: Q must be copied
        kd = kd[:1].expand_as(kd)  # stride 0 along the batch
        vd = vd.t().contiguous().t()  # column-major (B, H)
    v_mean = torch.randn(shape[0], shape[2], shape[-1], generator=gen).to(device)
    if strided:
        v_mean = v_mean.transpose(0, 1).contiguous().transpose(0, 1)
    got, launch = prequantized_layout(q8, k8, v8, qd, kd, vd, v_mean)
    launch.run()
    want = prequantized_layout_emulated(*(x.cpu() for x in (q8, k8, v8, qd, kd, vd, v_mean)))
    for name in ("q", "k", "v_t"):
        g, w = getattr(got, name).cpu(), getattr(want, name)
        assert g.shape == w.shape, name
        assert torch.equal(g.view(torch.uint8), w.view(torch.uint8)), name
    for name in ("q_scale", "k_scale", "v_scale", "v_mean"):
        assert torch.equal(getattr(got, name).cpu(), getattr(want, name)), name
    assert (got.q is q8) == (shape[-1] != 96 and not strided)  # copied only where it lacks the layout


def test_per_tensor_descales_as_numbers(device, gen):
    q, k, v = make_qkv(gen, (1, 2, 1, 40, 40, 64), device=device)
    out = fp8attn.attention_prequantized(*(to_e4m3(x.float() * 16) for x in (q, k, v)), 1 / 16, 1 / 16, 1 / 16)
    assert out.dtype == torch.bfloat16
    assert compare(out, exact(q.cpu(), k.cpu(), v.cpu())).rel_l2 <= 0.08


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRETED, reason="no CUDA GPU (compiled-kernel run)")
def test_prequantized_at_d256_with_v_mean_matches_the_emulation_on_v_with_a_large_mean(gen):
    """4096 keys at D=256, where the Gluon kernel accumulates P·V unpromoted and V quantized with a large
    per-channel mean lands 0.075 from the emulation (README, Known issues): quantized after subtracting
    its mean, and the mean passed as ``v_mean``, the kernel matches the emulation."""
    q, k, v = make_qkv(gen, (2, 2, 2, 4096, 4096, 256), dtype=torch.bfloat16, device="cuda", kind="v_mean")
    assert planned_key_splits(2, 2, 2, 4096, 4096, 256, PREQUANTIZED_LAYOUT, False, q.device) == 1, \
        "the query blocks must fill the GPU for the Gluon kernel to run"
    v_mean = v.float().mean(dim=2)
    (q8, qd), (k8, kd), (v8, vd) = (quantize_per_head(x) for x in (q, k, v - v_mean[:, :, None, :]))
    out = fp8attn.attention_prequantized(q8, k8, v8, qd, kd, vd, v_mean=v_mean)
    layout = prequantized_layout_emulated(*(x.cpu() for x in (q8, k8, v8, qd, kd, vd, v_mean)))
    emulated = attention_emulated(layout, causal=False, scale=256**-0.5, p_scale=448.0,
                                  block_n=hopper_softmax_keys(256, layout.k_block))
    distance = compare(out, emulated).rel_l2
    assert distance <= KERNEL_VS_EMULATION, f"{distance:.4f} from the emulation"


def test_prequantized_custom_op_has_a_fake_implementation_with_and_without_v_mean():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 4, 10, 64, dtype=torch.float8_e4m3fn)
        k = torch.empty(2, 2, 12, 64, dtype=torch.float8_e4m3fn)
        qd, kd = torch.empty(2, 4), torch.empty(2, 2)
        for v_mean in (None, torch.empty(2, 2, 64)):
            out, lse = torch.ops.fp8attn.attention_prequantized(q, k, k, qd, kd, kd, v_mean, True, 0.125,
                                                                torch.float16, False)
            assert out.shape == q.shape and out.dtype == torch.float16 and lse.shape == (2, 4, 10)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRETED, reason="no CUDA GPU (torch.compile of the custom op)")
def test_torch_compile_traces_the_prequantized_op_with_v_mean_without_graph_breaks(gen):
    q, k, v = make_qkv(gen, (1, 4, 2, 100, 300, 64), device="cuda", kind="v_mean")
    v_mean = v.float().mean(dim=2)
    (q8, qd), (k8, kd), (v8, vd) = (quantize_per_head(x) for x in (q, k, v - v_mean[:, :, None, :]))

    def call(q8, k8, v8, qd, kd, vd, v_mean):
        return fp8attn.attention_prequantized(q8, k8, v8, qd, kd, vd, v_mean=v_mean, causal=True,
                                              validate_descales=False)

    compiled = torch.compile(call, fullgraph=True)
    args = (q8, k8, v8, qd, kd, vd, v_mean)
    torch.testing.assert_close(compiled(*args), call(*args), rtol=0, atol=0)
