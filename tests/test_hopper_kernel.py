"""The warp-specialized Gluon forward kernel (Hopper): same bits as the Triton kernel, and where it is used.

Its arithmetic is the Triton kernel's operation for operation, so the tests hold it to bit-identical
outputs on the same quantized inputs (the Triton kernel is held to the float64 emulation by
tests/test_attention_kernel.py); outputs are poisoned first so unwritten rows show. The offline check
compiles it for sm_90 without a GPU.
"""

from __future__ import annotations

import pytest
import torch

import fp8attn
from fp8attn.api import _PLANS
from fp8attn.kernel_report import collect, collect_in_subprocess, shapes_for
from fp8attn.kernels.attention_fwd import forward_config, forward_launch
from fp8attn.kernels.attention_fwd_hopper import HOPPER_MIN_SEQLEN, hopper_forward_launch, hopper_kernel_applies
from fp8attn.quantize import quantize_qkv
from fp8attn.recipe import RECIPES
from tests.conftest import HAS_CUDA, INTERPRETED, make_qkv

ON_HOPPER = HAS_CUDA and not INTERPRETED and torch.cuda.get_device_capability() == (9, 0)
needs_hopper = pytest.mark.skipif(not ON_HOPPER, reason="needs an sm_90 GPU (compiled Gluon kernel)")


@pytest.mark.parametrize(("recipe", "qk_op"), [("e4m3", "QGMMA"), ("int8-hadamard-vsmooth", "IGMMA")])
def test_hopper_kernel_compiled_offline_uses_8bit_wgmma_without_spills(recipe, qk_op):
    only = "fwd_ws_kernel"
    reports = (collect_in_subprocess(arch=90, only=only, recipe=recipe, head_dims=(256,)) if INTERPRETED
               else collect(shapes_for((256,)), arch=90, only=only, recipe=recipe))
    assert len(reports) == 2  # D=256, 4096 keys, causal and not: the shapes the library gives it
    for report in reports:
        assert report.opcodes[qk_op] > 0 and report.opcodes["QGMMA"] > 0, report
        assert report.opcodes["HGMMA"] == report.opcodes["HMMA"] == report.opcodes["IMMA"] == 0, report
        assert report.spills == 0 and report.stack_bytes == 0, report


def _both_kernels(qkv, causal: bool, recipe, num_stages: int):
    outs = []
    for hopper in (False, True):
        b, hq, sq, _ = qkv.q.shape
        out = torch.full((b, hq, sq, qkv.head_dim), float("nan"), device="cuda", dtype=torch.bfloat16)
        lse = torch.full((b, hq, sq), float("nan"), device="cuda")
        kwargs = dict(causal=causal, softmax_scale=qkv.head_dim**-0.5, p_scale=recipe.p_multiplier)
        if hopper:
            hopper_forward_launch(qkv, out, lse, **kwargs, num_stages=num_stages).run()
        else:
            cfg = forward_config(qkv.q.shape[-1], qkv.k_block, causal, qk_int8=qkv.q.dtype == torch.int8)
            forward_launch(qkv, out, lse, **kwargs, config=cfg).run()  # an explicit config: the Triton kernel
        outs.append((out, lse))
    return outs


@needs_hopper
@pytest.mark.parametrize("recipe", ["e4m3", "int8-hadamard-vsmooth"])
@pytest.mark.parametrize(("shape", "causal"), [
    ((2, 4, 2, 300, 1000, 128), True),  # GQA, fewer queries than keys: the diagonal starts late
    ((1, 3, 3, 1000, 300, 128), True),  # more queries than keys: rows that see no key
    ((2, 2, 2, 777, 777, 128), False),  # ragged in both lengths
    ((1, 4, 1, 1, 513, 64), False),  # a single query row (the second consumer has no row)
    ((1, 2, 2, 257, 257, 64), True),
    ((1, 2, 2, 400, 900, 256), True),
    ((2, 2, 1, 640, 640, 256), False),
    ((1, 2, 2, 96, 40, 80), True),  # padded head dim, keys shorter than one tile
])
@pytest.mark.parametrize("num_stages", [2, 3])
def test_hopper_kernel_is_bit_identical_to_the_triton_kernel(gen, recipe, shape, causal, num_stages):
    r = RECIPES[recipe]
    q, k, v = make_qkv(gen, shape, dtype=torch.bfloat16, device="cuda", kind="k_offset")
    qkv = quantize_qkv(q, k, v, r)
    (want, want_lse), (got, got_lse) = _both_kernels(qkv, causal, r, num_stages)
    assert not torch.isnan(got).any() and not torch.isnan(got_lse).any(), "rows the Gluon kernel did not write"
    assert torch.equal(got, want) and torch.equal(got_lse, want_lse)


@needs_hopper
@pytest.mark.parametrize("recipe", ["e4m3", "int8-hadamard-vsmooth"])
def test_library_runs_long_d256_on_the_hopper_kernel_and_replays_it(gen, recipe):
    """At D=256 and 4096 tokens fp8attn.attention picks the Gluon kernel; the second call replays the
    recorded launches with TMA descriptors rebuilt around the new buffers, and must give exactly what a
    fresh kernel launch gives on the new inputs."""
    r = RECIPES[recipe]
    shape = (1, 2, 1, HOPPER_MIN_SEQLEN, HOPPER_MIN_SEQLEN, 256)
    _PLANS.clear()
    for call in range(2):
        q, k, v = make_qkv(gen, shape, dtype=torch.bfloat16, device="cuda", kind="k_offset")
        out = fp8attn.attention(q, k, v, causal=True, recipe=recipe)
        assert len(_PLANS) == 1
        qkv = quantize_qkv(q, k, v, r)
        assert hopper_kernel_applies(qkv)
        want = torch.full_like(out, float("nan"))
        lse = torch.empty(q.shape[:3], device="cuda")
        launch = forward_launch(qkv, want, lse, causal=True, softmax_scale=256**-0.5, p_scale=r.p_multiplier)
        assert launch.kernel.__name__ == "_fp8_attention_fwd_ws_kernel"
        launch.run()
        assert torch.equal(out, want), f"call {call}"


@needs_hopper
def test_prequantized_path_replays_the_hopper_kernel(gen):
    """attention_prequantized reads the caller's E4M3 tensors in place where their layout allows: the
    TMA descriptors then point into inputs, which a replay must re-point at the new call's inputs."""
    shape = (1, 2, 2, HOPPER_MIN_SEQLEN, HOPPER_MIN_SEQLEN, 256)

    def inputs():
        return [t.to(torch.float8_e4m3fn) for t in make_qkv(gen, shape, dtype=torch.bfloat16, device="cuda")]

    _PLANS.clear()
    fp8attn.attention_prequantized(*inputs(), 0.5, 1.0, 2.0, causal=True)  # records the plan
    q, k, v = inputs()
    out = fp8attn.attention_prequantized(q, k, v, 0.5, 1.0, 2.0, causal=True)  # replays it
    (plan,) = _PLANS.values()
    assert any(r.kernel.name == "_fp8_attention_fwd_ws_kernel" for r in plan._replays)
    _PLANS.clear()
    fresh = fp8attn.attention_prequantized(q, k, v, 0.5, 1.0, 2.0, causal=True)  # records anew: launched directly
    assert torch.isfinite(out).all() and torch.equal(out, fresh)
