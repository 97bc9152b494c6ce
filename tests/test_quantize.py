"""The Triton quantize pass against the recipe's PyTorch emulation, stage by stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from fp8attn import quantize as quantize_module
from fp8attn.fp8 import E4M3, E4M3_MAX, to_int8
from fp8attn.kernels.key_order import from_pv_key_order
from fp8attn.quantize import K_MEAN_TOKENS, k_mean_positions, padded_head_dim, quantize_qkv
from fp8attn.recipe import RECIPES
from fp8attn.reference import quantize_emulated
from tests.conftest import make_qkv

SHAPES = [  # (B, Hq, Hkv, Sq, Sk, D)
    (1, 2, 1, 1, 17, 64),
    (2, 2, 2, 130, 257, 128),
    (1, 4, 2, 257, 130, 256),
    (1, 1, 1, 33, 600, 96),
]


def _steps(x: torch.Tensor) -> torch.Tensor:
    """Integers that count representable steps: int8 values, or the sign-magnitude codes of E4M3 / fp16
    as signed magnitudes (so -0 and +0 are the same step, and neighbours across zero differ by one each)."""
    x = x.cpu()
    if x.dtype == torch.int8:
        return x.int()
    bits, sign = (x.view(torch.int16).int() & 0xFFFF, 0x8000) if x.dtype == torch.float16 else \
        (x.view(torch.uint8).int(), 0x80)
    magnitude = bits & (sign - 1)
    return torch.where(bits & sign != 0, -magnitude, magnitude)


def _codes_agree(got: torch.Tensor, want: torch.Tensor) -> None:
    """Codes equal, except where fp32 rounding (the smoothing mean, the Hadamard rotation's summation
    order) moves a value across a rounding boundary: at most 0.1 % of codes, each by one step."""
    assert got.dtype == want.dtype
    g, w = _steps(got), _steps(want)
    differ = g != w
    where = [tuple(i) for i in differ.nonzero()[:6].tolist()]
    detail = ", ".join(f"{i}: got {got.cpu()[i].float().item():g}, want {want[i].float().item():g}" for i in where)
    assert differ.float().mean() <= 1e-3, f"{int(differ.sum())} of {g.numel()} codes differ, first at {detail}"
    assert ((g - w).abs()[differ] <= 1).all(), f"a code differs by more than one step, first at {detail}"


@pytest.mark.parametrize("recipe", list(RECIPES.values()), ids=list(RECIPES))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_quantize_kernel_matches_emulation(device, gen, poisoned_allocations, shape, recipe):
    q, k, v = make_qkv(gen, shape, device=device, kind="k_offset")
    got = quantize_qkv(q, k, v, recipe)
    want = quantize_emulated(q.cpu(), k.cpu(), v.cpu(), recipe)
    # Scales are amax / 448 (or 127) of the same fp32 values up to summation order: the Hadamard
    # rotation's (a few ulps of the block's values) and the subtracted mean's (a few ulps of the mean,
    # which can be far larger than what is left after smoothing).
    eps = torch.finfo(torch.float32).eps
    for name, mean in (("q_scale", None), ("k_scale", want.k_mean), ("v_scale", want.v_mean)):
        atol = 0.0 if mean is None else 8 * eps * float(mean.abs().max()) / recipe.qk_max
        torch.testing.assert_close(getattr(got, name).cpu(), getattr(want, name), rtol=1e-5, atol=atol, msg=name)
    for name in ("q", "k", "v_t"):
        assert getattr(got, name).shape == getattr(want, name).shape, name
        _codes_agree(getattr(got, name), getattr(want, name))
    for name in ("k_mean", "v_mean"):
        if getattr(recipe, "smooth_" + name[0]):
            torch.testing.assert_close(getattr(got, name).cpu(), getattr(want, name), rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("seqlen_k", [1, 100, 128, 129, 257, 1000, 8191, 2**20 + 3])
def test_k_mean_positions_are_every_key_or_an_even_spread(seqlen_k):
    """K's smoothing mean is over every key up to K_MEAN_TOKENS of them, else over that many spread
    evenly: increasing, gaps of floor or ceil of Sk / n, at most half a gap from either end."""
    positions = k_mean_positions(seqlen_k)
    if seqlen_k <= K_MEAN_TOKENS:
        assert positions.tolist() == list(range(seqlen_k))
        return
    n = K_MEAN_TOKENS
    gaps = positions.diff()
    assert len(positions) == n
    assert (gaps >= seqlen_k // n).all() and (gaps <= -(-seqlen_k // n)).all()
    assert 0 <= positions[0] <= seqlen_k // (2 * n) and seqlen_k - 1 - positions[-1] <= seqlen_k // (2 * n) + 1


@pytest.mark.parametrize("recipe", list(RECIPES.values()), ids=list(RECIPES))
@pytest.mark.parametrize("head_dim", [40, 96])
def test_padding_is_zero_and_scales_are_one(device, gen, poisoned_allocations, recipe, head_dim):
    """Padded keys and V's padded channels are zero (so is Q's and K's padding unless the Hadamard
    rotation spreads the channels). D=96 pads a whole register tile of channels: a constant head dim let
    the compiler fold that tile, and ptxas packed the folded zeros into garbage bytes."""
    q, k, v = make_qkv(gen, (1, 1, 1, 5, 200, head_dim), device=device, kind="k_offset")
    got = quantize_qkv(q, k, v, recipe)
    dp = padded_head_dim(head_dim)
    assert got.k.shape == (1, 1, 256, dp) and got.v_t.shape == (1, 1, dp, 256) and got.q.shape == (1, 1, 5, dp)
    assert (got.k.float()[:, :, 200:] == 0).all()
    v_t = from_pv_key_order(got.v_t, recipe.k_block).float()
    assert (v_t[:, :, head_dim:] == 0).all() and (v_t[..., 200:] == 0).all()
    if not recipe.hadamard:
        assert (got.k.float()[..., head_dim:] == 0).all() and (got.q.float()[..., head_dim:] == 0).all()
    assert (got.v_scale[..., head_dim:] == 1.0).all()


def test_each_block_reaches_448(device, gen):
    """amax/448 scaling: the largest magnitude of every non-zero block maps onto ±448 exactly."""
    q, k, v = make_qkv(gen, (1, 2, 2, 300, 300, 64), device=device)
    got = quantize_qkv(q, k, v, RECIPES["e4m3"])
    q_blocks = torch.nn.functional.pad(got.q.float(), (0, 0, 0, 84)).unflatten(2, (3, 128))
    assert (q_blocks.abs().amax(dim=(-1, -2)) == E4M3_MAX).all()
    assert (got.v_t.float().abs().amax(dim=-1) == E4M3_MAX).all()


def test_all_zero_blocks_get_scale_exactly_one(device, gen):
    q, k, v = make_qkv(gen, (1, 2, 1, 256, 384, 64), device=device)
    q[:, 1] = 0  # a whole head
    q[:, 0, 128:256] = 0  # one block inside a normal head
    k[:, :, 128:256] = 0  # with smoothing off, a zero block of K stays zero
    v[..., 5] = 0  # one channel of V
    got = quantize_qkv(q, k, v, RECIPES["e4m3-unsmoothed"])
    assert got.q_scale[0, 1].eq(1.0).all() and got.q_scale[0, 0, 1].item() == 1.0
    assert got.k_scale[0, 0, 1].item() == 1.0
    assert got.v_scale[0, 0, 5].item() == 1.0
    for x in (got.q, got.k, got.v_t):
        assert x.float().isfinite().all()


@pytest.mark.parametrize("recipe", ["int8-hadamard-vsmooth", "e4m3"])
def test_inline_statistics_match_the_statistics_launch(device, gen, poisoned_allocations, monkeypatch, recipe):
    """Short keys reduce V's statistics inside the quantize launch; long keys in a launch of their own.
    Both must give the same quantized tensors (up to the summation order of the means)."""
    q, k, v = make_qkv(gen, (1, 2, 2, 40, 300, 64), device=device, kind="v_mean")
    r = RECIPES[recipe]
    inline = quantize_qkv(q, k, v, r)
    monkeypatch.setattr(quantize_module, "_INLINE_STATS_MAX_SEQLEN", 0)
    launched = quantize_qkv(q, k, v, r)
    assert inline.v_partials is None and launched.v_partials is not None
    for name in ("q", "k", "v_t"):
        _codes_agree(getattr(inline, name), getattr(launched, name))
    for name in ("k_scale", "v_scale", "v_mean"):
        torch.testing.assert_close(getattr(inline, name), getattr(launched, name), rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("recipe", ["int8", "e4m3"])
@pytest.mark.parametrize(("seqlen_k", "head_dim"), [(300, 64), (100, 128), (77, 256)])
def test_inline_statistics_in_one_load_match_the_loop_over_tiles(
    device, gen, poisoned_allocations, monkeypatch, recipe, seqlen_k, head_dim,
):
    """Inline statistics of a few programs' worth of short keys come from one load of every key (ragged
    lengths: masked rows must stay out of V's max and min); the loop over tiles must give the same tensors."""
    q, k, v = make_qkv(gen, (1, 2, 2, 40, seqlen_k, head_dim), device=device, kind="v_mean")
    r = RECIPES[recipe]
    launches = quantize_module.quantize_launches(q, k, v, r, quantize_module.allocate_quantized(
        1, 2, 2, 40, seqlen_k, head_dim, r, device))
    assert launches[-1].constexprs["ONE_STATS_TILE"]
    one_load = quantize_qkv(q, k, v, r)
    monkeypatch.setattr(quantize_module, "_INLINE_ONE_TILE_ELEMENTS", 0)
    looped = quantize_qkv(q, k, v, r)
    for name in ("q", "k", "v_t"):
        _codes_agree(getattr(one_load, name), getattr(looped, name))
    for name in ("k_scale", "v_scale", "v_mean"):
        torch.testing.assert_close(getattr(one_load, name), getattr(looped, name), rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("recipe", ["int8-hadamard-vsmooth", "e4m3"])
@pytest.mark.parametrize("seqlen_k", [300, 700], ids=["inline_stats", "stats_launch"])
@pytest.mark.parametrize(("tiles_per_program", "head_dim"), [(2, 64), (3, 64), (2, 256)])
def test_programs_taking_several_tiles_write_what_one_tile_programs_write(
    device, gen, poisoned_allocations, recipe, seqlen_k, tiles_per_program, head_dim,
):
    """A quantize program takes several consecutive tiles of one head (a head's last program fewer):
    the tensors are bit for bit those of one program per tile, including a ragged last group (at D=256
    the Hadamard recipes rotate in column halves and Q tiles hold 64 tokens)."""
    q, k, v = make_qkv(gen, (2, 2, 1, 300, seqlen_k, head_dim), device=device, kind="k_offset")
    r = RECIPES[recipe]
    one = quantize_qkv(q, k, v, r, tiles_per_program=1)
    several = quantize_qkv(q, k, v, r, tiles_per_program=tiles_per_program)
    for name in ("q", "k", "v_t", "q_scale", "k_scale", "v_scale", "k_mean", "v_mean"):
        a, b = getattr(one, name), getattr(several, name)
        if a is not None:
            assert torch.equal(a.view(torch.uint8) if a.dtype == E4M3 else a, b.view(torch.uint8) if b.dtype == E4M3
                               else b), name


def test_tiles_per_program_must_be_positive(gen):
    q, k, v = make_qkv(gen, (1, 1, 1, 8, 8, 64))
    with pytest.raises(ValueError, match="tiles_per_program must be at least 1, got 0"):
        quantize_qkv(q, k, v, RECIPES["e4m3"], tiles_per_program=0)


@triton.jit
def _to_int8_kernel(x_ptr, inv_ptr, out_ptr, N: tl.constexpr, INTERPRETED: tl.constexpr):
    offs = tl.arange(0, N)
    x8 = quantize_module._to_8bit(tl.load(x_ptr + offs), tl.load(inv_ptr + offs), True, INTERPRETED)
    tl.store(out_ptr + offs, x8)


def test_int8_rounding_is_the_emulations(device):
    """Ties go to even, the product is rounded once (a product just above a tie whose fp32 rounding
    would land on the tie goes up), and the extremes an amax-derived scale allows reach ±127: the
    kernel's conversion against :func:`fp8attn.fp8.to_int8`."""
    f32 = np.float32
    above_tie = float(np.nextafter(f32(2.5), f32(3)))  # times 1 - 2**-24: 2.5 + 1.5 * 2**-24 exactly
    below_one = float(np.nextafter(f32(1), f32(0)))
    pairs = [(0.0, 1.0), (-0.0, 1.0), (0.5, 1.0), (-0.5, 1.0), (1.5, 1.0), (-1.5, 1.0), (2.5, 1.0), (-2.5, 1.0),
             (126.5, 1.0), (-126.5, 1.0), (127.4, 1.0), (-127.4, 1.0), (above_tie, below_one),
             (-above_tie, below_one), (3.0, 0.25), (-3.0, 0.25), (5.0, 0.1), (1.0, 127.0), (-1.0, 127.0)]
    x, inv = (torch.tensor([p[i] for p in pairs] + [0.0] * (32 - len(pairs)), dtype=torch.float32, device=device)
              for i in (0, 1))
    out = torch.empty(32, dtype=torch.int8, device=device)
    _to_int8_kernel[(1,)](x, inv, out, N=32, INTERPRETED=device == "cpu")
    want = to_int8(x.cpu(), inv.cpu())
    assert want[12].item() == 3 and (x[12] * inv[12]).item() == 2.5, "the edge case no longer tests one rounding"
    assert out.cpu().tolist() == want.tolist()
