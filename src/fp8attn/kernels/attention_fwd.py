"""8-bit flash-attention forward: Q·Kᵀ and P·V on tensor cores, online softmax in fp32.

The recipe picks the operand types at compile time from the quantized tensors: Q·Kᵀ in E4M3 (QGMMA)
or INT8 with exact int32 sums (IGMMA); P·V in E4M3 (QGMMA) or fp16 (HGMMA); V's mean added back in
the epilogue when the recipe smoothed V.

One program computes ``BLOCK_M`` query rows of one (batch, query head) against all visible keys,
streamed in tiles of ``BLOCK_N``. The scales are folded into existing arithmetic:

* the exp2 argument: scores in log2 units are ``s = (q8·k8ᵀ) · c`` with ``c = q_scale · softmax_scale ·
  log2 e · k_scale`` (``k_scale`` is one scalar per key tile because ``BLOCK_N`` divides the recipe's
  ``k_block``). As ``c > 0`` the row max is taken on the raw products, and each score costs one
  FMA: ``qk · c - m``;
* P: ``p_scale · exp2(s - m)`` is computed as ``exp2(s - (m - log2 p_scale))``, so P arrives at the
  rounding to E4M3 (or fp16, with ``p_scale`` 1) already multiplied; the row sum ``l`` carries the
  factor too;
* the epilogue: ``out = acc · v_scale / l (+ v_mean)``, ``v_scale`` one value per channel.

Causal masking is bottom-right aligned (query ``i`` sees keys ``j <= i + Sk - Sq``); a row that sees no
key gets zeros and a log-sum-exp of -inf. Key tiles fully inside the visible range run without masks;
only the tiles that cross ``Sk`` or the diagonal apply them.

Hopper's FP8 wgmma accumulates in reduced precision. Two knobs bound how far it runs unpromoted:
the P·V partial sums are added to an fp32 accumulator every ``PROMOTE_EVERY`` key tiles (``0``: never,
the whole row accumulates in the wgmma accumulator), and ``QK_IMPRECISE_ACC`` / ``PV_IMPRECISE_ACC``
are ``tl.dot``'s ``max_num_imprecise_acc`` inside one tile (None: Triton's default, no promotion).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fp8attn.kernels.grid_dependency import programmatic_launch, signal_next_grid, wait_for_previous_grid
from fp8attn.kernels.key_order import pv_key_order
from fp8attn.kernels.launch import Launch
from fp8attn.kernels.sizes import cdiv, sm_count
from fp8attn.quantize import BufferLayout, QuantizedQKV, padded_head_dim
from fp8attn.recipe import Recipe

LOG2_E = math.log2(math.e)
LN_2: tl.constexpr = tl.constexpr(math.log(2.0))


@dataclass(frozen=True)
class ForwardConfig:
    """Launch parameters of the forward kernel. ``block_n`` also fixes where P is quantized."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    promote_every: int = 1
    qk_imprecise_acc: int | None = None
    pv_imprecise_acc: int | None = None


SHORT_KEYS = 1024
"""At most this many keys a query block's loop is a few tiles long: :func:`forward_config`'s short-key tiles."""
PREFILL_QUERIES = 64
"""At least this many queries (a whole query block of one warpgroup): :func:`forward_config`'s prefill tiles."""


def forward_config(head_dim_pad: int, k_block: int, causal: bool = False, pv_fp16: bool = False,
                   qk_int8: bool = False, seqlen_k: int | None = None, v_smoothed: bool = False,
                   seqlen_q: int | None = None) -> ForwardConfig:
    """The tile configuration used for a padded head dimension and, where given, a key count (one definition
    for kernel and emulation: the emulation's softmax step is its ``block_n``).

    Chosen from measurements on an H100 (``benchmarks/config_study.py``, docs/perf-notes.md) among
    configurations that do not spill registers on sm_90 (``fp8attn inspect`` shows it): one warpgroup
    on 64 query rows beat two warpgroups on 128 rows by 9-39 % at D <= 128 and on causal D=256; on
    non-causal D=256 it lost 1-9 % with E4M3 Q·Kᵀ and won 1-10 % with INT8 Q·Kᵀ (S 16k, 4k; perf-notes
    section 15); with fp16 P·V it spills at D=256. P·V is promoted to fp32 every key tile up to D=128
    (on an H100 at S=16k this cost 2-4 % of speed and cut the accumulator's error from 0.54-0.68 % to
    0.42-0.59 %); at D=256 the promotion's second accumulator halves the speed through register
    pressure, so the wgmma accumulator keeps the row (docs/perf-notes.md, "P·V promotion").

    With at most :data:`SHORT_KEYS` keys (an H200, E4M3, perf-notes section 48): under a causal mask at
    D <= 64, 64-key tiles (+16 % at 512 keys, +7 % at 1024, even at 2048: a 64-row program's diagonal tile
    half as wide, on an exp-bound kernel); at D=256 one warpgroup without a mask too (+9 % at 512 keys).
    At D=128 with V smoothed (``v_smoothed``, E4M3 P·V) and at least ``PREFILL_QUERIES`` queries, P·V
    accumulates in the wgmma's own accumulator there, as at D=256, on 64-key tiles: 158 registers instead of
    255, so three programs an SM instead of two (+11 to +23 % at 512 and 1024 keys on an H200, section 49;
    decoding, one query row, came out 11 % slower and keeps the tiles of long keys). The promotion guards V
    with a large per-channel mean (section 35), which smoothing removes: the accumulation model puts the
    unpromoted accumulator within 1e-4 of the promoted one on smoothed V at these lengths.
    ``seqlen_k`` None: the configuration of long keys; ``seqlen_q`` None: fewer than ``PREFILL_QUERIES``.
    """
    short_keys = seqlen_k is not None and seqlen_k <= SHORT_KEYS
    prefill = seqlen_q is not None and seqlen_q >= PREFILL_QUERIES
    unpromoted_short = short_keys and prefill and head_dim_pad == 128 and v_smoothed and not pv_fp16
    narrow_tiles = head_dim_pad > 128 or (head_dim_pad <= 64 and causal and short_keys) or unpromoted_short
    block_n = min(64 if narrow_tiles else 128, k_block)
    one_warpgroup = head_dim_pad <= 128 or ((causal or qk_int8 or short_keys) and not pv_fp16)
    return ForwardConfig(block_m=64 if one_warpgroup else 128, block_n=block_n, num_warps=4 if one_warpgroup else 8,
                         num_stages=3, promote_every=0 if head_dim_pad > 128 or unpromoted_short else 1)


def layout_forward_config(qkv: QuantizedQKV, causal: bool) -> ForwardConfig:
    """:func:`forward_config` for the Triton kernel on ``qkv``: its padded head dim, key block, operand formats,
    key and query counts and whether its V is smoothed (``qkv.v_mean``)."""
    return forward_config(qkv.q.shape[-1], qkv.k_block, causal, pv_fp16=qkv.v_t.dtype == torch.float16,
                          qk_int8=qkv.q.dtype == torch.int8, seqlen_k=qkv.seqlen_k, v_smoothed=qkv.v_mean is not None,
                          seqlen_q=qkv.seqlen_q)


@triton.jit
def _mask_scores(qk, offs_m, offs_n, seqlen_k, diagonal, CAUSAL: tl.constexpr):
    """-inf for keys past ``seqlen_k`` and, when CAUSAL, keys after a query's diagonal."""
    visible = offs_n[None, :] < seqlen_k
    if CAUSAL:
        visible = visible & (offs_n[None, :] <= offs_m[:, None] + diagonal)
    return tl.where(visible, qk, float("-inf"))


@triton.jit
def _softmax_weights(qk, c, m_tile, m_i, LOG2_P_SCALE: tl.constexpr):
    """One key tile of the online softmax on raw products ``qk`` with per-row factor ``c`` (> 0), less
    the row sum.

    ``m_tile`` is the tile's row max in log2 units, ``max(qk) * c``, or the max over a wider tile that
    ``qk`` is a part of (then the second part's call finds ``alpha == 1``). Returns P (already times
    2**LOG2_P_SCALE), the accumulator's rescale ``alpha`` and the new row max.
    """
    # Scores in log2 units are qk * c with c > 0 (the scale is checked positive), so the row max
    # is taken on the raw products and each score costs one FMA: qk * c - m.
    m_new = tl.maximum(m_i, m_tile)
    # A row that has seen no visible key keeps m = -inf; use 0 there so exp2 gives 0, not NaN.
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_use)
    # P comes out already multiplied by P_SCALE (2**LOG2_P_SCALE): the factor rides in the exponent.
    p = tl.math.exp2(qk * c[:, None] - (m_use - LOG2_P_SCALE)[:, None])
    return p, alpha, m_use


@triton.jit
def _softmax_step(qk, c, m_tile, m_i, l_i, LOG2_P_SCALE: tl.constexpr):
    """:func:`_softmax_weights` and the new row sum ``l_i·alpha + Σ P`` (of P in fp32): returns P,
    ``alpha``, the new row max and the new row sum."""
    p, alpha, m_use = _softmax_weights(qk, c, m_tile, m_i, LOG2_P_SCALE)
    return p, alpha, m_use, l_i * alpha + tl.sum(p, axis=1)


@triton.jit
def _accumulate_pv(acc, acc_part, p, alpha, v, tile, PROMOTE_EVERY: tl.constexpr, PV_IMPRECISE_ACC: tl.constexpr,
                   PV_FP16: tl.constexpr):
    """``acc·alpha + P·V`` for key tile number ``tile``, with the recipe's P rounding and the promotion
    of FP8 partial sums to the fp32 accumulator every PROMOTE_EVERY tiles (see the module docstring).
    E4M3 ``v`` has its keys in P·V operand order (:mod:`fp8attn.kernels.key_order`): P follows it."""
    if PV_FP16:
        acc = tl.dot(p.to(tl.float16), v, acc * alpha[:, None])  # fp16 wgmma accumulates in fp32
    else:
        p8 = pv_key_order(p.to(tl.float8e4nv))
        if PROMOTE_EVERY == 0:
            acc = tl.dot(p8, v, acc * alpha[:, None], max_num_imprecise_acc=PV_IMPRECISE_ACC)
        elif PROMOTE_EVERY == 1:
            acc = acc * alpha[:, None] + tl.dot(p8, v, max_num_imprecise_acc=PV_IMPRECISE_ACC)
        else:
            acc = acc * alpha[:, None]
            acc_part = tl.dot(p8, v, acc_part * alpha[:, None], max_num_imprecise_acc=PV_IMPRECISE_ACC)
            if tile % PROMOTE_EVERY == PROMOTE_EVERY - 1:
                acc += acc_part
                acc_part = tl.zeros_like(acc_part)
    return acc, acc_part


@triton.jit
def _attend_kv_tiles(
    acc, acc_part, l_i, m_i, q, row_scale, offs_m,
    k_base, vt_base, k_scale_base, stride_kn, stride_vd,
    lo, hi, seqlen_k, diagonal,
    BLOCK_N: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, K_BLOCK: tl.constexpr,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, LOG2_P_SCALE: tl.constexpr, PROMOTE_EVERY: tl.constexpr,
    QK_IMPRECISE_ACC: tl.constexpr, PV_IMPRECISE_ACC: tl.constexpr, QK_INT8: tl.constexpr, PV_FP16: tl.constexpr,
):
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    for start_n in tl.range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :])
        k_scale = tl.load(k_scale_base + start_n // K_BLOCK)  # one scale per tile: BLOCK_N divides K_BLOCK
        if QK_INT8:
            qk = tl.dot(q, tl.trans(k)).to(tl.float32)  # exact int32 accumulation
        else:
            qk = tl.dot(q, tl.trans(k), max_num_imprecise_acc=QK_IMPRECISE_ACC)
        if MASKED:
            qk = _mask_scores(qk, offs_m, offs_n, seqlen_k, diagonal, CAUSAL)
        c = row_scale * k_scale
        p, alpha, m_i, l_i = _softmax_step(qk, c, tl.max(qk, axis=1) * c, m_i, l_i, LOG2_P_SCALE)
        v = tl.trans(tl.load(vt_base + offs_d[:, None] * stride_vd + offs_n[None, :]))
        acc, acc_part = _accumulate_pv(acc, acc_part, p, alpha, v, start_n // BLOCK_N, PROMOTE_EVERY,
                                       PV_IMPRECISE_ACC, PV_FP16)
    return acc, acc_part, l_i, m_i


@triton.jit
def _key_range(start_m, seqlen_q, seqlen_k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Keys of the query rows ``[start_m, start_m + BLOCK_M)``: ``[0, hi)`` holds every visible key,
    ``[0, full_hi)`` (whole tiles) is visible to all rows. Also returns the causal diagonal offset."""
    diagonal = seqlen_k - seqlen_q
    if CAUSAL:
        hi = tl.maximum(tl.minimum(seqlen_k, start_m + BLOCK_M + diagonal), 0)
        full_hi = tl.maximum(tl.minimum(seqlen_k, start_m + diagonal + 1), 0) // BLOCK_N * BLOCK_N
    else:
        hi = seqlen_k
        full_hi = seqlen_k // BLOCK_N * BLOCK_N
    return full_hi, hi, diagonal


@triton.jit
def _store_output(acc, l_i, m_i, v_scale, v_mean, out_ptrs, lse_ptrs, m_ok, d_ok, LOG2_P_SCALE: tl.constexpr,
                  SMOOTH_V: tl.constexpr):
    """``out = acc · v_scale / l (+ v_mean)`` and the natural-log LSE; rows that saw no key get zeros
    and -inf."""
    seen = l_i > 0
    inv_l = tl.where(seen, 1.0 / tl.where(seen, l_i, 1.0), 0.0)  # l_i carries P_SCALE: it divides out here
    out = acc * inv_l[:, None] * v_scale[None, :]
    if SMOOTH_V:
        # Softmax rows sum to one, so V's mean comes back whole (rows that saw no key stay zero).
        out = tl.where(seen[:, None], out + v_mean[None, :], 0.0)
    tl.store(out_ptrs, out.to(out_ptrs.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0)) - LOG2_P_SCALE) * LN_2, float("-inf"))
    tl.store(lse_ptrs, lse, mask=m_ok)


@triton.jit
def _store_partial(acc, l_i, m_i, out_ptrs, lse_ptrs, m_ok):
    """One key range's normalised output ``acc / l`` (fp32, before V's scale) and its LSE in log2 units
    (``P_SCALE`` included, as in ``l``); rows that saw no key of the range get zeros and -inf."""
    seen = l_i > 0
    l_safe = tl.where(seen, l_i, 1.0)
    tl.store(out_ptrs, acc * tl.where(seen, 1.0 / l_safe, 0.0)[:, None], mask=m_ok[:, None])
    tl.store(lse_ptrs, tl.where(seen, m_i + tl.math.log2(l_safe), float("-inf")), mask=m_ok)


@triton.jit
def _query_block(CAUSAL: tl.constexpr):
    """This program's query block (grid axis 0). Under a causal mask a block's work grows with its
    index, so the last blocks start first: the programs still running when the grid drains are the
    short ones, not the longest."""
    pid = tl.program_id(0)
    if CAUSAL:
        pid = tl.num_programs(0) - 1 - pid
    return pid


# Triton compiles an integer argument equal to 1 as a constant: with seqlen_k == 1 the masks fold, whole
# register tiles of P become constant zeros, and the fp8 packing ptxas makes of those constants puts
# garbage bytes into P, which only Vᵀ's zero padding hid from the output (a tensor-core row sum added them
# up on the H200: docs/perf-notes.md, section 37). The sequence lengths stay runtime values.
@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "split_keys"])
def _fp8_attention_fwd_kernel(
    q_ptr, k_ptr, vt_ptr, q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
    seqlen_q, seqlen_k, split_keys, num_q_heads, num_kv_heads, num_q_scale_blocks, num_k_scale_blocks, qk_scale_log2,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vd,
    stride_ob, stride_oh, stride_om,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    Q_BLOCK: tl.constexpr, K_BLOCK: tl.constexpr, CAUSAL: tl.constexpr, LOG2_P_SCALE: tl.constexpr,
    PROMOTE_EVERY: tl.constexpr, QK_IMPRECISE_ACC: tl.constexpr, PV_IMPRECISE_ACC: tl.constexpr,
    QK_INT8: tl.constexpr, PV_FP16: tl.constexpr, SMOOTH_V: tl.constexpr, GRID_DEPENDENCY: tl.constexpr,
    SPLIT_KV: tl.constexpr, PACK_GQA: tl.constexpr,
):
    """With SPLIT_KV, grid axis 2 splits the keys in ranges of ``split_keys`` (whole tiles); each program
    writes its range's normalised partial output and log2-domain LSE to ``out_ptr (splits, B·Hq, Sq, Dp)``
    and ``lse_ptr (splits, B·Hq, Sq)`` for :mod:`fp8attn.kernels.key_split_merge`. With PACK_GQA a program's
    rows are the query heads of one KV head (innermost) at consecutive query positions: grid axis 1 runs
    over (batch, KV head), and each key tile is loaded once for the whole group."""
    if SPLIT_KV:
        signal_next_grid(GRID_DEPENDENCY)  # the merge launch's programs wait for this grid anyway
    start_row = _query_block(CAUSAL) * BLOCK_M
    group = num_q_heads // num_kv_heads
    if PACK_GQA:  # grid axis 1 is (batch, KV head); rows are (query position, query head of the group)
        kv_bh = tl.program_id(1)
        b = kv_bh // num_kv_heads
        h_kv = kv_bh % num_kv_heads
        rows = start_row + tl.arange(0, BLOCK_M)
        offs_m = rows // group
        h = h_kv * group + rows % group
        m_ok = rows < seqlen_q * group
        start_m = start_row // group  # the block's first query position
    else:
        bh = tl.program_id(1)
        b = bh // num_q_heads
        h = bh % num_q_heads
        h_kv = h // group
        kv_bh = b * num_kv_heads + h_kv
        offs_m = start_row + tl.arange(0, BLOCK_M)
        m_ok = offs_m < seqlen_q
        start_m = start_row
    bh = b * num_q_heads + h  # per row where the heads are packed
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    wait_for_previous_grid(GRID_DEPENDENCY)  # everything below reads the quantize launch's output
    q = tl.load(
        q_ptr + (b * stride_qb + h * stride_qh + offs_m * stride_qm)[:, None] + offs_d[None, :],
        mask=m_ok[:, None], other=0.0,
    )
    q_scale = tl.load(q_scale_ptr + bh * num_q_scale_blocks + offs_m // Q_BLOCK, mask=m_ok, other=1.0)
    row_scale = q_scale * qk_scale_log2

    # Packed, a block spans fewer positions than rows: BLOCK_M bounds them, and the masks do the rest.
    full_hi, hi, diagonal = _key_range(start_m, seqlen_q, seqlen_k, BLOCK_M, BLOCK_N, CAUSAL)
    unmasked_lo = 0
    masked_lo = full_hi
    if SPLIT_KV:  # this program's share of the keys: [lo, lo + split_keys), on tile boundaries
        # split_keys is a runtime value of unknown divisibility: without the hint Vᵀ's key-contiguous
        # tiles lose their 16-byte loads and the pipeline (2.6x slower per tile on the H200).
        lo = tl.multiple_of(tl.program_id(2) * split_keys, BLOCK_N)
        unmasked_lo = lo
        masked_lo = tl.maximum(full_hi, lo)
        full_hi = tl.minimum(full_hi, lo + split_keys)
        hi = tl.minimum(hi, lo + split_keys)

    k_base = k_ptr + b * stride_kb + h_kv * stride_kh
    vt_base = vt_ptr + b * stride_vb + h_kv * stride_vh
    k_scale_base = k_scale_ptr + kv_bh * num_k_scale_blocks

    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    acc_part = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    acc, acc_part, l_i, m_i = _attend_kv_tiles(
        acc, acc_part, l_i, m_i, q, row_scale, offs_m, k_base, vt_base, k_scale_base, stride_kn, stride_vd,
        unmasked_lo, full_hi, seqlen_k, diagonal,
        BLOCK_N, HEAD_DIM_PAD, K_BLOCK, CAUSAL, False, LOG2_P_SCALE, PROMOTE_EVERY, QK_IMPRECISE_ACC, PV_IMPRECISE_ACC,
        QK_INT8, PV_FP16,
    )
    acc, acc_part, l_i, m_i = _attend_kv_tiles(
        acc, acc_part, l_i, m_i, q, row_scale, offs_m, k_base, vt_base, k_scale_base, stride_kn, stride_vd,
        masked_lo, hi, seqlen_k, diagonal,
        BLOCK_N, HEAD_DIM_PAD, K_BLOCK, CAUSAL, True, LOG2_P_SCALE, PROMOTE_EVERY, QK_IMPRECISE_ACC, PV_IMPRECISE_ACC,
        QK_INT8, PV_FP16,
    )
    if PROMOTE_EVERY > 1:
        acc += acc_part
    if SPLIT_KV:
        batch_heads = tl.num_programs(1) * group if PACK_GQA else tl.num_programs(1)  # B·Hq
        part = tl.program_id(2) * batch_heads + bh
        _store_partial(acc, l_i, m_i, out_ptr + (part * seqlen_q + offs_m)[:, None] * HEAD_DIM_PAD + offs_d[None, :],
                       lse_ptr + part * seqlen_q + offs_m, m_ok)
    else:
        v_scale = tl.load(v_scale_ptr + kv_bh * HEAD_DIM_PAD + offs_d)
        v_mean = tl.load(v_mean_ptr + kv_bh * HEAD_DIM_PAD + offs_d) if SMOOTH_V else v_scale
        out_ptrs = out_ptr + (b * stride_ob + h * stride_oh + offs_m * stride_om)[:, None] + offs_d[None, :]
        _store_output(acc, l_i, m_i, v_scale, v_mean, out_ptrs, lse_ptr + bh * seqlen_q + offs_m, m_ok,
                      offs_d < HEAD_DIM, LOG2_P_SCALE, SMOOTH_V)


MIN_TILES_PER_KEY_SPLIT = 4
"""Fewest key tiles a program's share of the keys may hold when :func:`key_splits` splits them."""
MIN_TILES_PER_KEY_SPLIT_PARTIAL_BLOCK = 2
"""The same where a query block holds fewer rows than it has (decoding: a few query rows a head, or the query
heads of a KV head at one position): a tile then costs little beyond its loads. On the H200 (twentieth session,
``docs/measurements/gqa_packing/``), B1 H32/8 Sq1 D128: at Sk1k four ranges of two tiles took 6.5 µs against
two of four's 8.1, at Sk4k sixteen of two 8.6 against eight of four's 9.1; with full blocks (Sq16 packed, the
mission shape) ranges of four tiles or more were faster."""
MAX_KEY_SPLITS = 32
"""Most key ranges per query block (the merge launch reads one partial result per range)."""


def key_splits(programs: int, key_tiles: int, program_slots: int, min_tiles: int = MIN_TILES_PER_KEY_SPLIT) -> int:
    """How many ranges to split each query block's keys into: as many as keep ``programs · splits`` within one
    wave of ``program_slots`` (SMs times the programs one SM holds), each range at least ``min_tiles`` tiles
    (1: no split).

    Splitting pays where the query blocks alone leave SMs idle (decoding: one query row a head; few heads
    of a long sequence); its price is one more launch and a round trip of fp32 partial results. On the
    H200 the fastest split of every decoding shape measured filled exactly one wave, and the next larger
    one (a second, partial wave) was up to 1.6x slower (docs/measurements/split_kv_h200/)."""
    splits = min(program_slots // programs, key_tiles // min_tiles, MAX_KEY_SPLITS)
    return cdiv(key_tiles, cdiv(key_tiles, splits)) if splits > 1 else 1


def programs_per_sm(cfg: ForwardConfig, head_dim_pad: int) -> int:
    """Programs of the Triton kernel one SM holds (``fp8attn inspect``: at D <= 128 one warpgroup takes 253-255
    registers a thread and 107.5 KB of shared memory, so two fit; at D=256 132 KB, or two warpgroups, one)."""
    return 2 if head_dim_pad <= 128 and cfg.num_warps == 4 else 1


def packs_query_heads(num_q_heads: int, num_kv_heads: int, seqlen_q: int, block_m: int) -> bool:
    """Whether the Triton kernel packs the query heads of a KV head into one block's rows: grouped heads
    with fewer query positions than a block has rows (decoding), where one head's rows would leave the
    block mostly empty and every query head would load its KV head's tiles for itself."""
    return num_q_heads != num_kv_heads and seqlen_q < block_m


def query_blocks(batch: int, num_q_heads: int, num_kv_heads: int, seqlen_q: int, block_m: int) -> int:
    """Programs of the Triton kernel per key range: blocks of ``block_m`` rows over every (batch, head, query)."""
    if packs_query_heads(num_q_heads, num_kv_heads, seqlen_q, block_m):
        return batch * num_kv_heads * cdiv(seqlen_q * (num_q_heads // num_kv_heads), block_m)
    return batch * num_q_heads * cdiv(seqlen_q, block_m)


def planned_key_splits(batch: int, num_q_heads: int, num_kv_heads: int, seqlen_q: int, seqlen_k: int, head_dim: int,
                       recipe: Recipe, causal: bool, device: torch.device, v_smoothed: bool | None = None) -> int:
    """:func:`key_splits` for a call of this shape (``head_dim`` before padding) in ``recipe``'s layout on
    ``device``, with the Triton kernel's tiles: ranges of at least :data:`MIN_TILES_PER_KEY_SPLIT` tiles, or
    :data:`MIN_TILES_PER_KEY_SPLIT_PARTIAL_BLOCK` where a query block holds fewer rows than it has.
    ``v_smoothed``: whether the layout's V is smoothed (None: ``recipe.smooth_v``; caller-quantized V is where
    a ``v_mean`` came with it)."""
    head_dim_pad = padded_head_dim(head_dim)
    cfg = forward_config(head_dim_pad, recipe.k_block, causal, pv_fp16=recipe.pv_format == "fp16",
                         qk_int8=recipe.qk_format == "int8", seqlen_k=seqlen_k, seqlen_q=seqlen_q,
                         v_smoothed=recipe.smooth_v if v_smoothed is None else v_smoothed)
    programs = query_blocks(batch, num_q_heads, num_kv_heads, seqlen_q, cfg.block_m)
    slots = sm_count(device) * programs_per_sm(cfg, head_dim_pad)
    group = num_q_heads // num_kv_heads if packs_query_heads(num_q_heads, num_kv_heads, seqlen_q, cfg.block_m) else 1
    partial_block = seqlen_q * group < cfg.block_m
    min_tiles = MIN_TILES_PER_KEY_SPLIT_PARTIAL_BLOCK if partial_block else MIN_TILES_PER_KEY_SPLIT
    return key_splits(programs, cdiv(seqlen_k, cfg.block_n), slots, min_tiles)


def key_split_buffers(batch: int, num_q_heads: int, num_kv_heads: int, seqlen_q: int, seqlen_k: int, head_dim: int,
                      recipe: Recipe, causal: bool, device: torch.device,
                      v_smoothed: bool | None = None) -> BufferLayout:
    """The partial-result buffers a call of this shape needs (none where :func:`planned_key_splits` is 1),
    to carve from the call's workspace: ``key_split_out (splits, B·Hq, Sq, Dp)`` and ``key_split_lse
    (splits, B·Hq, Sq)``, fp32. :func:`forward_launches` splits the keys when ``qkv.extra`` holds them."""
    splits = planned_key_splits(batch, num_q_heads, num_kv_heads, seqlen_q, seqlen_k, head_dim, recipe, causal, device,
                                v_smoothed)
    if splits == 1:
        return {}
    rows = (splits, batch * num_q_heads, seqlen_q)
    return {"key_split_out": ((*rows, padded_head_dim(head_dim)), torch.float32),
            "key_split_lse": (rows, torch.float32)}


def forward_launches(
    qkv: QuantizedQKV, out: torch.Tensor, lse: torch.Tensor, *, causal: bool, softmax_scale: float, p_scale: float,
    exact_lse: bool = True,
) -> list[Launch]:
    """The launches that write ``out (B, Hq, Sq, D)`` and ``lse (B, Hq, Sq)`` for ``qkv``: the forward kernel
    with its keys split into ranges and a merge (:mod:`fp8attn.kernels.key_split_merge`) where ``qkv.extra``
    holds :func:`key_split_buffers`, else :func:`forward_launch`."""
    if "key_split_out" not in qkv.extra:
        return [forward_launch(qkv, out, lse, causal=causal, softmax_scale=softmax_scale, p_scale=p_scale,
                               exact_lse=exact_lse)]
    return split_forward_launches(qkv, out, lse, qkv.extra["key_split_out"], qkv.extra["key_split_lse"],
                                  causal=causal, softmax_scale=softmax_scale, p_scale=p_scale)


def split_forward_launches(
    qkv: QuantizedQKV, out: torch.Tensor, lse: torch.Tensor, partial_out: torch.Tensor, partial_lse: torch.Tensor, *,
    causal: bool, softmax_scale: float, p_scale: float, config: ForwardConfig | None = None,
) -> list[Launch]:
    """The forward kernel on ``splits = partial_out.shape[0]`` key ranges of whole tiles (the last range may
    be shorter), writing ``partial_out (splits, B·Hq, Sq, Dp)`` and ``partial_lse (splits, B·Hq, Sq)``, then
    the launch that merges them into ``out`` and ``lse``. The emulation is
    ``attention_emulated(..., key_split=split_keys(...))`` (:func:`split_keys`)."""
    from fp8attn.kernels.key_split_merge import merge_launch  # imports this module

    cfg = config or layout_forward_config(qkv, causal)
    splits = partial_out.shape[0]
    keys = split_keys(qkv.seqlen_k, cfg.block_n, splits)
    forward = _triton_launch(qkv, partial_out, partial_lse, causal=causal, softmax_scale=softmax_scale,
                             p_scale=p_scale, cfg=cfg, split=(splits, keys))
    return [forward, merge_launch(qkv, partial_out, partial_lse, out, lse, p_scale=p_scale)]


KEY_COUNT_ARGUMENTS = ("seqlen_k", "split_keys")
"""The Triton kernel's arguments that follow the key count, none of which it specializes on: a
:class:`~fp8attn.kernels.launch.LaunchPlan` of :func:`forward_launches` built with them as its ``runtime_ints``
replays for another key count that keeps the split count (a KV cache as it grows)."""


def key_count_arguments(seqlen_k: int, splits: int, cfg: ForwardConfig) -> dict[str, int]:
    """:data:`KEY_COUNT_ARGUMENTS`' values for ``seqlen_k`` keys in ``splits`` ranges (keys per range 0 unsplit)."""
    keys_per_split = split_keys(seqlen_k, cfg.block_n, splits) if splits > 1 else 0
    return dict(zip(KEY_COUNT_ARGUMENTS, (seqlen_k, keys_per_split), strict=True))


def split_keys(seqlen_k: int, block_n: int, splits: int) -> int:
    """Keys per range when ``seqlen_k`` keys in tiles of ``block_n`` are split into ``splits`` ranges of
    whole tiles, none empty."""
    tiles = cdiv(seqlen_k, block_n)
    per_split = cdiv(tiles, splits)
    if cdiv(tiles, per_split) != splits:
        raise ValueError(f"{tiles} key tiles do not split into {splits} non-empty ranges of whole tiles")
    return per_split * block_n


def forward_launch(
    qkv: QuantizedQKV, out: torch.Tensor, lse: torch.Tensor, *, causal: bool, softmax_scale: float, p_scale: float,
    config: ForwardConfig | None = None, exact_lse: bool = True,
) -> Launch:
    """The forward kernel's launch for ``qkv`` writing ``out (B, Hq, Sq, D)`` and ``lse (B, Hq, Sq)``.

    Without a ``config``, shapes where the warp-specialized Gluon kernel is faster on Hopper get that
    kernel instead (same recipe with one softmax step per two key tiles:
    :mod:`fp8attn.kernels.attention_fwd_hopper`); ``exact_lse=False`` lets it sum P's rows on the tensor
    cores, where the LSE it writes is not exact (``hopper_forward_launch``). This kernel's LSE always is.
    """
    if config is None:
        from fp8attn.kernels import attention_fwd_hopper  # imports this module: resolved at call time

        if attention_fwd_hopper.hopper_kernel_applies(qkv, causal):
            return attention_fwd_hopper.hopper_forward_launch(qkv, out, lse, causal=causal,
                                                              softmax_scale=softmax_scale, p_scale=p_scale,
                                                              exact_lse=exact_lse)
    cfg = config or layout_forward_config(qkv, causal)
    return _triton_launch(qkv, out, lse, causal=causal, softmax_scale=softmax_scale, p_scale=p_scale, cfg=cfg)


def _triton_launch(qkv: QuantizedQKV, out: torch.Tensor, lse: torch.Tensor, *, causal: bool, softmax_scale: float,
                   p_scale: float, cfg: ForwardConfig, split: tuple[int, int] | None = None) -> Launch:
    """The Triton kernel's launch; ``split = (ranges, keys per range)`` makes it write partial results
    (``out``, ``lse``: the partial buffers of :func:`split_forward_launches`)."""
    batch, num_q_heads, seqlen_q, dp = qkv.q.shape
    if qkv.k_block % cfg.block_n:
        raise ValueError(f"block_n={cfg.block_n} must divide the recipe's k_block={qkv.k_block}")
    splits, keys_per_split = split or (1, 0)
    num_kv_heads = qkv.k.shape[1]
    pack = packs_query_heads(num_q_heads, num_kv_heads, seqlen_q, cfg.block_m)
    pdl = programmatic_launch(qkv.q.device)  # starts while the launch that wrote qkv drains
    out_strides = (0, 0, 0) if split else out.stride()[:3]
    args = (
        qkv.q, qkv.k, qkv.v_t, qkv.q_scale, qkv.k_scale, qkv.v_scale,
        qkv.v_mean if qkv.v_mean is not None else qkv.v_scale, out, lse,
        seqlen_q, qkv.seqlen_k, keys_per_split, num_q_heads, num_kv_heads, qkv.q_scale.shape[-1],
        qkv.k_scale.shape[-1], softmax_scale * LOG2_E,
        *qkv.q.stride()[:3], *qkv.k.stride()[:3], *qkv.v_t.stride()[:3], *out_strides,
    )
    constexprs = dict(
        HEAD_DIM=qkv.head_dim, HEAD_DIM_PAD=dp, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        Q_BLOCK=qkv.q_block, K_BLOCK=qkv.k_block, CAUSAL=causal, LOG2_P_SCALE=math.log2(p_scale),
        PROMOTE_EVERY=cfg.promote_every,
        QK_IMPRECISE_ACC=cfg.qk_imprecise_acc, PV_IMPRECISE_ACC=cfg.pv_imprecise_acc,
        QK_INT8=qkv.q.dtype == torch.int8, PV_FP16=qkv.v_t.dtype == torch.float16, SMOOTH_V=qkv.v_mean is not None,
        GRID_DEPENDENCY=pdl, SPLIT_KV=split is not None, PACK_GQA=pack,
    )
    group = num_q_heads // num_kv_heads if pack else 1
    grid = (cdiv(seqlen_q * group, cfg.block_m), batch * num_q_heads // group, splits)
    return Launch(_fp8_attention_fwd_kernel, grid, args, constexprs,
                  dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=pdl))


def attention_forward(
    qkv: QuantizedQKV,
    *,
    causal: bool,
    softmax_scale: float,
    p_scale: float,
    out_dtype: torch.dtype,
    config: ForwardConfig | None = None,
    key_splits: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel on quantized inputs, its keys split into ``key_splits`` ranges
    (:func:`split_forward_launches`) when that is more than 1.

    Returns ``out (B, Hq, Sq, D)`` in ``out_dtype`` and ``lse (B, Hq, Sq)`` fp32 (natural log).
    """
    batch, num_q_heads, seqlen_q, dp = qkv.q.shape
    device = qkv.q.device
    out = torch.empty((batch, num_q_heads, seqlen_q, qkv.head_dim), device=device, dtype=out_dtype)
    lse = torch.empty((batch, num_q_heads, seqlen_q), device=device, dtype=torch.float32)
    if key_splits == 1:
        launches = [forward_launch(qkv, out, lse, causal=causal, softmax_scale=softmax_scale, p_scale=p_scale,
                                   config=config)]
    else:
        partial_lse = torch.empty((key_splits, batch * num_q_heads, seqlen_q), device=device, dtype=torch.float32)
        partial_out = torch.empty((*partial_lse.shape, dp), device=device, dtype=torch.float32)
        launches = split_forward_launches(qkv, out, lse, partial_out, partial_lse, causal=causal,
                                          softmax_scale=softmax_scale, p_scale=p_scale, config=config)
    for launch in launches:
        launch.run()
    return out, lse
