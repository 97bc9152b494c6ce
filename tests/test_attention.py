"""fp8attn.attention end to end: quantize + kernel against the recipe's emulation and float64."""

from __future__ import annotations

import itertools

import pytest
import torch

import fp8attn
from fp8attn.kernels.attention_fwd import planned_key_splits
from fp8attn.metrics import compare
from fp8attn.recipe import DEFAULT_RECIPE, RECIPES
from fp8attn.reference import emulate, exact
from tests.conftest import HAS_CUDA, INTERPRETED, make_qkv
from tests.test_attention_kernel import LSE_VS_EMULATION

# The done-when bar of the core issue: the kernel's distance from its own recipe's emulation must be
# far below the recipe's distance from the truth, so a kernel bug cannot hide inside FP8 noise.
KERNEL_SHARE_OF_RECIPE_ERROR = 0.25


def kernel_error_budget(recipe_err: float, dtype: torch.dtype) -> float:
    """0.25 × the recipe's own error, but never below the rounding of the output to ``dtype``:
    with one key (Sk = 1) V's per-channel scaling is exact and the recipe error is ~1e-8."""
    return max(KERNEL_SHARE_OF_RECIPE_ERROR * recipe_err, torch.finfo(dtype).eps / 2)

SEQLENS = [(1, 1), (1, 257), (17, 130), (130, 17), (257, 257), (130, 257)]
GRID = [
    # D, (Sq, Sk), causal, dtype, (Hq, Hkv) — dtype and head layout alternate along the grid
    (d, s, causal, dtype, heads)
    for (d, s, causal), dtype, heads in zip(
        itertools.product([64, 128, 256], SEQLENS, [False, True]),
        itertools.cycle([torch.float16, torch.bfloat16, torch.bfloat16, torch.float16]),
        itertools.cycle([(2, 2), (4, 2), (3, 1)]),
    )
]


def _ids(case):
    d, (sq, sk), causal, dtype, (hq, hkv) = case
    return f"D{d}-Sq{sq}-Sk{sk}-{'causal' if causal else 'full'}-{str(dtype)[6:]}-H{hq}/{hkv}"


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("case", GRID, ids=[_ids(c) for c in GRID])
def test_kernel_is_far_closer_to_its_emulation_than_the_recipe_is_to_float64(device, gen, poisoned_allocations, case,
                                                                              recipe):
    d, (sq, sk), causal, dtype, (hq, hkv) = case
    q, k, v = make_qkv(gen, (2 if d == 64 else 1, hq, hkv, sq, sk, d), dtype=dtype, device=device)
    out = fp8attn.attention(q, k, v, causal=causal, recipe=recipe)
    assert out.dtype == dtype and out.shape == q.shape
    assert out.isfinite().all(), "NaN-poisoned elements left unwritten, or a non-finite result"
    q, k, v = q.cpu(), k.cpu(), v.cpu()
    emulated = emulate(q, k, v, recipe=RECIPES[recipe], causal=causal)
    truth = exact(q, k, v, causal=causal)
    kernel_err = compare(out, emulated).rel_l2
    recipe_err = compare(emulated, truth).rel_l2
    assert kernel_err <= kernel_error_budget(recipe_err, dtype), f"kernel {kernel_err:.3g} vs recipe {recipe_err:.3g}"


@pytest.mark.parametrize("recipe", ["int8-hadamard-vsmooth", "e4m3"])
@pytest.mark.parametrize(("shape", "causal"), [((2, 8, 2, 1, 1100, 64), False), ((1, 4, 4, 3, 600, 256), True)],
                         ids=str)
def test_decoding_splits_the_keys_and_stays_close_to_its_emulation(device, gen, poisoned_allocations, shape, causal,
                                                                   recipe):
    """One query row a head leaves most SMs idle: the keys are split into ranges (the emulation follows the
    same plan), and the result is still the recipe's within the kernel's share of its error."""
    b, hq, hkv, sq, sk, d = shape
    r = RECIPES[recipe]
    assert planned_key_splits(b, hq, hkv, sq, sk, d, r, causal, torch.device(device)) > 1, \
        "this shape no longer splits: the test would not exercise the path"
    q, k, v = make_qkv(gen, shape, device=device)
    out, lse = fp8attn.attention(q, k, v, causal=causal, recipe=recipe, return_lse=True)
    assert out.isfinite().all(), "NaN-poisoned elements left unwritten, or a non-finite result"
    q, k, v = q.cpu(), k.cpu(), v.cpu()
    emulated, lse_emulated = emulate(q, k, v, recipe=r, causal=causal, return_lse=True)
    truth = exact(q, k, v, causal=causal)
    kernel_err, recipe_err = compare(out, emulated).rel_l2, compare(emulated, truth).rel_l2
    assert kernel_err <= kernel_error_budget(recipe_err, q.dtype), f"kernel {kernel_err:.3g} vs recipe {recipe_err:.3g}"
    torch.testing.assert_close(lse.cpu().double(), lse_emulated, rtol=0, atol=LSE_VS_EMULATION)


@pytest.mark.parametrize("head_dim", [8, 32, 40, 96, 160])
def test_head_dims_that_are_not_64_128_256_work_through_padding(device, gen, head_dim):
    q, k, v = make_qkv(gen, (1, 2, 1, 70, 90, head_dim), device=device)
    out = fp8attn.attention(q, k, v, causal=True)
    emulated = emulate(q.cpu(), k.cpu(), v.cpu(), recipe=DEFAULT_RECIPE, causal=True)
    truth = exact(q.cpu(), k.cpu(), v.cpu(), causal=True)
    assert compare(out, emulated).rel_l2 <= KERNEL_SHARE_OF_RECIPE_ERROR * compare(emulated, truth).rel_l2


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_every_recipe_runs_by_name(device, gen, recipe):
    q, k, v = make_qkv(gen, (1, 2, 2, 40, 150, 64), device=device, kind="k_offset")
    out = fp8attn.attention(q, k, v, recipe=recipe)
    emulated = emulate(q.cpu(), k.cpu(), v.cpu(), recipe=RECIPES[recipe])
    truth = exact(q.cpu(), k.cpu(), v.cpu())
    assert compare(out, emulated).rel_l2 <= KERNEL_SHARE_OF_RECIPE_ERROR * compare(emulated, truth).rel_l2


def test_non_contiguous_inputs_give_the_same_result(device, gen):
    """(B, S, H, D) tensors viewed as (B, H, S, D), as many models hold them."""
    q, k, v = make_qkv(gen, (1, 2, 2, 50, 70, 64), device=device)
    q_t, k_t, v_t = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    assert not q_t.is_contiguous()
    torch.testing.assert_close(fp8attn.attention(q_t, k_t, v_t), fp8attn.attention(q, k, v), rtol=0, atol=0)


def test_lse_is_the_log_sum_exp_of_scaled_scores(device, gen):
    q, k, v = make_qkv(gen, (1, 2, 1, 33, 200, 64), device=device)
    _, lse = fp8attn.attention(q, k, v, causal=True, scale=0.3, return_lse=True)
    _, lse_emulated = emulate(q.cpu(), k.cpu(), v.cpu(), recipe=DEFAULT_RECIPE, causal=True, scale=0.3,
                              return_lse=True)
    assert lse.dtype == torch.float32 and lse.shape == (1, 2, 33)
    torch.testing.assert_close(lse.cpu().double(), lse_emulated, rtol=0, atol=LSE_VS_EMULATION)


@pytest.mark.parametrize("recipe", ["e4m3", "int8-hadamard-vsmooth"])
def test_lse_of_smoothed_keys_is_that_of_the_callers_scores(device, gen, recipe):
    """Smoothing subtracts K's mean, which shifts every row's scores by scale·q·k̄; the LSE handed back is
    that of the scores as the caller wrote them (keys with per-channel offsets: a shift of tens)."""
    q, k, v = make_qkv(gen, (1, 2, 1, 40, 150, 64), device=device, kind="k_offset")
    _, lse = fp8attn.attention(q, k, v, causal=True, recipe=recipe, return_lse=True)
    _, lse_exact = exact(q.cpu(), k.cpu(), v.cpu(), causal=True, return_lse=True)
    assert (lse.cpu().double() - lse_exact).abs().max() < 0.05


@pytest.mark.parametrize("recipe", ["e4m3", "e4m3-unsmoothed"])
def test_only_calls_that_return_the_lse_pay_for_it(recipe):
    """The LSE's shift back to the caller's scores is a launch of its own, made only for calls that return
    the LSE of a recipe that smooths K (on Hopper those calls also sum P's rows in fp32)."""
    from fp8attn.api import _attention_launches

    q = torch.zeros(1, 2, 8, 64, dtype=torch.bfloat16)
    r = fp8attn.recipes()[recipe]
    for return_lse in (False, True):
        kernels = [launch.kernel.__name__ for launch in _attention_launches(q, q, q, False, 0.125, r, return_lse)[2]]
        assert ("_unsmoothed_lse_kernel" in kernels) == (return_lse and r.smooth_k), kernels


def test_custom_scale_matches_float64(device, gen):
    q, k, v = make_qkv(gen, (1, 2, 2, 64, 64, 64), device=device)
    out = fp8attn.attention(q, k, v, scale=0.05)
    assert compare(out, exact(q.cpu(), k.cpu(), v.cpu(), scale=0.05)).rel_l2 < 0.06


def test_backward_raises_instead_of_silently_returning_no_gradient(device, gen):
    q, k, v = make_qkv(gen, (1, 1, 1, 16, 16, 64), device=device)
    q.requires_grad_(True)
    out = fp8attn.attention(q, k, v)
    with pytest.raises(NotImplementedError, match="no backward"):
        out.sum().backward()


def test_custom_op_has_a_fake_implementation_for_torch_compile():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 4, 10, 64, dtype=torch.bfloat16)
        k = torch.empty(2, 2, 12, 64, dtype=torch.bfloat16)
        out, lse = torch.ops.fp8attn.attention(q, k, k, True, 0.125, "e4m3", "e4m3", 128, 128, True, False, False,
                                               448.0, True)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (2, 4, 10) and lse.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRETED, reason="no CUDA GPU (torch.compile of the custom op)")
def test_torch_compile_traces_the_custom_op_without_graph_breaks(gen):
    q, k, v = make_qkv(gen, (1, 4, 2, 100, 300, 64), device="cuda", dtype=torch.bfloat16)
    compiled = torch.compile(lambda q, k, v: fp8attn.attention(q * 1.0, k, v, causal=True), fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), fp8attn.attention(q, k, v, causal=True), rtol=0, atol=0)
