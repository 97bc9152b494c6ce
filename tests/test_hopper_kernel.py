"""The warp-specialized Gluon forward kernel (Hopper): its recipe, and where it is used.

Its arithmetic is the Triton kernel's with one online-softmax step per two key tiles, so the tests hold
it to the float64 emulation with that step (as tests/test_attention_kernel.py holds the Triton kernel to
the emulation with its tile); outputs are poisoned first so unwritten rows show. The offline check
compiles it for sm_90 without a GPU.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

import fp8attn
from fp8attn.api import _PLANS
from fp8attn.kernel_report import collect, collect_in_subprocess, shapes_for
from fp8attn.kernels.attention_fwd import forward_launch, planned_key_splits
from fp8attn.kernels.attention_fwd_hopper import (
    HOPPER_MIN_SEQLEN,
    HOPPER_MIN_SEQLEN_CAUSAL,
    hopper_forward_launch,
    hopper_kernel_applies,
    hopper_kernel_shape,
    hopper_pipelines_pv,
    hopper_softmax_keys,
)
from fp8attn.metrics import compare
from fp8attn.quantize import allocate_quantized, quantize_qkv
from fp8attn.recipe import RECIPES
from fp8attn.reference import attention_emulated, quantize_emulated
from fp8attn.wgmma_accumulation import wgmma_pv, wgmma_qk
from tests.conftest import HAS_CUDA, INTERPRETED, make_qkv
from tests.test_attention_kernel import KERNEL_VS_EMULATION, LSE_VS_EMULATION

ON_HOPPER = HAS_CUDA and not INTERPRETED and torch.cuda.get_device_capability() == (9, 0)
needs_hopper = pytest.mark.skipif(not ON_HOPPER, reason="needs an sm_90 GPU (compiled Gluon kernel)")


def assert_hopper_kernel_spills_as_measured(report) -> None:
    """No spill in the key loop. Outside it, a few words of stack: scalars of the persistent walk over query
    blocks (loop bounds, offsets), stored once and reloaded once per block, and with the pipelined P·V
    registers around a block's last pair (offline ptxas under setmaxnreg 240, with the row sums on the
    tensor cores: none at D=128; at D=256 32 / 56 bytes with INT8 Q·Kᵀ unmasked / causal, 96 / 64 with
    E4M3 Q·Kᵀ, whose turn is pipelined; docs/perf-notes.md, sections 31 and 33-35)."""
    assert report.loop.get("LDL", 0) == 0 and report.loop.get("STL", 0) == 0, report
    pipelined = "D256" in report.shape and report.opcodes.get("IGMMA", 0) == 0
    assert report.stack_bytes <= (96 if pipelined else 56), report


@functools.cache
def _offline_reports(recipe: str) -> tuple:
    """The Gluon kernel compiled for sm_90 at the library's shapes: D=128 and 256, 4096 keys, causal and not."""
    only = "fwd_ws_kernel"
    reports = (collect_in_subprocess(arch=90, only=only, recipe=recipe, head_dims=(128, 256)) if INTERPRETED
               else collect(shapes_for((128, 256)), arch=90, only=only, recipe=recipe))
    assert len(reports) == 4
    return tuple(reports)


@pytest.mark.parametrize(("recipe", "qk_op"), [("e4m3", "QGMMA"), ("int8-hadamard-vsmooth", "IGMMA")])
def test_hopper_kernel_compiled_offline_uses_8bit_wgmma_and_spills_as_measured(recipe, qk_op):
    for report in _offline_reports(recipe):
        assert report.opcodes[qk_op] > 0 and report.opcodes["QGMMA"] > 0, report
        assert report.opcodes["HGMMA"] == report.opcodes["HMMA"] == report.opcodes["IMMA"] == 0, report
        assert report.loop.get(qk_op, 0) > 0, report  # the key loop found: its matmuls are in it
        assert report.loop.get("SHFL", 0) <= 16, report  # row max and sum only: P needs no shuffles
        assert_hopper_kernel_spills_as_measured(report)


@pytest.mark.parametrize("recipe", ["e4m3", "int8-hadamard-vsmooth"])
def test_hopper_kernel_turn_barriers_are_its_own_and_wait_after_the_softmax(recipe):
    """The consumers' turns (named barriers 14 and 15, both warpgroups' 256 threads) share no id with the
    barriers Triton's warp specialization emits, and the waits before each P·V take their thread count
    from the row sums or, where the tensor cores sum the rows, from P's packed words (a register: ptxas
    cannot hoist them into the softmax; perf-notes sections 29 and 34)."""
    for report in _offline_reports(recipe):
        turns = {key: n for key, n in report.named_barriers.items() if key.split()[1] in ("0xe", "0xf")}
        assert all(key.split()[2] in ("0x100", "R") for key in turns), report.named_barriers
        for bar, waiter in (("0xe", "0x100"), ("0xf", "0x100")):
            assert turns.get(f"ARV {bar} {waiter}", 0) > 0, report.named_barriers  # passed by the other
            assert turns.get(f"SYNC {bar} R", 0) >= 2, report.named_barriers  # the pair loops' pinned waits
        others = [key for key in report.named_barriers if key not in turns]
        assert others and all(int(key.split()[1], 16) < 0xE for key in others), report.named_barriers


@needs_hopper
@pytest.mark.parametrize("recipe", ["e4m3", "int8-hadamard-vsmooth"])
@pytest.mark.parametrize(("shape", "causal"), [
    ((2, 4, 2, 300, 1000, 128), True),  # GQA, fewer queries than keys: the diagonal starts late
    ((1, 3, 3, 1000, 300, 128), True),  # more queries than keys: rows that see no key
    ((2, 2, 2, 777, 777, 128), False),  # ragged in both lengths, an odd number of key tiles
    ((1, 4, 1, 1, 513, 64), False),  # a single query row (the second consumer has no row)
    ((1, 2, 2, 257, 257, 64), True),
    ((1, 2, 2, 400, 900, 256), True),
    ((2, 2, 1, 640, 640, 256), False),
    ((1, 2, 2, 96, 40, 80), True),  # padded head dim, keys shorter than one tile
    ((1, 2, 2, 700, 200, 256), True),  # pipelined P·V: query blocks whose rows see no key
    ((2, 2, 2, 300, 300, 256), False),  # pipelined P·V: an odd last tile as a pair masked above
])
@pytest.mark.parametrize("num_stages", [4, 6])
def test_hopper_kernel_matches_the_emulation_of_its_softmax_steps(gen, recipe, shape, causal, num_stages):
    _assert_hopper_kernel_matches_its_emulation(gen, recipe, shape, causal, num_stages=num_stages)


@needs_hopper
@pytest.mark.parametrize("recipe", ["e4m3", "int8-hadamard-vsmooth"])
@pytest.mark.parametrize(("shape", "causal"), [
    ((2, 4, 2, 300, 1000, 128), True),  # blocks of different key counts, GQA
    ((1, 3, 3, 1000, 300, 128), True),  # blocks whose rows see no key
    ((2, 2, 2, 777, 777, 128), False),  # an odd number of key tiles a block
    ((1, 3, 3, 400, 900, 256), True),
    ((1, 3, 3, 700, 200, 256), True),  # blocks whose rows see no key, pipelined P·V
])
def test_hopper_kernel_programs_walking_many_query_blocks_match_the_emulation(gen, recipe, shape, causal):
    """Three persistent programs for 12-28 query blocks: the ring, the Q tiles and the consumers' turns run
    on from block to block (at the library's shapes every program walks many blocks)."""
    launch = _assert_hopper_kernel_matches_its_emulation(gen, recipe, shape, causal, num_programs=3)
    assert launch.grid == (3,)


def _assert_hopper_kernel_matches_its_emulation(gen, recipe: str, shape, causal: bool, kind: str = "k_offset",
                                                **launch_options):
    """Run the Gluon kernel on fresh inputs (outputs poisoned with NaN) and hold out and LSE to the float64
    emulation of its softmax steps; returns the launch. Both ways of summing P's rows run: with
    ``exact_lse`` output and LSE against the emulation with fp32 row sums; on the tensor cores against the
    emulation with the row sums of rounded P, the LSE only with INT8 Q·Kᵀ. E4M3 Q·Kᵀ accumulates in
    reduced precision, and a score an ulp off can move a weight across one of E4M3's 6-12 % rounding
    steps: that moves the sum of rounded weights (its LSE up to 0.015 from the emulation's on the H200,
    fp32 sums 0.0003) but not the output, which divides the same weights (docs/perf-notes.md, section 35)."""
    r = RECIPES[recipe]
    q, k, v = make_qkv(gen, shape, dtype=torch.bfloat16, device="cuda", kind=kind)
    qkv = quantize_qkv(q, k, v, r)
    b, hq, sq, d = q.shape
    kwargs = dict(causal=causal, softmax_scale=d**-0.5, p_scale=r.p_multiplier)
    for exact_lse in (False, True):
        out = torch.full((b, hq, sq, d), float("nan"), device="cuda", dtype=torch.bfloat16)
        lse = torch.full((b, hq, sq), float("nan"), device="cuda")
        launch = hopper_forward_launch(qkv, out, lse, **kwargs, **launch_options, exact_lse=exact_lse)
        launch.run()
        assert not torch.isnan(out).any() and not torch.isnan(lse).any(), "rows the Gluon kernel did not write"
        want, want_lse = attention_emulated(qkv, causal=causal, scale=d**-0.5, p_scale=r.p_multiplier,
                                            block_n=hopper_softmax_keys(qkv.q.shape[-1], qkv.k_block),
                                            row_sum_of_rounded_p=not exact_lse, return_lse=True)
        assert compare(out.double(), want).rel_l2 <= KERNEL_VS_EMULATION, f"exact_lse={exact_lse}"
        seen = want_lse.isfinite()
        assert torch.equal(lse.isfinite(), seen), "rows without visible keys must have lse = -inf, all others finite"
        if exact_lse or qkv.q.dtype == torch.int8:
            torch.testing.assert_close(lse[seen].double(), want_lse[seen], rtol=0, atol=LSE_VS_EMULATION)
    return launch


@needs_hopper
@pytest.mark.parametrize("recipe", ["e4m3", "int8-hadamard-vsmooth"])
def test_hopper_kernel_at_d256_matches_the_emulation_on_v_with_a_large_mean(gen, recipe):
    """V = N(0, 1) plus a per-channel mean of 8·N(0, 1), 4096 keys, D=256: both recipes subtract V's mean
    before quantizing. Without that, P·V's unpromoted FP8 accumulation lands 0.075 from the emulation on the
    H200 (``e4m3`` before it smoothed V, perf-notes §35)."""
    _assert_hopper_kernel_matches_its_emulation(gen, recipe, (1, 2, 2, 4096, 4096, 256), False, kind="v_mean")


@needs_hopper
@pytest.mark.parametrize("head_dim", [128, 256])
def test_hopper_kernel_accumulates_as_the_wgmma_model_says(gen, head_dim):
    """``e4m3`` without V smoothing on V with a large mean, 128 queries × 4096 keys: every P·V product has
    one sign, so how the FP8 wgmma accumulates decides the error. The kernel is far closer to the emulation
    with that accumulation modelled (fp8attn.wgmma_accumulation; P·V promoted per step where the kernel
    promotes it) than to the exact emulation: on the H200 over nine input seeds 0.0003-0.0006 against
    0.0024-0.0026 (D=128) and 0.075 (D=256), at most 0.17× (perf-notes §36). Dropping the D=128 promotion,
    or a change in how the kernel accumulates, shows here. (On N(0,1) inputs the model takes only half to
    two thirds of the kernel's distance from the exact emulation away, 0.28-0.55×: not pinned.)"""
    recipe = dataclasses.replace(RECIPES["e4m3"], smooth_v=False)
    q, k, v = make_qkv(gen, (1, 1, 1, 128, 4096, head_dim), dtype=torch.bfloat16, device="cuda", kind="v_mean")
    qkv = quantize_qkv(q, k, v, recipe)
    out = torch.full(q.shape, float("nan"), device="cuda", dtype=torch.bfloat16)
    lse = torch.full(q.shape[:-1], float("nan"), device="cuda")
    scale = head_dim**-0.5
    launch = hopper_forward_launch(qkv, out, lse, causal=False, softmax_scale=scale, p_scale=recipe.p_multiplier,
                                   exact_lse=True)
    launch.run()
    kwargs = dict(causal=False, scale=scale, p_scale=recipe.p_multiplier,
                  block_n=hopper_softmax_keys(qkv.q.shape[-1], qkv.k_block))
    exact = attention_emulated(qkv, **kwargs)
    modelled = attention_emulated(qkv, pv_accumulate=wgmma_pv(promoted=launch.constexprs["PROMOTE"]),
                                  qk_product=wgmma_qk(), **kwargs)
    to_exact = compare(out.double(), exact).rel_l2
    to_model = compare(out.double(), modelled.to(torch.bfloat16).double()).rel_l2
    assert to_model <= min(0.25 * to_exact, 0.001), f"kernel vs model {to_model:.4f}, vs exact emulation {to_exact:.4f}"


def test_hopper_kernel_rejects_fewer_than_one_program():
    qkv = allocate_quantized(1, 2, 2, 4096, 4096, 128, RECIPES["e4m3"], "meta")
    out = torch.empty(1, 2, 4096, 128, device="meta", dtype=torch.bfloat16)
    lse = torch.empty(1, 2, 4096, device="meta")
    with pytest.raises(ValueError, match="num_programs must be at least 1, got 0"):
        hopper_forward_launch(qkv, out, lse, causal=False, softmax_scale=0.0884, p_scale=1.0, num_programs=0)


@pytest.mark.parametrize(("recipe", "head_dim", "pipelined"), [
    ("e4m3", 256, True), ("int8-hadamard-vsmooth", 256, False), ("e4m3", 128, False)])
def test_hopper_kernel_pipelines_pv_only_for_e4m3_scores_without_promotion(recipe, head_dim, pipelined):
    """P·V issued with the next pair's score matmuls where the accumulator is not promoted (D=256) and Q·Kᵀ
    is E4M3, with a ring of six tiles there (a pair is released one wait later), four elsewhere; the row
    sums on the tensor cores either way unless the caller needs an exact LSE (the default)."""
    qkv = allocate_quantized(1, 2, 2, 4096, 4096, head_dim, RECIPES[recipe], "meta")
    out = torch.empty(1, 2, 4096, head_dim, device="meta", dtype=torch.bfloat16)
    lse = torch.empty(1, 2, 4096, device="meta")
    kwargs = dict(causal=False, softmax_scale=head_dim**-0.5, p_scale=1.0)
    launch = hopper_forward_launch(qkv, out, lse, **kwargs, exact_lse=False)
    assert hopper_pipelines_pv(qkv) == launch.constexprs["PIPELINE_PV"] == pipelined
    assert launch.constexprs["NUM_STAGES"] == (6 if pipelined else 4)
    assert launch.constexprs["ROW_SUM_MMA"]
    assert not hopper_forward_launch(qkv, out, lse, **kwargs).constexprs["ROW_SUM_MMA"]


def test_row_sums_of_rounded_p_make_every_output_row_a_mean_of_v(gen):
    """The Hopper kernel's row sums (P as rounded to E4M3, the P·V weights themselves) normalise those
    weights exactly: with V the same at every key each output row is that V, up to float64 rounding. The
    row sum of fp32 P leaves P's rounding in the output (which is why this test can fail). V is not smoothed:
    smoothing would leave nothing of it but its mean, added after the weights."""
    q, k, v = make_qkv(gen, (1, 2, 2, 96, 300, 64), kind="k_offset")
    v = v[:, :, :1].expand_as(v).contiguous()
    recipe = RECIPES["e4m3-unsmoothed"]
    assert not recipe.smooth_v
    qkv = quantize_emulated(q, k, v, recipe)
    v_dequantized = qkv.v_t.double()[..., 0] * qkv.v_scale.double()  # (B, H, D): every key's V
    want = v_dequantized[:, :, None, :].expand(-1, -1, q.shape[2], -1)[..., : q.shape[-1]]
    kwargs = dict(causal=True, scale=q.shape[-1] ** -0.5, p_scale=recipe.p_multiplier, block_n=128)
    rounded = attention_emulated(qkv, row_sum_of_rounded_p=True, **kwargs)
    fp32 = attention_emulated(qkv, **kwargs)
    torch.testing.assert_close(rounded, want, rtol=1e-12, atol=1e-12)
    assert (fp32 - want).abs().max() > 1e-4


@pytest.mark.parametrize("num_stages", [3, 2])  # odd; one pair, where the consumers' turns would deadlock
def test_hopper_kernel_rejects_a_ring_of_odd_or_fewer_than_four_tiles(num_stages):
    qkv = allocate_quantized(1, 2, 2, 4096, 4096, 256, RECIPES["e4m3"], "meta")
    out = torch.empty(1, 2, 4096, 256, device="meta", dtype=torch.bfloat16)
    lse = torch.empty(1, 2, 4096, device="meta")
    with pytest.raises(ValueError, match=f"num_stages must be even .* >= 4 .* got {num_stages}"):
        hopper_forward_launch(qkv, out, lse, causal=False, softmax_scale=0.0625, p_scale=1.0, num_stages=num_stages)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_hopper_kernel_takes_head_dims_128_and_256_from_its_sequence_length(head_dim, causal):
    """From 1024 tokens without a mask, from 4096 under a causal mask; never at D=64."""
    min_seqlen = HOPPER_MIN_SEQLEN_CAUSAL if causal else HOPPER_MIN_SEQLEN
    for seqlen in (min_seqlen - 1, min_seqlen):
        qkv = allocate_quantized(1, 2, 2, seqlen, seqlen, head_dim, RECIPES["int8-hadamard-vsmooth"], "meta")
        assert hopper_kernel_shape(qkv, causal) == (seqlen == min_seqlen and head_dim != 64), (seqlen, causal)


@needs_hopper
@pytest.mark.parametrize("recipe", ["e4m3", "int8-hadamard-vsmooth"])
@pytest.mark.parametrize("head_dim", [128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_library_runs_long_shapes_on_the_hopper_kernel_and_replays_it(gen, recipe, head_dim, causal):
    """At D=128 and 256 from the kernel's shortest sequence fp8attn.attention picks the Gluon kernel (a call
    without return_lse: the row sums on the tensor cores where it can) where the query blocks fill the GPU
    (with fewer, the Triton kernel splits the keys); the second call replays the recorded launches with TMA
    descriptors rebuilt around the new buffers, and must give exactly what a fresh kernel launch gives on
    the new inputs."""
    r = RECIPES[recipe]
    seqlen = HOPPER_MIN_SEQLEN_CAUSAL if causal else HOPPER_MIN_SEQLEN
    shape = (2, 8, 4, seqlen, seqlen, head_dim)
    assert planned_key_splits(2, 8, 4, seqlen, seqlen, head_dim, r, causal, torch.device("cuda")) == 1
    _PLANS.clear()
    for call in range(2):
        q, k, v = make_qkv(gen, shape, dtype=torch.bfloat16, device="cuda", kind="k_offset")
        out = fp8attn.attention(q, k, v, causal=causal, recipe=recipe)
        assert len(_PLANS) == 1
        qkv = quantize_qkv(q, k, v, r)
        assert hopper_kernel_applies(qkv, causal)
        want = torch.full_like(out, float("nan"))
        lse = torch.empty(q.shape[:3], device="cuda")
        launch = forward_launch(qkv, want, lse, causal=causal, softmax_scale=head_dim**-0.5, p_scale=r.p_multiplier,
                                exact_lse=False)
        assert launch.kernel.__name__ == "_fp8_attention_fwd_ws_kernel"
        launch.run()
        assert torch.equal(out, want), f"call {call}"


@needs_hopper
def test_prequantized_path_replays_the_hopper_kernel(gen):
    """attention_prequantized reads the caller's E4M3 tensors in place where their layout allows: the
    TMA descriptors then point into inputs, which a replay must re-point at the new call's inputs."""
    shape = (1, 2, 2, HOPPER_MIN_SEQLEN_CAUSAL, HOPPER_MIN_SEQLEN_CAUSAL, 256)

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
