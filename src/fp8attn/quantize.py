"""Quantization of fp16/bf16 Q, K, V into the layout the attention kernel reads.

Two launches, or one for short keys:

1. ``_v_stats_kernel`` reduces, per channel over chunks of tokens, V's sum, max and min (for V
   smoothing and V's scale), one partial per chunk (deterministic: no atomics).
2. ``_quantize_qkv_kernel`` is one launch with programs for Q, for K and for V, each taking
   ``tiles_per_program`` consecutive tiles of one head. A Q program rotates (with the recipe's
   Hadamard option) and scales tiles of query tokens in blocks of ``q_block``; a K program takes the
   mean of ``K_MEAN_TOKENS`` of its head's keys (:func:`k_mean_positions`), then rotates, smooths and
   scales blocks of ``k_block`` keys; a V program sums its head's partials once, then scales the same
   tokens of V and writes them transposed (``[D, Sk]``), the K-major layout P·V needs on Hopper. For
   short keys (``_inline_stats``) each V program reduces its head's statistics itself and the first
   launch is skipped: at 512 keys the statistics launch cost more than the work it saved.

The kernel layout (:class:`QuantizedQKV`) pads the head dimension to a power of two and the key
length to a multiple of ``k_block``, with zeros, so the attention kernel's K/V loads need no masks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl
from triton import knobs

from fp8attn.fp8 import E4M3, E4M3_MAX
from fp8attn.kernels.grid_dependency import programmatic_launch, signal_next_grid, wait_for_previous_grid
from fp8attn.kernels.key_order import pv_key_order
from fp8attn.kernels.launch import Launch
from fp8attn.kernels.sizes import cdiv, next_power_of_2, sm_count
from fp8attn.recipe import MAX_Q_BLOCK, Recipe

# Tokens one stats program reduces (see _stats_chunk); the partials it writes are summed by each K and
# V program of the quantize launch.
_STATS_MIN_CHUNK = 256
_STATS_MAX_CHUNKS = 32
_STATS_TARGET_PROGRAMS = 256  # about two per SM of an H100 (perf-notes §17)
_STATS_TILE_ELEMENTS = 4096  # tokens per stats tile = this / padded head dim (128 registers at 4 warps, no spills)
_NUM_STATS = 3  # V sum, V max, V min
K_MEAN_TOKENS = 128  # keys whose mean smooths K (k_mean_positions); a power of two (_k_sample_mean)
K_MEAN_TOKENS_C: tl.constexpr = tl.constexpr(K_MEAN_TOKENS)
# Keys this short (and few enough in all) are reduced inside the quantize launch, saving a launch.
_INLINE_STATS_MAX_SEQLEN = 512
_INLINE_STATS_MAX_ELEMENTS = 2**22
# Inline statistics over at most this many elements of a head (Sk * padded D) take all of them in one load
# (512 keys at D=64: 128 fp16 values, 64 registers, a thread at 8 warps) instead of a loop over tiles (perf-notes §43).
_INLINE_ONE_TILE_ELEMENTS = 2**15
_STATS_STAGES = 3  # the statistics loop's pipeline depth
_STATS_WARPS = 4  # faster than 8 at every head dim (perf-notes §17)
_TARGET_PROGRAMS = 384  # quantize programs to aim for: about three per SM of an H100
_MAX_TILES_PER_PROGRAM = 8
NUM_STATS: tl.constexpr = tl.constexpr(_NUM_STATS)
# 1.5 * 2**m, m the format's mantissa bits: for |x| < 2**(m-1), x + this lies in [2**m, 2**(m+1)), where
# floats are the integers, so the sum rounds x to the nearest integer (ties to even) and holds it in its
# low mantissa bits (see _to_8bit).
_ROUND_MAGIC_F32: tl.constexpr = tl.constexpr(1.5 * 2**23)
_ROUND_MAGIC_F64: tl.constexpr = tl.constexpr(1.5 * 2**52)
E4M3_MAX_F32: tl.constexpr = tl.constexpr(E4M3_MAX)


@dataclass(frozen=True)
class QuantizedQKV:
    """Q, K, V in 8 bits (V in fp16 for fp16-P·V recipes) plus the fp32 scales that undo it.

    Shapes (``Dp`` = head dim padded to a power of two, ``Skp`` = Sk padded to ``k_block``):
        q: ``(B, Hq, Sq, Dp)`` E4M3 or int8; q_scale: ``(B, Hq, ceil(Sq / q_block))``.
        k: ``(B, Hkv, Skp, Dp)`` like q, smoothed when the recipe says so; k_scale: ``(B, Hkv, Skp / k_block)``.
        v_t: ``(B, Hkv, Dp, Skp)`` E4M3 or fp16, V transposed, E4M3 with its keys in P·V operand order
            (:mod:`fp8attn.kernels.key_order`); v_scale: ``(B, Hkv, Dp)``.
        k_mean, v_mean: ``(B, Hkv, Dp)`` fp32, what was subtracted from K (rotated with it) and V,
            or None where the recipe does not smooth.
    Q and K are Hadamard-rotated when the recipe says so. Padding is zero in the quantized tensors
    and 1.0 in the scales.

    v_partials: ``(B·Hkv, chunks, 3, Dp)`` fp32, the statistics pass's per-chunk V sum, V max and
    V min. workspace: the one byte buffer every tensor above is a view of, when they were
    allocated together (:func:`allocate_quantized`); None for caller-provided tensors. extra: buffers
    a caller asked to carve from the same allocation (the forward's ``lse``), by name.
    """

    q: torch.Tensor
    k: torch.Tensor
    v_t: torch.Tensor
    q_scale: torch.Tensor
    k_scale: torch.Tensor
    v_scale: torch.Tensor
    k_mean: torch.Tensor | None
    v_mean: torch.Tensor | None
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    q_block: int
    k_block: int
    v_partials: torch.Tensor | None = None
    workspace: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def padded_head_dim(head_dim: int) -> int:
    """The power-of-two width the kernels compute on (at least 32, the FP8 wgmma K step)."""
    return max(32, next_power_of_2(head_dim))


@functools.cache
def hadamard_matrix(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The ``(n, n)`` Sylvester Hadamard matrix of ±1 (``n`` a power of two); H·Hᵀ = n·I."""
    h = torch.ones((1, 1), dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)])
    return h.to(dtype=dtype, device=device)


def k_mean_positions(seqlen_k: int) -> torch.Tensor:
    """The tokens whose mean smooths K (``Recipe.smooth_k``): every token of short keys, else
    ``K_MEAN_TOKENS`` of them spread evenly, token ``(2i + 1)·Sk // (2n)`` for ``i < n``.

    Any per-channel vector subtracted from every key is exact (each query's scores shift by one
    constant), so a sample's mean serves as well as the full one; it spares the statistics pass K's
    read (docs/perf-notes.md, section 47). ``_k_sample_mean`` computes the same positions in the kernel.
    """
    n = min(seqlen_k, K_MEAN_TOKENS)
    return (2 * torch.arange(n) + 1) * seqlen_k // (2 * n)


def hadamard_scale(head_dim_pad: int) -> float:
    """The fp32 factor that makes the rotation orthogonal: 1/sqrt(Dp)."""
    return float(torch.tensor(1.0 / math.sqrt(head_dim_pad), dtype=torch.float32))


@triton.jit
def _add_token_tile(v_sum, v_max, v_min, v_base, stride_vt, offs_t, mask, ROWS_MASKED: tl.constexpr):
    """The running statistics with one ``[TILE, Dp]`` tile of V's tokens ``offs_t`` added (``mask``: the
    elements to read; ROWS_MASKED: some tokens are past the end, kept out of the max and min)."""
    v = tl.load(v_base + offs_t[:, None] * stride_vt, mask=mask, other=0.0).to(tl.float32)
    v_sum += v
    if ROWS_MASKED:
        v_max = tl.maximum(v_max, tl.where(mask, v, float("-inf")))
        v_min = tl.minimum(v_min, tl.where(mask, v, float("inf")))
    else:  # padded channels read 0 here; the caller zeroes their max and min anyway
        v_max = tl.maximum(v_max, v)
        v_min = tl.minimum(v_min, v)
    return v_sum, v_max, v_min


@triton.jit
def _v_token_stats(
    v_base, stride_vt, start, end, d_ok, TILE: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """V's sum, max and min per channel over tokens [start, end); max and min are 0 in padded channels.

    The loop combines whole tiles element-wise and reduces across tokens once at the end: a
    reduction along the token axis crosses warps (shared memory and a barrier), too slow per tile.
    Its loads are pipelined (``NUM_STAGES``): a loop without a dot is pipelined only when asked.
    Whole tiles need no token mask; a last partial tile is added after the loop.
    """
    v_sum = tl.zeros([TILE, HEAD_DIM_PAD], dtype=tl.float32)
    v_max = tl.full([TILE, HEAD_DIM_PAD], float("-inf"), dtype=tl.float32)
    v_min = tl.full([TILE, HEAD_DIM_PAD], float("inf"), dtype=tl.float32)
    whole_end = start + (end - start) // TILE * TILE
    for tile_start in tl.range(start, whole_end, TILE, num_stages=NUM_STAGES):
        v_sum, v_max, v_min = _add_token_tile(v_sum, v_max, v_min, v_base, stride_vt, tile_start + tl.arange(0, TILE),
                                              d_ok[None, :], False)
    if whole_end < end:
        offs_t = whole_end + tl.arange(0, TILE)
        v_sum, v_max, v_min = _add_token_tile(v_sum, v_max, v_min, v_base, stride_vt, offs_t,
                                              (offs_t < end)[:, None] & d_ok[None, :], True)
    v_max = tl.where(d_ok, tl.max(v_max, axis=0), 0.0)
    v_min = tl.where(d_ok, tl.min(v_min, axis=0), 0.0)
    return tl.sum(v_sum, axis=0), v_max, v_min


@triton.jit
def _v_token_stats_one_tile(v_base, stride_vt, end, d_ok, TILE: tl.constexpr):
    """:func:`_v_token_stats` over tokens [0, end) with ``end <= TILE``: every token in one load, so the
    reduction waits for one memory round trip instead of a loop's chain of them (short keys, perf-notes §43)."""
    offs_t = tl.arange(0, TILE)
    row_ok = offs_t < end
    v = tl.load(v_base + offs_t[:, None] * stride_vt, mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    v_max = tl.where(d_ok, tl.max(tl.where(row_ok[:, None], v, float("-inf")), axis=0), 0.0)
    v_min = tl.where(d_ok, tl.min(tl.where(row_ok[:, None], v, float("inf")), axis=0), 0.0)
    return tl.sum(v, axis=0), v_max, v_min


@triton.jit
def _v_stats_kernel(
    v_ptr, stats_ptr, seqlen_k, num_kv_heads, head_dim, stride_vb, stride_vh, stride_vt, stride_vd,
    CHUNK: tl.constexpr, TILE: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    NUM_STAGES: tl.constexpr, GRID_DEPENDENCY: tl.constexpr,
):
    signal_next_grid(GRID_DEPENDENCY)  # the quantize launch's Q and K programs need nothing from this one
    chunk = tl.program_id(0)
    num_chunks = tl.num_programs(0)
    bh = tl.program_id(1)
    b = bh // num_kv_heads
    h = bh % num_kv_heads
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < head_dim
    v_base = v_ptr + b * stride_vb + h * stride_vh + offs_d[None, :] * stride_vd
    end = tl.minimum((chunk + 1) * CHUNK, seqlen_k)
    v_sum, v_max, v_min = _v_token_stats(v_base, stride_vt, chunk * CHUNK, end, d_ok, TILE, HEAD_DIM_PAD, NUM_STAGES)
    out = stats_ptr + ((bh * num_chunks + chunk) * NUM_STATS) * HEAD_DIM_PAD + offs_d
    tl.store(out, v_sum)
    tl.store(out + HEAD_DIM_PAD, v_max)
    tl.store(out + 2 * HEAD_DIM_PAD, v_min)


@triton.jit
def _scale_from_amax(amax, QMAX: tl.constexpr):
    """amax / QMAX in fp32, exactly 1.0 for an all-zero block (mirrors fp8attn.fp8.scale_from_amax)."""
    return tl.where(amax > 0, tl.math.div_rn(amax, QMAX), 1.0)


@triton.jit
def _to_8bit(x, inv_scale, INT8: tl.constexpr, INTERPRETED: tl.constexpr):
    """``x * inv_scale`` (fp32) in 8 bits, as :func:`fp8attn.fp8.to_e4m3` and :func:`fp8attn.fp8.to_int8`
    define it: E4M3 of the rounded fp32 product (nearest even, saturating), or int8 of the exact product
    (nearest, ties to even). Int8 needs ``|x * inv_scale| < 127.5``, which an amax-derived scale gives
    (at most 127 (1 + 2**-23)).

    The int8 rounding is one FMA: adding 1.5 * 2**23 puts the product's nearest integer in the low
    mantissa bits (two's complement in the low byte). The float-to-int conversion it replaces runs at a
    sixteenth of the FMA rate and took a clamp and a sign select around it (perf-notes §24). The
    interpreter's FMA rounds the product first, so there it is taken in fp64, where it is exact.
    """
    if INT8:
        if INTERPRETED:
            y = tl.fma(x.to(tl.float64), inv_scale.to(tl.float64), _ROUND_MAGIC_F64)
            return y.to(tl.int64, bitcast=True).to(tl.int8)
        else:
            y = tl.fma(x, inv_scale, _ROUND_MAGIC_F32)
            return y.to(tl.int32, bitcast=True).to(tl.int8)
    else:
        return (x * inv_scale).to(tl.float8e4nv)


@triton.jit
def _hadamard_tile(h_ptr, HEAD_DIM_PAD: tl.constexpr, HADAMARD: tl.constexpr):
    """The ``[Dp, Dp]`` ±1 Hadamard matrix, loaded once per program, when HADAMARD (else ``h_ptr``,
    unused)."""
    if HADAMARD:
        offs = tl.arange(0, HEAD_DIM_PAD)
        return tl.load(h_ptr + offs[:, None] * HEAD_DIM_PAD + offs[None, :])
    else:
        return h_ptr


@triton.jit
def _rotate(x, hadamard, rot_scale, HADAMARD: tl.constexpr, INTERPRETED: tl.constexpr):
    """A ``[T, Dp]`` fp16/bf16 tile as fp32, times the normalised Hadamard matrix when HADAMARD.

    The ±1 matrix makes every product exact; the accumulation is fp32 either way (on tensor cores in
    the input dtype, or, under the interpreter, which cannot multiply bf16, in fp32).
    """
    if HADAMARD:
        if INTERPRETED:
            x = tl.dot(x.to(tl.float32), hadamard.to(tl.float32), input_precision="ieee")
        else:
            x = tl.dot(x, hadamard)
        return x * rot_scale
    else:
        return x.to(tl.float32)


@triton.jit
def _rotate_halves(lo, hi, hadamard_half, rot_scale, INTERPRETED: tl.constexpr):
    """``[lo | hi]`` (two ``[T, n]`` tiles) times the normalised Hadamard matrix of width 2n, from the
    n × n one: H_2n = [[H_n, H_n], [H_n, -H_n]], so the product is ``[a + b, a - b]`` with a = lo·H_n and
    b = hi·H_n. Half the multiply-adds of the full product and a quarter of its matrix."""
    a = _rotate(lo, hadamard_half, rot_scale, True, INTERPRETED)
    b = _rotate(hi, hadamard_half, rot_scale, True, INTERPRETED)
    return a + b, a - b


@triton.jit
def _walsh_hadamard(x, N: tl.constexpr):
    """``x @ H`` for a length-N vector and the N×N Sylvester Hadamard matrix of ±1 (N a power of two):
    log2(N) butterfly stages, each pairing elements ``h`` apart. A D×D fp32 matrix in registers would
    cost D registers a thread at 8 warps (and spilled at D=256)."""
    for stage in tl.static_range(N.bit_length() - 1):  # pairs h = 2**stage apart
        pairs = tl.permute(tl.reshape(x, (N >> (stage + 1), 2, 1 << stage)), (0, 2, 1))
        a, b = tl.split(pairs)
        x = tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 2, 1)), (N,))
    return x


@triton.jit
def _q_row_scales(row_amax, ROWS: tl.constexpr, Q_BLOCK: tl.constexpr, QK_MAX: tl.constexpr):
    """From the ``[ROWS]`` row maxima of |Q|: the ``ROWS // Q_BLOCK`` block scales and each row's
    reciprocal scale. Rows that are zero (past Sq) get scale 1."""
    block_scale = _scale_from_amax(tl.max(tl.reshape(row_amax, (ROWS // Q_BLOCK, Q_BLOCK)), axis=1), QK_MAX)
    block_inv = tl.math.div_rn(tl.full(block_scale.shape, 1.0, tl.float32), block_scale)
    return block_scale, tl.reshape(tl.broadcast_to(block_inv[:, None], (ROWS // Q_BLOCK, Q_BLOCK)), (ROWS,))


@triton.jit
def _quantize_q_rows(x, ROWS: tl.constexpr, Q_BLOCK: tl.constexpr, QK_MAX: tl.constexpr, QK_INT8: tl.constexpr,
                     INTERPRETED: tl.constexpr):
    """A ``[ROWS, Dp]`` fp32 tile of (rotated) Q in 8 bits, one scale per ``Q_BLOCK`` rows.

    Returns the 8-bit tile and the ``ROWS // Q_BLOCK`` scales.
    """
    block_scale, row_inv = _q_row_scales(tl.max(tl.abs(x), axis=1), ROWS, Q_BLOCK, QK_MAX)
    return _to_8bit(x, row_inv[:, None], QK_INT8, INTERPRETED), block_scale


@triton.jit
def _k_sample_mean(k_base, stride_kt, seqlen_k, d_ok, rot_scale, HEAD_DIM_PAD: tl.constexpr, HADAMARD: tl.constexpr):
    """The per-channel mean of K's tokens at :func:`k_mean_positions` (``k_base``: the head's keys,
    channels along the last axis), rotated like K when HADAMARD.

    Past K_MEAN_TOKENS keys, ``(2i + 1)·Sk // (2n)`` is taken as ``(2i + 1)·(Sk // 2n) + (2i + 1)·(Sk % 2n) // 2n``
    with ``2n`` a power of two: shifts and masks, no 32-bit overflow, no integer division."""
    n = tl.minimum(seqlen_k, K_MEAN_TOKENS_C)
    i = tl.arange(0, K_MEAN_TOKENS_C)
    odd = 2 * i + 1
    spread = odd * (seqlen_k // (2 * K_MEAN_TOKENS_C)) + odd * (seqlen_k % (2 * K_MEAN_TOKENS_C)) // (2 * K_MEAN_TOKENS_C)
    offs_t = tl.where(seqlen_k > K_MEAN_TOKENS_C, spread, i)
    k = tl.load(k_base + offs_t[:, None] * stride_kt, mask=(i < n)[:, None] & d_ok[None, :], other=0.0)
    k_mean = tl.sum(k.to(tl.float32), axis=0) / n
    if HADAMARD:
        k_mean = _walsh_hadamard(k_mean, HEAD_DIM_PAD) * rot_scale
    return k_mean


@triton.jit
def _v_mean_and_scale(v_sum, v_max, v_min, seqlen_k, SMOOTH_V: tl.constexpr):
    """V's per-channel mean and scale from its sum, max and min over tokens (max and min 0 in padded
    channels): the scale covers ``|v - mean|`` when SMOOTH_V, else ``|v|``."""
    v_mean = v_sum / seqlen_k
    if SMOOTH_V:
        # max |v - mean| is reached at the channel's max or min (rounding is monotonic).
        v_amax = tl.maximum(v_max - v_mean, v_mean - v_min)
    else:
        v_amax = tl.maximum(v_max, -v_min)
    return v_mean, _scale_from_amax(v_amax, E4M3_MAX_F32)


@triton.jit
def _smooth_rows(k, k_mean, row_ok):
    """``k - k_mean`` on rows ``row_ok``, zero on the others (keys past Sk: zero loads stay zero, but
    padded channels do not once the rotation filled them)."""
    return tl.where(row_ok[:, None], k - k_mean[None, :], 0.0)


@triton.jit
def _quantize_k_block(k, k_mean, row_ok, QK_MAX: tl.constexpr, QK_INT8: tl.constexpr, SMOOTH_K: tl.constexpr,
                      INTERPRETED: tl.constexpr):
    """One block of (rotated) fp32 keys ``[K_BLOCK, Dp]`` in 8 bits with one scale; rows not ``row_ok``
    (past Sk) come out zero when smoothing (and are zero already otherwise). Returns the 8-bit block and
    its scale."""
    if SMOOTH_K:
        k = _smooth_rows(k, k_mean, row_ok)
    k_scale = _scale_from_amax(tl.max(tl.abs(k)), QK_MAX)
    return _to_8bit(k, tl.math.div_rn(1.0, k_scale), QK_INT8, INTERPRETED), k_scale


@triton.jit
def _quantize_v_block(v, v_mean, v_inv, ok, SMOOTH_V: tl.constexpr, V_FP16: tl.constexpr):
    """A ``[T, Dp]`` fp32 tile of V in E4M3 (fp16 for fp16-P·V recipes) by per-channel ``v_inv``;
    elements not ``ok`` (padding) come out zero."""
    if SMOOTH_V:
        v = tl.where(ok, v - v_mean[None, :], 0.0)
    v = v * v_inv[None, :]
    if V_FP16:
        return v.to(tl.float16)
    else:
        return v.to(tl.float8e4nv)


@triton.jit
def _program_tiles(pid, num_tiles, tiles_per_program):
    """Program ``pid``'s share of one tensor: its (batch·head) index and the tiles [first, last) of
    that head, ``tiles_per_program`` consecutive ones (fewer in a head's last program)."""
    programs_per_head = tl.cdiv(num_tiles, tiles_per_program)
    first = (pid % programs_per_head) * tiles_per_program
    return pid // programs_per_head, first, tl.minimum(first + tiles_per_program, num_tiles)


@triton.jit
def _v_head_stats(
    v_ptr, stats_ptr, bh, b, h, seqlen_k, num_chunks, d_ok, stride_vb, stride_vh, stride_vt, stride_vd,
    HEAD_DIM_PAD: tl.constexpr, INLINE_STATS: tl.constexpr, ONE_STATS_TILE: tl.constexpr, STATS_TILE: tl.constexpr,
    STATS_STAGES: tl.constexpr, GRID_DEPENDENCY: tl.constexpr,
):
    """V's sum, max and min over one head's keys (see ``_v_token_stats``): reduced here from the keys
    (short keys, ``INLINE_STATS``; in one load of ``STATS_TILE`` tokens with ONE_STATS_TILE, else in a loop
    over tiles of that many) or from the statistics pass's partials (after waiting for that launch to
    finish, under GRID_DEPENDENCY)."""
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    if INLINE_STATS:
        v_base = v_ptr + b * stride_vb + h * stride_vh + offs_d[None, :] * stride_vd
        if ONE_STATS_TILE:
            return _v_token_stats_one_tile(v_base, stride_vt, seqlen_k, d_ok, STATS_TILE)
        else:
            return _v_token_stats(v_base, stride_vt, 0, seqlen_k, d_ok, STATS_TILE, HEAD_DIM_PAD, STATS_STAGES)
    else:
        wait_for_previous_grid(GRID_DEPENDENCY)
        stats = stats_ptr + (bh * num_chunks) * NUM_STATS * HEAD_DIM_PAD + offs_d
        v_sum = tl.zeros([HEAD_DIM_PAD], dtype=tl.float32)
        v_max = tl.full([HEAD_DIM_PAD], float("-inf"), dtype=tl.float32)
        v_min = tl.full([HEAD_DIM_PAD], float("inf"), dtype=tl.float32)
        for c in range(num_chunks):
            v_sum += tl.load(stats + c * NUM_STATS * HEAD_DIM_PAD)
            v_max = tl.maximum(v_max, tl.load(stats + (c * NUM_STATS + 1) * HEAD_DIM_PAD))
            v_min = tl.minimum(v_min, tl.load(stats + (c * NUM_STATS + 2) * HEAD_DIM_PAD))
        return v_sum, v_max, v_min


@triton.jit
def _quantize_q_tiles(
    pid, q_ptr, h_ptr, q8_ptr, q_scale_ptr, seqlen_q, num_q_heads, tiles_per_program, rot_scale, head_dim,
    stride_qb, stride_qh, stride_qt, stride_qd,
    Q_TILE: tl.constexpr, Q_BLOCK: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, QK_INT8: tl.constexpr,
    QK_MAX: tl.constexpr, HADAMARD: tl.constexpr, SPLIT_ROTATION: tl.constexpr, INTERPRETED: tl.constexpr,
    TILE_STAGES: tl.constexpr,
):
    """Tiles of Q_TILE query tokens of one head: rotated (HADAMARD; in column halves when
    SPLIT_ROTATION), in 8 bits, one scale per Q_BLOCK."""
    bh, first, last = _program_tiles(pid, tl.cdiv(seqlen_q, Q_TILE), tiles_per_program)
    b = bh // num_q_heads
    h = bh % num_q_heads
    HALF: tl.constexpr = HEAD_DIM_PAD // 2
    COLS: tl.constexpr = HALF if SPLIT_ROTATION else HEAD_DIM_PAD  # columns per load
    offs_c = tl.arange(0, COLS)
    c_ok = offs_c < head_dim  # runtime head_dim: see _quantize_qkv_kernel
    q_head = q_ptr + b * stride_qb + h * stride_qh + offs_c[None, :] * stride_qd
    hadamard = _hadamard_tile(h_ptr, COLS, HADAMARD)
    num_blocks = tl.cdiv(seqlen_q, Q_BLOCK)
    for tile in tl.range(first, last, num_stages=TILE_STAGES):
        offs_t = tile * Q_TILE + tl.arange(0, Q_TILE)
        t_ok = offs_t < seqlen_q
        out = q8_ptr + (bh * seqlen_q + offs_t[:, None]) * HEAD_DIM_PAD + offs_c[None, :]
        x = tl.load(q_head + offs_t[:, None] * stride_qt, mask=t_ok[:, None] & c_ok[None, :], other=0.0)
        if SPLIT_ROTATION:
            hi = tl.load(q_head + HALF * stride_qd + offs_t[:, None] * stride_qt,
                         mask=t_ok[:, None] & (offs_c + HALF < head_dim)[None, :], other=0.0)
            y_lo, y_hi = _rotate_halves(x, hi, hadamard, rot_scale, INTERPRETED)
            row_amax = tl.max(tl.maximum(tl.abs(y_lo), tl.abs(y_hi)), axis=1)
            block_scale, row_inv = _q_row_scales(row_amax, Q_TILE, Q_BLOCK, QK_MAX)
            tl.store(out, _to_8bit(y_lo, row_inv[:, None], QK_INT8, INTERPRETED), mask=t_ok[:, None])
            tl.store(out + HALF, _to_8bit(y_hi, row_inv[:, None], QK_INT8, INTERPRETED), mask=t_ok[:, None])
        else:
            x8, block_scale = _quantize_q_rows(_rotate(x, hadamard, rot_scale, HADAMARD, INTERPRETED),
                                               Q_TILE, Q_BLOCK, QK_MAX, QK_INT8, INTERPRETED)
            tl.store(out, x8, mask=t_ok[:, None])
        offs_blk = tile * (Q_TILE // Q_BLOCK) + tl.arange(0, Q_TILE // Q_BLOCK)
        tl.store(q_scale_ptr + bh * num_blocks + offs_blk, block_scale, mask=offs_blk < num_blocks)


@triton.jit
def _quantize_k_blocks(
    pid, k_ptr, h_ptr, k8_ptr, k_scale_ptr, k_mean_ptr,
    seqlen_k, seqlen_k_pad, num_kv_heads, tiles_per_program, rot_scale, head_dim,
    stride_kb, stride_kh, stride_kt, stride_kd,
    K_BLOCK: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, QK_INT8: tl.constexpr, QK_MAX: tl.constexpr,
    SMOOTH_K: tl.constexpr, HADAMARD: tl.constexpr, SPLIT_ROTATION: tl.constexpr, INTERPRETED: tl.constexpr,
    TILE_STAGES: tl.constexpr,
):
    """Blocks of K_BLOCK keys of one head: rotated (HADAMARD; in column halves when SPLIT_ROTATION),
    smoothed (SMOOTH_K, by the mean of a sample of the head's keys: no statistics pass to wait for), in
    8 bits with one scale each; rows past seqlen_k are written as zeros."""
    num_blocks = seqlen_k_pad // K_BLOCK
    bh, first, last = _program_tiles(pid, num_blocks, tiles_per_program)
    b = bh // num_kv_heads
    h = bh % num_kv_heads
    HALF: tl.constexpr = HEAD_DIM_PAD // 2
    COLS: tl.constexpr = HALF if SPLIT_ROTATION else HEAD_DIM_PAD  # columns per load
    if SMOOTH_K:
        offs_d = tl.arange(0, HEAD_DIM_PAD)
        k_sample = k_ptr + b * stride_kb + h * stride_kh + offs_d[None, :] * stride_kd
        k_mean = _k_sample_mean(k_sample, stride_kt, seqlen_k, offs_d < head_dim, rot_scale, HEAD_DIM_PAD, HADAMARD)
        # Every program of the head stores the same bytes (same inputs, same reduction order) and reads
        # them back per block: a mean held in registers would be hoisted out of the loop in the matmul's
        # layout and stay live through it (32 registers a thread at D=128, 64 at D=256: spills).
        tl.store(k_mean_ptr + bh * HEAD_DIM_PAD + offs_d, k_mean)
        tl.debug_barrier()
    offs_c = tl.arange(0, COLS)
    c_ok = offs_c < head_dim  # runtime head_dim: see _quantize_qkv_kernel
    k_head = k_ptr + b * stride_kb + h * stride_kh + offs_c[None, :] * stride_kd
    hadamard = _hadamard_tile(h_ptr, COLS, HADAMARD)
    mean_ptr = k_mean_ptr + bh * HEAD_DIM_PAD + offs_c
    for block in tl.range(first, last, num_stages=TILE_STAGES):
        offs_t = block * K_BLOCK + tl.arange(0, K_BLOCK)
        row_ok = offs_t < seqlen_k
        out = k8_ptr + (bh * seqlen_k_pad + offs_t[:, None]) * HEAD_DIM_PAD + offs_c[None, :]
        k = tl.load(k_head + offs_t[:, None] * stride_kt, mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        if SPLIT_ROTATION:
            hi = tl.load(k_head + HALF * stride_kd + offs_t[:, None] * stride_kt,
                         mask=row_ok[:, None] & (offs_c + HALF < head_dim)[None, :], other=0.0)
            y_lo, y_hi = _rotate_halves(k, hi, hadamard, rot_scale, INTERPRETED)
            if SMOOTH_K:
                y_lo = _smooth_rows(y_lo, tl.load(mean_ptr), row_ok)
                y_hi = _smooth_rows(y_hi, tl.load(mean_ptr + HALF), row_ok)
            k_scale = _scale_from_amax(tl.max(tl.maximum(tl.abs(y_lo), tl.abs(y_hi))), QK_MAX)  # one block reduction
            k_inv = tl.math.div_rn(1.0, k_scale)
            tl.store(out, _to_8bit(y_lo, k_inv, QK_INT8, INTERPRETED))
            tl.store(out + HALF, _to_8bit(y_hi, k_inv, QK_INT8, INTERPRETED))
        else:
            if SMOOTH_K:
                mean = tl.load(mean_ptr)
            else:
                mean = tl.zeros([HEAD_DIM_PAD], dtype=tl.float32)
            k8, k_scale = _quantize_k_block(_rotate(k, hadamard, rot_scale, HADAMARD, INTERPRETED), mean, row_ok,
                                            QK_MAX, QK_INT8, SMOOTH_K, INTERPRETED)
            tl.store(out, k8)
        tl.store(k_scale_ptr + bh * num_blocks + block, k_scale)


@triton.jit
def _quantize_v_blocks(
    pid, v_ptr, stats_ptr, vt_ptr, v_scale_ptr, v_mean_ptr,
    seqlen_k, seqlen_k_pad, num_kv_heads, num_chunks, tiles_per_program, head_dim,
    stride_vb, stride_vh, stride_vt, stride_vd,
    K_BLOCK: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, V_FP16: tl.constexpr, SMOOTH_V: tl.constexpr,
    INLINE_STATS: tl.constexpr, ONE_STATS_TILE: tl.constexpr, STATS_TILE: tl.constexpr, STATS_STAGES: tl.constexpr,
    GRID_DEPENDENCY: tl.constexpr,
):
    """Blocks of K_BLOCK tokens of one head's V: smoothed (SMOOTH_V), scaled per channel, written
    transposed (``[Dp, Skp]``, the K-major layout P·V needs on Hopper; E4M3 keys in P·V operand order,
    :mod:`fp8attn.kernels.key_order`); padding written as zeros."""
    num_blocks = seqlen_k_pad // K_BLOCK
    bh, first, last = _program_tiles(pid, num_blocks, tiles_per_program)
    b = bh // num_kv_heads
    h = bh % num_kv_heads
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < head_dim  # runtime head_dim: see _quantize_qkv_kernel
    v_sum, v_max, v_min = _v_head_stats(
        v_ptr, stats_ptr, bh, b, h, seqlen_k, num_chunks, d_ok, stride_vb, stride_vh, stride_vt, stride_vd,
        HEAD_DIM_PAD, INLINE_STATS, ONE_STATS_TILE, STATS_TILE, STATS_STAGES, GRID_DEPENDENCY,
    )
    v_mean, v_scale = _v_mean_and_scale(v_sum, v_max, v_min, seqlen_k, SMOOTH_V)
    v_inv = tl.math.div_rn(tl.full(v_scale.shape, 1.0, tl.float32), v_scale)
    if first == 0:
        tl.store(v_scale_ptr + bh * HEAD_DIM_PAD + offs_d, v_scale)
        if SMOOTH_V:
            tl.store(v_mean_ptr + bh * HEAD_DIM_PAD + offs_d, v_mean)
    v_head = v_ptr + b * stride_vb + h * stride_vh + offs_d[None, :] * stride_vd
    for block in tl.range(first, last, num_stages=1):  # pipelined was slower (perf-notes §17)
        offs_t = block * K_BLOCK + tl.arange(0, K_BLOCK)
        ok = (offs_t < seqlen_k)[:, None] & d_ok[None, :]
        v = tl.load(v_head + offs_t[:, None] * stride_vt, mask=ok, other=0.0).to(tl.float32)
        vq_t = tl.trans(_quantize_v_block(v, v_mean, v_inv, ok, SMOOTH_V, V_FP16))
        if not V_FP16:
            vq_t = pv_key_order(vq_t)
        tl.store(vt_ptr + (bh * HEAD_DIM_PAD + offs_d[:, None]) * seqlen_k_pad + offs_t[None, :], vq_t)


@triton.jit
def _quantize_qkv_kernel(
    q_ptr, k_ptr, v_ptr, h_ptr,
    q8_ptr, k8_ptr, vt_ptr, q_scale_ptr, k_scale_ptr, v_scale_ptr, k_mean_ptr, v_mean_ptr, stats_ptr,
    seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, head_dim, num_chunks,
    tiles_per_program, num_q_programs, num_k_programs, rot_scale,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    Q_TILE: tl.constexpr, Q_BLOCK: tl.constexpr, K_BLOCK: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    QK_INT8: tl.constexpr, QK_MAX: tl.constexpr, V_FP16: tl.constexpr,
    SMOOTH_K: tl.constexpr, SMOOTH_V: tl.constexpr, HADAMARD: tl.constexpr, SPLIT_ROTATION: tl.constexpr,
    INTERPRETED: tl.constexpr, INLINE_STATS: tl.constexpr, ONE_STATS_TILE: tl.constexpr, STATS_TILE: tl.constexpr,
    STATS_STAGES: tl.constexpr,
    TILE_STAGES: tl.constexpr, GRID_DEPENDENCY: tl.constexpr,
):
    """Programs [0, num_q_programs) quantize Q, the next num_k_programs K, the rest V; each takes
    ``tiles_per_program`` consecutive tiles of one head (``_program_tiles``).

    ``head_dim`` is a runtime value on purpose: as a constant it lets LLVM prove whole register tiles of
    padded channels zero, and ptxas miscompiles the fp8 packing of those constants (12.8: F2FP ...
    MERGE_C with R1 instead of a zero half; on the H100: non-zero bytes in V's padding).

    INTERPRETED: the kernel runs in Triton's interpreter, whose dot and FMA need other operand types
    for the same results (``_rotate``, ``_to_8bit``).

    Under GRID_DEPENDENCY (:mod:`fp8attn.kernels.grid_dependency`) the attention launch may start as
    these programs drain, and V programs wait for the statistics launch before reading its partials;
    Q and K programs need nothing from it and may run beside it (where registers allow, perf-notes §19).
    """
    signal_next_grid(GRID_DEPENDENCY)
    pid = tl.program_id(0)
    if pid < num_q_programs:
        _quantize_q_tiles(
            pid, q_ptr, h_ptr, q8_ptr, q_scale_ptr, seqlen_q, num_q_heads, tiles_per_program, rot_scale, head_dim,
            stride_qb, stride_qh, stride_qt, stride_qd,
            Q_TILE, Q_BLOCK, HEAD_DIM_PAD, QK_INT8, QK_MAX, HADAMARD, SPLIT_ROTATION, INTERPRETED, TILE_STAGES,
        )
    elif pid < num_q_programs + num_k_programs:
        _quantize_k_blocks(
            pid - num_q_programs, k_ptr, h_ptr, k8_ptr, k_scale_ptr, k_mean_ptr,
            seqlen_k, seqlen_k_pad, num_kv_heads, tiles_per_program, rot_scale, head_dim,
            stride_kb, stride_kh, stride_kt, stride_kd,
            K_BLOCK, HEAD_DIM_PAD, QK_INT8, QK_MAX, SMOOTH_K, HADAMARD, SPLIT_ROTATION, INTERPRETED, TILE_STAGES,
        )
    else:
        _quantize_v_blocks(
            pid - num_q_programs - num_k_programs, v_ptr, stats_ptr, vt_ptr, v_scale_ptr, v_mean_ptr,
            seqlen_k, seqlen_k_pad, num_kv_heads, num_chunks, tiles_per_program, head_dim,
            stride_vb, stride_vh, stride_vt, stride_vd,
            K_BLOCK, HEAD_DIM_PAD, V_FP16, SMOOTH_V, INLINE_STATS, ONE_STATS_TILE, STATS_TILE, STATS_STAGES,
            GRID_DEPENDENCY,
        )



def _stats_chunk(num_heads: int, seqlen_k: int) -> int:
    """Tokens per statistics program: a power of two from 256, doubled until there are at most
    ``_STATS_MAX_CHUNKS`` chunks a head and ``_STATS_TARGET_PROGRAMS`` programs in all (longer loops
    keep the pipeline full, and fewer partials are left for each quantize program to sum)."""
    chunk = _STATS_MIN_CHUNK
    while cdiv(seqlen_k, chunk) > _STATS_MAX_CHUNKS or (
            chunk < seqlen_k and num_heads * cdiv(seqlen_k, chunk) > _STATS_TARGET_PROGRAMS):
        chunk *= 2
    return chunk


_WORKSPACE_ALIGN = 256  # bytes; each view of the workspace starts on this boundary


BufferLayout = Mapping[str, tuple[tuple[int, ...], torch.dtype] | None]  # name: (shape, dtype), or None


def carve_workspace(
    layout: BufferLayout, device: torch.device | str, extra: BufferLayout | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor | None], dict[str, torch.Tensor]]:
    """One uninitialised byte buffer and a view of it per ``name: (shape, dtype)`` entry (None stays
    None), each view starting on a 256-byte boundary: one allocation instead of one per tensor.
    ``extra`` entries (a caller's buffers sharing the allocation) come back in a dict of their own."""
    extra = dict(extra or {})
    if extra.keys() & layout.keys():
        raise ValueError(f"extra buffers {sorted(extra.keys() & layout.keys())} clash with the layout's names")
    entries = {**layout, **extra}
    offsets, size = {}, 0
    for name, entry in entries.items():
        if entry is not None:
            offsets[name] = size
            size += cdiv(math.prod(entry[0]) * entry[1].itemsize, _WORKSPACE_ALIGN) * _WORKSPACE_ALIGN
    workspace = torch.empty(size, device=device, dtype=torch.uint8)
    views: dict[str, torch.Tensor | None] = {}
    for name, entry in entries.items():
        if entry is None:
            views[name] = None
            continue
        shape, dtype = entry
        start = offsets[name]
        views[name] = workspace[start:start + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
    return workspace, {name: views[name] for name in layout}, {name: views[name] for name in extra}


def allocate_quantized(
    batch: int, num_q_heads: int, num_kv_heads: int, seqlen_q: int, seqlen_k: int, head_dim: int,
    recipe: Recipe, device: torch.device | str, extra: BufferLayout | None = None,
) -> QuantizedQKV:
    """Uninitialised buffers in the kernel layout (see :class:`QuantizedQKV`), and ``extra`` ones,
    carved from one allocation."""
    dp = padded_head_dim(head_dim)
    skp = cdiv(seqlen_k, recipe.k_block) * recipe.k_block
    qk_dtype = torch.int8 if recipe.qk_format == "int8" else E4M3
    f32 = torch.float32
    layout = {
        "q": ((batch, num_q_heads, seqlen_q, dp), qk_dtype),
        "k": ((batch, num_kv_heads, skp, dp), qk_dtype),
        "v_t": ((batch, num_kv_heads, dp, skp), torch.float16 if recipe.pv_format == "fp16" else E4M3),
        "q_scale": ((batch, num_q_heads, cdiv(seqlen_q, recipe.q_block)), f32),
        "k_scale": ((batch, num_kv_heads, skp // recipe.k_block), f32),
        "v_scale": ((batch, num_kv_heads, dp), f32),
        "k_mean": ((batch, num_kv_heads, dp), f32) if recipe.smooth_k else None,
        "v_mean": ((batch, num_kv_heads, dp), f32) if recipe.smooth_v else None,
        "v_partials": None if _inline_stats(batch, num_kv_heads, seqlen_k, dp) else
        ((batch * num_kv_heads, cdiv(seqlen_k, _stats_chunk(batch * num_kv_heads, seqlen_k)), _NUM_STATS, dp), f32),
    }
    workspace, views, extra_views = carve_workspace(layout, device, extra)
    return QuantizedQKV(
        **views,
        seqlen_q=seqlen_q, seqlen_k=seqlen_k, head_dim=head_dim, q_block=recipe.q_block, k_block=recipe.k_block,
        workspace=workspace, extra=extra_views,
    )


def _inline_stats(batch: int, num_kv_heads: int, seqlen_k: int, head_dim_pad: int) -> bool:
    """Whether the quantize launch reduces V's statistics itself (each V program re-reads its head's
    values: up to ``Sk / k_block`` times the statistics pass's reads, worth it only where that pass's
    launch is the larger cost)."""
    return seqlen_k <= _INLINE_STATS_MAX_SEQLEN and batch * num_kv_heads * seqlen_k * head_dim_pad <= _INLINE_STATS_MAX_ELEMENTS


def quantize_launches(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, recipe: Recipe, out: QuantizedQKV,
    tiles_per_program: int | None = None,
) -> tuple[Launch, ...]:
    """The launches that fill ``out``: V's statistics pass (unless the keys are short enough to
    reduce inline), then the fused quantize pass. ``tiles_per_program`` (Q tiles or K/V blocks a
    quantize program takes; None: by :func:`tiles_per_program_for`) is there for tests and studies."""
    batch, num_q_heads, seqlen_q, head_dim = q.shape
    num_kv_heads, seqlen_k = k.shape[1], k.shape[2]
    dp, skp = out.k.shape[-1], out.k.shape[2]
    stats = out.v_partials
    pdl = programmatic_launch(q.device)
    launches = []
    if stats is not None:
        launches.append(Launch(
            _v_stats_kernel, (stats.shape[1], batch * num_kv_heads),
            (v, stats, seqlen_k, num_kv_heads, head_dim, *v.stride()),
            dict(CHUNK=_stats_chunk(batch * num_kv_heads, seqlen_k), TILE=_STATS_TILE_ELEMENTS // dp, HEAD_DIM_PAD=dp,
                 NUM_STAGES=_STATS_STAGES, GRID_DEPENDENCY=pdl),
            dict(num_warps=_STATS_WARPS),
        ))
    unused = out.v_scale  # stands in for pointers a recipe does not read
    q_tile = MAX_Q_BLOCK  # query tokens a Q tile holds: the largest q_block
    q_tiles = batch * num_q_heads * cdiv(seqlen_q, q_tile)
    kv_blocks = batch * num_kv_heads * (skp // recipe.k_block)
    if tiles_per_program is None:
        tiles_per_program = tiles_per_program_for(q_tiles + 2 * kv_blocks)
    if tiles_per_program < 1:
        raise ValueError(f"tiles_per_program must be at least 1, got {tiles_per_program}")
    num_q_programs = batch * num_q_heads * cdiv(cdiv(seqlen_q, q_tile), tiles_per_program)
    num_kv_programs = batch * num_kv_heads * cdiv(skp // recipe.k_block, tiles_per_program)
    split = _split_rotation(dp, recipe)
    num_programs = num_q_programs + 2 * num_kv_programs
    one_stats_tile = _one_stats_tile(stats is None, recipe, seqlen_k, dp, num_programs, q.device)
    hadamard = hadamard_matrix(dp // 2 if split else dp, q.dtype, q.device) if recipe.hadamard else unused
    launches.append(Launch(
        _quantize_qkv_kernel, (num_programs,),
        (
            q, k, v, hadamard, out.q, out.k, out.v_t, out.q_scale, out.k_scale, out.v_scale,
            out.k_mean if out.k_mean is not None else unused, out.v_mean if out.v_mean is not None else unused,
            stats if stats is not None else unused,
            seqlen_q, seqlen_k, skp, num_q_heads, num_kv_heads, head_dim, 0 if stats is None else stats.shape[1],
            tiles_per_program, num_q_programs, num_kv_programs, hadamard_scale(dp),
            *q.stride(), *k.stride(), *v.stride(),
        ),
        dict(Q_TILE=q_tile, Q_BLOCK=recipe.q_block, K_BLOCK=recipe.k_block, HEAD_DIM_PAD=dp,
             QK_INT8=recipe.qk_format == "int8", QK_MAX=recipe.qk_max, V_FP16=recipe.pv_format == "fp16",
             SMOOTH_K=recipe.smooth_k, SMOOTH_V=recipe.smooth_v,
             HADAMARD=recipe.hadamard, SPLIT_ROTATION=split, INTERPRETED=bool(knobs.runtime.interpret),
             INLINE_STATS=stats is None, ONE_STATS_TILE=one_stats_tile,
             STATS_TILE=_INLINE_ONE_TILE_ELEMENTS // dp if one_stats_tile else _STATS_TILE_ELEMENTS // dp,
             STATS_STAGES=_STATS_STAGES, TILE_STAGES=_tile_stages(recipe), GRID_DEPENDENCY=pdl),
        dict(num_warps=_quantize_warps(dp), launch_pdl=pdl and stats is not None, **_register_cap(dp)),
        constants=(hadamard,) if recipe.hadamard else (),
    ))
    return tuple(launches)


def _one_stats_tile(inline_stats: bool, recipe: Recipe, seqlen_k: int, head_dim_pad: int, num_programs: int,
                    device: torch.device) -> bool:
    """Whether inline statistics take a head's keys in one load (``_v_token_stats_one_tile``): where they fit
    ``_INLINE_ONE_TILE_ELEMENTS`` and the launch has at most one program per SM anyway (the whole tile in
    registers, 128-174 a thread at D=64 against 80 for the loop, leaves room for fewer programs per SM), for
    recipes without the Hadamard rotation. There the V programs' statistics bound the mission shape's launch
    and one load shortened it 9-11 % on an H200; with the rotation (the default recipe) the launch came out
    2 % slower, unexplained (docs/perf-notes.md, section 43)."""
    return (inline_stats and not recipe.hadamard and seqlen_k * head_dim_pad <= _INLINE_ONE_TILE_ELEMENTS
            and num_programs <= sm_count(device))


def tiles_per_program_for(num_tiles: int) -> int:
    """Tiles (Q tiles and K and V blocks together) each quantize program takes: one while there are
    few (short inputs are latency-bound: every tile its own program), up to
    ``_MAX_TILES_PER_PROGRAM`` once there are more than ``_TARGET_PROGRAMS`` programs' worth: a
    program's fixed costs (its head's statistics, the Hadamard matrix) are then shared by its tiles
    (perf-notes §17)."""
    return max(1, min(_MAX_TILES_PER_PROGRAM, num_tiles // _TARGET_PROGRAMS))


def _split_rotation(head_dim_pad: int, recipe: Recipe) -> bool:
    """Whether the Hadamard rotation is applied as two half-width products (``_rotate_halves``): half
    the multiply-adds and a quarter of the matrix. Needed at padded D=256, where the full 256 x 256
    matrix alone takes 128 KB of shared memory; at D=64 and 128 it shortened the mission shape's
    quantize pass (7.84 -> 7.24 us on an H200) and left long shapes within +-3 % (perf-notes §23).
    Not at D=32 (a 2 KB matrix)."""
    return recipe.hadamard and head_dim_pad >= 64


def _tile_stages(recipe: Recipe) -> int:
    """Pipeline depth of the Q and K tile loops: 2 where the tile feeds the Hadamard rotation's dot
    straight from shared memory (no register staging: the capped D=128 kernel spilled without it);
    1 without the rotation (a tile used element-wise would make a round trip through shared memory,
    measured slower)."""
    return 2 if recipe.hadamard else 1


def _register_cap(head_dim_pad: int) -> dict[str, int]:
    """The quantize launch's register cap, as a launch option: 128 a thread at padded D=128, so that two 8-warp
    programs share an SM (uncapped, e4m3-hadamard's kernel took 136 and ran one: 173 -> 132 µs a pass on an
    H200 with the cap, 125 registers, no spills). None elsewhere: at D=64 the cap made ptxas take 83-87
    registers instead of 80 (two programs a SM instead of three, the pass 12 % slower), and D=256's one
    16-warp program a SM takes at most 121 (docs/perf-notes.md, section 44)."""
    return {"maxnreg": 128} if head_dim_pad == 128 else {}


def _quantize_warps(head_dim_pad: int) -> int:
    """Warps a quantize program runs: 16 at padded D=256, where 8 warps took 190-230 registers a thread
    (one 8-warp program per SM) and 16 take at most 128 (sixteen warps per SM, room for two pipelined
    tiles and 128-token Q tiles: the pass 188 -> 172 us, perf-notes §24); 8 below."""
    return 16 if head_dim_pad == 256 else 8


def quantize_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, recipe: Recipe, tiles_per_program: int | None = None,
) -> QuantizedQKV:
    """Quantize fp16/bf16 ``q (B, Hq, Sq, D)``, ``k, v (B, Hkv, Sk, D)`` by ``recipe``.

    Inputs may have any strides. Arguments are assumed checked (see :mod:`fp8attn.api`).
    ``tiles_per_program``: see :func:`quantize_launches`.
    """
    batch, num_q_heads, seqlen_q, head_dim = q.shape
    out = allocate_quantized(batch, num_q_heads, k.shape[1], seqlen_q, k.shape[2], head_dim, recipe, q.device)
    for launch in quantize_launches(q, k, v, recipe, out, tiles_per_program):
        launch.run()
    return out
