"""The forward kernel alone: quantized inputs from the emulation, so only the kernel's arithmetic differs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fp8attn.kernels.attention_fwd import (
    MAX_KEY_SPLITS,
    MIN_TILES_PER_KEY_SPLIT,
    MIN_TILES_PER_KEY_SPLIT_PARTIAL_BLOCK,
    PREFILL_QUERIES,
    SHORT_KEYS,
    attention_forward,
    forward_config,
    key_splits,
    packs_query_heads,
    planned_key_splits,
    split_keys,
)
from fp8attn.recipe import DEFAULT_RECIPE, RECIPES
from fp8attn.reference import attention_emulated, exact, p_rounding_slack, quantize_emulated, round_p_operand
from tests.conftest import INTERPRETED, make_qkv

# The emulation accumulates exactly. The interpreter's kernel differs from it by its fp32 arithmetic
# (~1e-6 on P), by the P entries that lie that close to a rounding boundary of E4M3 and round to the
# other neighbour there (what they can move is bounded element by element by
# fp8attn.reference.p_rounding_slack and taken off first), and by the output's rounding to fp16
# (rel-L2 ~2e-4). Over 40 seeds of every case of the first test below what was left beyond the slack
# was 1.7e-4 to 2.1e-4: the output's rounding alone (docs/measurements/p_rounding_slack/). One entry
# on a dominant key had moved a 64-row output 0.0036 from its emulation (README, Known issues).
# On Hopper, FP8 wgmma also accumulates in reduced precision: on an H100 that alone moved the output by
# 0.3-0.8 % (docs/measurements/promotion_study_h100_run2.json: forcing fp32 promotion every 32 products
# brought it to 0.22-0.29 %). Both bounds stay far below the recipe's own error (~5 %), and a kernel
# bug (a wrong scale, tile or mask) moves the output by more.
KERNEL_VS_EMULATION = 5e-4 if INTERPRETED else 1e-2
LSE_VS_EMULATION = 1e-4 if INTERPRETED else 2e-3


@dataclasses.dataclass
class _KernelRun:
    out: torch.Tensor        # (B, Hq, Sq, D) the kernel's output, on the CPU
    lse: torch.Tensor        # (B, Hq, Sq) its log-sum-exp
    want: torch.Tensor       # (B, Hq, Sq, D) float64, the emulation's output
    want_lse: torch.Tensor   # (B, Hq, Sq) float64
    slack: torch.Tensor      # (B, Hq, Sq, D) float64, p_rounding_slack
    qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # the unquantized inputs

    def distance_beyond_p_rounding(self) -> float:
        """rel-L2 from the emulation of what is left of the kernel's error where each element's
        P-rounding slack is taken off."""
        beyond = ((self.out.double() - self.want).abs() - self.slack).clamp_min(0)
        return (beyond.norm() / self.want.norm()).item()

    def assert_matches_emulation(self, causal: bool) -> None:
        """Every element written and within KERNEL_VS_EMULATION beyond the P-rounding slack; rows that see no
        key zero with an LSE of -inf, every other LSE within LSE_VS_EMULATION of the emulation's."""
        assert self.out.isfinite().all(), "unwritten (NaN-poisoned) or non-finite output"
        distance = self.distance_beyond_p_rounding()
        assert distance <= KERNEL_VS_EMULATION, f"{distance:.2e} beyond the P-rounding slack"
        _, lse_exact = exact(*self.qkv, causal=causal, return_lse=True)
        seen = lse_exact.isfinite()
        assert torch.equal(self.lse.isfinite(), seen), "rows without visible keys need lse = -inf, all others finite"
        assert (self.out[~seen] == 0).all()
        torch.testing.assert_close(self.lse[seen].double(), self.want_lse[seen], rtol=0, atol=LSE_VS_EMULATION)


def _run(device, gen, shape, causal, promote_every=None, dtype=torch.float16, recipe=DEFAULT_RECIPE,
         splits=1, config_keys=None) -> _KernelRun:
    """The kernel with the library's tiles for this shape, or for ``config_keys`` keys, against the emulation."""
    q, k, v = make_qkv(gen, shape, dtype=dtype)
    qkv = quantize_emulated(q, k, v, recipe)
    qkv_dev = dataclasses.replace(qkv, **{f: getattr(qkv, f).to(device) for f in
                                          ("q", "k", "v_t", "q_scale", "k_scale", "v_scale", "v_mean")
                                          if getattr(qkv, f) is not None})
    cfg = forward_config(qkv.q.shape[-1], qkv.k_block, causal, pv_fp16=recipe.pv_format == "fp16",
                         qk_int8=recipe.qk_format == "int8", seqlen_k=config_keys or qkv.seqlen_k,
                         v_smoothed=qkv.v_mean is not None, seqlen_q=qkv.seqlen_q)
    if promote_every is not None:
        cfg = dataclasses.replace(cfg, promote_every=promote_every)
    kwargs = dict(causal=causal, scale=shape[-1] ** -0.5, p_scale=recipe.p_multiplier, block_n=cfg.block_n,
                  key_split=split_keys(qkv.seqlen_k, cfg.block_n, splits) if splits > 1 else None)
    out, lse = attention_forward(qkv_dev, causal=causal, softmax_scale=kwargs["scale"], p_scale=recipe.p_multiplier,
                                 out_dtype=dtype, config=cfg, key_splits=splits)
    want, want_lse = attention_emulated(qkv, return_lse=True, **kwargs)
    return _KernelRun(out.cpu(), lse.cpu(), want, want_lse, p_rounding_slack(qkv, **kwargs), (q, k, v))


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(1, 2, 2, 130, 257, 64), (1, 2, 1, 257, 130, 128), (1, 1, 1, 64, 64, 256)], ids=str)
def test_kernel_matches_emulation_on_the_same_quantized_inputs(device, gen, poisoned_allocations, shape, causal,
                                                                recipe):
    _run(device, gen, shape, causal, recipe=RECIPES[recipe]).assert_matches_emulation(causal)


@pytest.mark.parametrize("recipe", ["int8-hadamard-vsmooth", "e4m3"])
@pytest.mark.parametrize(("shape", "causal"), [
    ((1, 2, 2, 130, 257, 64), True),  # D=64 under a causal mask with 128-key tiles
    ((1, 2, 1, 100, 200, 256), False),  # D=256 without a mask on two warpgroups (E4M3)
    ((1, 2, 1, 257, 130, 128), True),  # D=128, V smoothed: P·V promoted every 128-key tile
], ids=str)
def test_kernel_matches_emulation_with_the_long_keys_tiles(device, gen, poisoned_allocations, shape, causal, recipe):
    """The tiles :func:`forward_config` gives past SHORT_KEYS keys, run on short keys (the file's other shapes
    are short: at D=64 causal, D=256 and, for recipes that smooth V, D=128 they run the short keys' tiles)."""
    run = _run(device, gen, shape, causal, recipe=RECIPES[recipe], config_keys=SHORT_KEYS + 1)
    run.assert_matches_emulation(causal)


def test_short_keys_take_64_key_tiles_at_d64_causal_and_one_warpgroup_at_d256():
    """forward_config's short-key rule (docs/perf-notes.md, section 48), and nothing else changes with the length."""
    for head_dim, causal in [(32, True), (64, True)]:
        assert forward_config(head_dim, 128, causal, seqlen_k=SHORT_KEYS).block_n == 64
        assert forward_config(head_dim, 128, causal, seqlen_k=SHORT_KEYS + 1).block_n == 128
        assert forward_config(head_dim, 128, causal).block_n == 128  # no length: the long keys' tiles
        assert forward_config(head_dim, 32, causal, seqlen_k=100).block_n == 32  # never wider than k_block
    short = forward_config(256, 128, seqlen_k=SHORT_KEYS)
    assert (short.block_m, short.num_warps) == (64, 4)
    assert forward_config(256, 128, seqlen_k=SHORT_KEYS + 1) == forward_config(256, 128)
    assert forward_config(256, 128, pv_fp16=True, seqlen_k=100).num_warps == 8  # fp16 P·V spills on one warpgroup
    for head_dim, causal, qk_int8 in [(64, False, False), (128, True, True), (128, False, False), (256, True, True)]:
        assert (forward_config(head_dim, 128, causal, qk_int8=qk_int8, seqlen_k=100)
                == forward_config(head_dim, 128, causal, qk_int8=qk_int8))


def test_short_keys_with_smoothed_v_run_d128_unpromoted_on_64_key_tiles():
    """forward_config at D=128 with V smoothed, at most SHORT_KEYS keys and at least PREFILL_QUERIES queries
    (perf-notes section 49): 64-key tiles, P·V in the wgmma's accumulator; with V not smoothed, fp16 P·V, longer
    keys, fewer queries (decoding) or another head dim, nothing changes."""
    prefill = dict(seqlen_k=SHORT_KEYS, seqlen_q=PREFILL_QUERIES)
    for causal in (False, True):
        for qk_int8 in (False, True):
            short = forward_config(128, 128, causal, qk_int8=qk_int8, v_smoothed=True, **prefill)
            long_keys = forward_config(128, 128, causal, qk_int8=qk_int8)
            assert (short.block_n, short.promote_every) == (64, 0)
            assert (long_keys.block_n, long_keys.promote_every) == (128, 1)
            assert dataclasses.replace(short, block_n=128, promote_every=1) == long_keys
            assert forward_config(128, 128, causal, qk_int8=qk_int8, **prefill) == long_keys
            for keys, queries in [(SHORT_KEYS + 1, PREFILL_QUERIES), (SHORT_KEYS, PREFILL_QUERIES - 1)]:
                other = forward_config(128, 128, causal, qk_int8=qk_int8, seqlen_k=keys, seqlen_q=queries,
                                       v_smoothed=True)
                assert other == long_keys
        assert (forward_config(128, 128, causal, pv_fp16=True, v_smoothed=True, **prefill)
                == forward_config(128, 128, causal, pv_fp16=True))
        for head_dim in (64, 256):
            assert (forward_config(head_dim, 128, causal, v_smoothed=True, **prefill)
                    == forward_config(head_dim, 128, causal, **prefill))


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize(("shape", "causal", "splits"), [
    ((1, 4, 2, 1, 1000, 64), False, 3),     # decoding: one query row, grouped heads, a ragged last range
    ((1, 2, 2, 200, 330, 64), True, 2),     # causal: the first query block's rows see none of the second range
    ((1, 1, 1, 400, 300, 128), True, 3),    # Sq > Sk: rows that see no key in any range, or in the last two
    ((1, 2, 1, 5, 300, 256), False, 5),     # D=256: 64-key tiles, one a range, the last one ragged
], ids=str)
def test_split_keys_match_the_emulation_of_their_ranges(device, gen, poisoned_allocations, shape, causal, splits,
                                                        recipe):
    """Each key range runs the online softmax from its own running maximum (so P rounds against another
    maximum than in one pass) and the merge weighs the ranges by their LSE: the emulation does the same."""
    _run(device, gen, shape, causal, recipe=RECIPES[recipe], splits=splits).assert_matches_emulation(causal)


@pytest.mark.parametrize("recipe", ["int8-hadamard-vsmooth", "e4m3"])
@pytest.mark.parametrize(("shape", "causal"), [
    ((1, 6, 2, 20, 300, 128), True),   # three query heads a KV head: 60 rows, one block, causal per position
    ((2, 8, 2, 40, 200, 64), False),   # four: 160 rows, a ragged third block
    ((1, 4, 1, 30, 20, 64), True),     # Sq > Sk: the first ten positions of every head see no key
], ids=str)
def test_packed_query_heads_match_the_emulation(device, gen, poisoned_allocations, shape, causal, recipe):
    """Fewer query positions than a block's rows, grouped heads: the query heads of a KV head share a block
    (rows of several heads, masks per row's position), which changes no row's arithmetic."""
    _, hq, hkv, sq, _, d = shape
    assert packs_query_heads(hq, hkv, sq, forward_config(d, RECIPES[recipe].k_block).block_m)
    _run(device, gen, shape, causal, recipe=RECIPES[recipe]).assert_matches_emulation(causal)


@pytest.mark.parametrize("min_tiles", [MIN_TILES_PER_KEY_SPLIT, MIN_TILES_PER_KEY_SPLIT_PARTIAL_BLOCK])
def test_key_splits_fill_one_wave_with_ranges_of_whole_tiles_and_none_empty(min_tiles):
    slots = 264  # 132 SMs, two programs each
    for programs in range(1, 300, 7):
        for tiles in range(1, 600, 13):
            splits = key_splits(programs, tiles, slots, min_tiles)
            if 2 * programs > slots or tiles < 2 * min_tiles:
                assert splits == 1, (programs, tiles)
                continue
            assert 2 <= splits <= MAX_KEY_SPLITS and programs * splits <= slots, (programs, tiles)
            per_range = -(-tiles // splits)
            assert per_range >= min_tiles and (splits - 1) * per_range < tiles, (programs, tiles)
    # 32 programs of 128 tiles: decoding at B1 H32 Sq1 Sk16k D128 with one program a query head (before GQA
    # packing, nineteenth session), whose fastest split on the H200 was 8; at B4 (128 programs) it was 2, and
    # three ranges 1.3x slower.
    assert key_splits(32, 128, slots) == 8
    assert key_splits(128, 128, slots) == 2
    assert key_splits(64, 4, slots) == 1  # the mission shape (B1 H8 S512 D64): four tiles a query block


def test_partial_query_blocks_split_their_keys_in_shorter_ranges():
    """Decoding (a block holding the four query heads of a KV head at one position) takes ranges of two tiles;
    full blocks (16 positions of four heads, the mission shape) keep four."""
    def planned(b, hq, hkv, sq, sk, d, causal=False, recipe="e4m3-unsmoothed"):  # V unsmoothed: 128-key tiles
        return planned_key_splits(b, hq, hkv, sq, sk, d, RECIPES[recipe], causal, torch.device("cpu"))

    assert planned(1, 32, 8, 1, 1024, 128) == 4  # 8 tiles: four ranges of two (two of four before)
    assert planned(1, 32, 8, 1, 1024, 128, recipe="e4m3") == 4  # V smoothed: decoding keeps 128-key tiles
    assert planned(1, 32, 8, 1, 4096, 128) == 16  # 32 tiles: sixteen ranges of two (eight of four before)
    assert planned(1, 32, 8, 16, 8192, 128, causal=True) == 16  # 64 rows, a full block: ranges of four
    assert planned(1, 8, 8, 512, 512, 64) == 1  # the mission shape: four tiles a query block, unsplit


@pytest.mark.parametrize("promote_every", [0, 1, 2, 3])
def test_every_pv_promotion_interval_computes_the_same_function(device, gen, promote_every):
    run = _run(device, gen, (1, 2, 2, 100, 700, 64), causal=True, promote_every=promote_every)
    distance = run.distance_beyond_p_rounding()
    assert distance <= KERNEL_VS_EMULATION, f"{distance:.2e} beyond the P-rounding slack"


def test_rows_without_visible_keys_are_zero(device, gen, poisoned_allocations):
    """Causal with Sq > Sk: query i sees keys j <= i + Sk - Sq, so the first Sq - Sk rows see none."""
    run = _run(device, gen, (1, 1, 1, 200, 70, 64), causal=True)
    assert (run.out[:, :, :130] == 0).all() and (run.lse[:, :, :130] == float("-inf")).all()
    assert (run.out[:, :, 130:].abs().sum(-1) > 0).all() and run.lse[:, :, 130:].isfinite().all()


def test_emulation_takes_its_pv_step_from_pv_accumulate(gen):
    """``attention_emulated(pv_accumulate=...)`` (the tensor cores' accumulation modelled,
    fp8attn.wgmma_accumulation) replaces exactly the P·V step: the exact step passed in gives
    the same bits, and a step that drops the products leaves only the smoothed V's mean."""
    q, k, v = make_qkv(gen, (1, 2, 1, 40, 300, 64), kind="v_mean")
    qkv = quantize_emulated(q, k, v, RECIPES["int8-hadamard-vsmooth"])
    kwargs = dict(causal=True, scale=64**-0.5, p_scale=RECIPES["int8-hadamard-vsmooth"].p_multiplier)
    want = attention_emulated(qkv, **kwargs)

    def exact_step(acc, alpha, p, v_tile):
        return acc * alpha[..., None] + p @ v_tile

    def no_products(acc, alpha, p, v_tile):
        return acc * alpha[..., None]

    assert torch.equal(attention_emulated(qkv, pv_accumulate=exact_step, **kwargs), want)
    without = attention_emulated(qkv, pv_accumulate=no_products, **kwargs)
    v_mean = qkv.v_mean.double()[:, :, None, :64].repeat_interleave(2, dim=1).expand_as(want)
    torch.testing.assert_close(without, v_mean, rtol=0, atol=0)
    assert (want - v_mean).abs().max() > 0.1


@pytest.mark.parametrize("key_split", [None, 128])
@pytest.mark.parametrize("recipe", ["e4m3", "int8-fp16pv"])
def test_p_rounding_slack_bounds_what_p_within_its_noise_moves(gen, recipe, key_split):
    """Every P moved by less than ``relative_noise`` before its rounding (a kernel's fp32 P) gives an
    emulation within :func:`p_rounding_slack` of the float64 one, element by element. The noise here
    is wide (2⁻⁸) so that many entries do round to the other neighbour and the bound is exercised."""
    noise = 2.0**-8
    q, k, v = make_qkv(gen, (1, 2, 1, 70, 300, 64))
    qkv = quantize_emulated(q, k, v, RECIPES[recipe])
    kwargs = dict(causal=True, scale=64**-0.5, p_scale=RECIPES[recipe].p_multiplier, block_n=64, key_split=key_split)
    want = attention_emulated(qkv, **kwargs)

    def perturbed_rounding(p_scaled):
        wiggle = 1 + 0.9 * noise * (2 * torch.rand(p_scaled.shape, generator=gen, dtype=torch.float64) - 1)
        return round_p_operand((p_scaled.double() * wiggle).float(), qkv.v_t.dtype)

    moved = attention_emulated(qkv, p_round=perturbed_rounding, **kwargs)
    slack = p_rounding_slack(qkv, relative_noise=noise, **kwargs)
    assert (moved != want).any(), "no entry rounded to its other neighbour: the test exercised nothing"
    assert ((moved - want).abs() <= slack * (1 + 1e-9)).all()
