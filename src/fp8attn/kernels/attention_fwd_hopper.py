"""The forward kernel for Hopper in Gluon: warp-specialized, TMA loads, explicit wgmma.

Same recipe and arithmetic as :mod:`fp8attn.kernels.attention_fwd` (whose docstring explains the scale
folding), with one difference in where P is rounded: this kernel takes the key tiles (``BLOCK_N`` keys,
one K scale each) two at a time as one online-softmax step, so the running max, the rescale of the
accumulator and P's rounding to E4M3 happen once per ``2·BLOCK_N`` keys.
:func:`hopper_softmax_keys` says how many; ``fp8attn.reference.attention_emulated`` with that
``block_n`` is this kernel's exact emulation (``benchmarks/wgmma_study.py``, tests/test_hopper_kernel.py).
What else differs is the schedule, which ``tl.dot``-level Triton does not express:

* persistent programs, one per SM: each walks query blocks of 128 rows of one (batch, head) as two
  consumer warpgroups of 64 rows, plus a producer warp (``gl.warp_specialize``, registers rebalanced with
  ``setmaxnreg``: 240 per consumer thread, 24 per producer thread). Without a mask the blocks go head
  after head (a head's K and V stay in L2); under a causal mask longest first across heads, since with a
  fixed stride through head-ordered blocks a program keeps blocks of one length;
* the producer copies the key tiles (K rows and Vᵀ columns), two at a time, by TMA into a ring of
  ``NUM_STAGES`` (even) shared-memory slots that runs on from one query block to the next, and both Q
  tiles of a block after its first pair (so that pair loads while the consumers finish the block before,
  whose Q tiles they hold to its end); one ``ready`` mbarrier per pair of slots, and one ``empty``
  mbarrier per pair and consumer, which that consumer arrives on once its P·V has read the pair (each
  wait and arrive costs the warpgroup a named barrier: one per pair, not per tile). Both consumers read
  every tile once, so each K/V byte serves 128 rows (the Triton kernel runs 64-row programs);
* per pair of tiles a consumer issues both score matmuls, takes one row max over both (each half
  scaled by its own K scale), and chains both P·V products in one wgmma accumulator: half the row
  reductions, rescales and waits per key of a one-tile step; whole pairs run without mask selects;
* the consumers take turns at the tensor cores (FA3's ping-pong, two named barriers): one issues its
  P·V of a pair and its score matmuls of the next while the other runs its softmax. Both walk the
  block's key tiles (under a causal mask the lower rows' last tiles are masked whole for the upper
  ones) so that their turns pair up, each passes the turn after its last P·V of a block (the other's
  last P·V runs under its epilogue), and the ring holds at least two pairs. Where the accumulator is
  not promoted (D = 256) and Q·Kᵀ is E4M3, a turn issues a pair's P·V and the next pair's score matmuls
  back to back and waits once (:func:`hopper_pipelines_pv`), so no wait splits a turn;
* the softmax's row sums come from the tensor cores, P as rounded times tiles of ones (one more wgmma
  of N = 8, with the P·V), instead of 128 FADD a pass, unless the caller reads the LSE (``exact_lse``
  of :func:`hopper_forward_launch`; the emulation's ``row_sum_of_rounded_p``).

It wins where key loops are long: at D = 256, where the Triton kernel runs one program per SM, and
since P needs no shuffles (:mod:`fp8attn.kernels.key_order`) at D = 128 too; since it is persistent also
from 1024 tokens without a mask (docs/perf-notes.md, sections 16, 26, 27, 29, 31, 33 and 34).
:func:`hopper_kernel_applies` says where the library uses it.
"""

from __future__ import annotations

import functools
import math

import torch
from triton import knobs
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from fp8attn.kernels import attention_fwd
from fp8attn.kernels.attention_fwd import LOG2_E, forward_config
from fp8attn.kernels.key_order import pv_key_order
from fp8attn.kernels.launch import Launch
from fp8attn.kernels.sizes import cdiv, sm_count
from fp8attn.quantize import QuantizedQKV

# Named barriers 14 and 15 (Triton's warp specialization uses the lowest ids): consumer WG's turn at the
# tensor cores is barrier _TURN_BARRIER + WG.
_TURN_BARRIER: gl.constexpr = gl.constexpr(14)
# Columns of the tiles of ones whose product with P sums P's rows on the tensor cores: wgmma's smallest N.
_ROW_SUM_COLUMNS: gl.constexpr = gl.constexpr(8)
# Keys one FP8 wgmma instruction sums (its K): each instruction's keys get a column of their own (_ones_tile).
_WGMMA_K: gl.constexpr = gl.constexpr(32)
_E4M3_ONE_BITS: gl.constexpr = gl.constexpr(0x38)

# The Triton kernel's helpers, compiled as Gluon: one definition of the masking, softmax and epilogue.
_mask_scores = gluon.jit(attention_fwd._mask_scores.fn)
_softmax_step = gluon.jit(attention_fwd._softmax_step.fn)
_softmax_weights = gluon.jit(attention_fwd._softmax_weights.fn)
_key_range = gluon.jit(attention_fwd._key_range.fn)
_store_output = gluon.jit(attention_fwd._store_output.fn)
_pv_key_order = gluon.jit(pv_key_order.fn)


@gluon.jit
def _pv_operand(p, p_layout: gl.constexpr):
    """P in E4M3 as the P·V wgmma's register operand: its keys relabelled into Vᵀ's stored order
    (:mod:`fp8attn.kernels.key_order`), which leaves every value in the thread that already holds it."""
    return gl.convert_layout(_pv_key_order(p.to(gl.float8e4nv)), p_layout, assert_trivial=True)


@gluon.jit
def _issue_kv_pair_load(k_desc, vt_desc, k_smem, v_smem, ready, ring_pair, pair, kv_row, vt_row,
                        BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr):
    """Start the TMA copies of a query block's key tiles ``2·pair`` and ``2·pair + 1`` (K rows and Vᵀ
    columns) into the adjacent ring slots of the program's ``ring_pair``-th pair, both signalling the pair's
    one ``ready`` barrier. A pair past a head's last tile reads the next head's keys or TMA's zero fill:
    loaded, never used, so the byte count stays constant."""
    slot = 2 * (ring_pair % (NUM_STAGES // 2))
    bar = ready.index(slot // 2)
    mbarrier.expect(bar, 2 * (k_desc.block_type.nbytes + vt_desc.block_type.nbytes))
    for i in gl.static_range(2):
        tile = 2 * pair + i
        tma.async_copy_global_to_shared(k_desc, [kv_row + tile * BLOCK_N, 0], bar, k_smem.index(slot + i))
        tma.async_copy_global_to_shared(vt_desc, [vt_row, tile * BLOCK_N], bar, v_smem.index(slot + i))


@gluon.jit
def _wait_for_pair(ready, t, NUM_STAGES: gl.constexpr):
    """Wait until ring tile ``t`` (even: the first of its pair) and the next have landed; return its slot
    (the pair's second tile is ``slot + 1``)."""
    slot = t % NUM_STAGES
    mbarrier.wait(ready.index(slot // 2), (t // NUM_STAGES) & 1)
    return slot


@gluon.jit
def _release_pair(empty, slot, NUM_STAGES: gl.constexpr, WG: gl.constexpr):
    """Consumer WG is done reading the pair of slots from ``slot``: the producer may refill them."""
    mbarrier.arrive(empty.index(WG * (NUM_STAGES // 2) + slot // 2), count=1)


@gluon.jit
def _take_turn(WG: gl.constexpr):
    """Consumer WG waits for its turn at the tensor cores: until the other consumer has issued its matmuls
    of the step before (:func:`_pass_turn`). A named barrier of both warpgroups (one instruction; an
    mbarrier's wait is a loop, which ptxas does not move P's packing across)."""
    gl.inline_asm_elementwise("bar.sync $1, 256;\n\tmov.b32 $0, 0;", "=r,r", [_TURN_BARRIER + WG], gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def _take_turn_after(row_sum, WG: gl.constexpr):
    """:func:`_take_turn` once ``row_sum`` (a consumer's row sums, two rows per thread: one barrier per
    thread) is computed; returns it. ptxas schedules register arithmetic freely across a barrier and would
    hoist the wait into the softmax, so the barrier's thread count is made to depend on the row sums:
    ``256 + cvt.rzi.u32(row_sum · 0)`` is 256 for every float (0 · finite is ±0, NaN converts to 0), but
    ptxas cannot fold it, and the wait stays after every exponential of the step."""
    return gl.inline_asm_elementwise(
        "{\n\t.reg .f32 zero;\n\t.reg .u32 count;\n\t"
        "mul.f32 zero, $2, 0f00000000;\n\tcvt.rzi.u32.f32 count, zero;\n\tadd.u32 count, count, 256;\n\t"
        "bar.sync $4, count;\n\tmov.b32 $0, $2;\n\tmov.b32 $1, $3;\n\t}",
        "=f,=f,f,f,r,r", [row_sum, _TURN_BARRIER + WG], gl.float32, is_pure=False, pack=2)


@gluon.constexpr_function
def _turn_after_weights_asm(words, barrier):
    """PTX of :func:`_take_turn_after_weights` for ``words`` 32-bit registers of each half of P a thread:
    outputs ``$0 … $(2·words - 1)``, inputs the same registers from ``$(2·words)``. The OR of every word
    (LOP3, three at a time) times float zero, truncated, is 0 for any bits (0 · NaN converts to 0), but
    ptxas cannot fold it: the barrier's thread count depends on every word of P."""
    words, barrier = int(words), int(barrier)
    first_input = 2 * words
    lines = ["{", ".reg .b32 any;", ".reg .f32 zero;", ".reg .u32 count;", f"mov.b32 any, ${first_input};"]
    for i in range(first_input + 1, first_input + 2 * words, 2):
        second = f"${i + 1}" if i + 1 < first_input + 2 * words else "0"
        lines.append(f"lop3.b32 any, any, ${i}, {second}, 0xFE;")
    lines += ["mov.b32 zero, any;", "mul.f32 zero, zero, 0f00000000;", "cvt.rzi.u32.f32 count, zero;",
              "add.u32 count, count, 256;", f"bar.sync {barrier}, count;"]
    lines += [f"mov.b32 ${i}, ${first_input + i};" for i in range(2 * words)]
    lines.append("}")
    return "\n\t".join(lines)


@gluon.constexpr_function
def _turn_after_weights_constraints(words):
    """Register constraints of :func:`_turn_after_weights_asm`."""
    return ",".join(["=r"] * (2 * int(words)) + ["r"] * (2 * int(words)))


@gluon.jit
def _take_turn_after_weights(p8_lo, p8_hi, WG: gl.constexpr):
    """:func:`_take_turn` once both halves of a step's P (E4M3, as P·V operands) are packed, for the
    consumers whose row sums run on the tensor cores (:func:`_row_sums`): as :func:`_take_turn_after`,
    the barrier's thread count depends on every register of P, so ptxas keeps the wait after every
    exponential of the step. Returns both halves (the same registers)."""
    PER_THREAD: gl.constexpr = p8_lo.numel // 128  # one call per thread: every E4M3 value the thread holds
    WORDS: gl.constexpr = PER_THREAD // 4
    return gl.inline_asm_elementwise(_turn_after_weights_asm(WORDS, _TURN_BARRIER + WG),
                                     _turn_after_weights_constraints(WORDS), [p8_lo, p8_hi],
                                     (gl.float8e4nv, gl.float8e4nv), is_pure=False, pack=PER_THREAD)


@gluon.jit
def _row_sums(p8_lo, p8_hi, ones_smem, row_sum_zero, HALVES: gl.constexpr):
    """Issue (async) the row sums of a step's P on the tensor cores: its HALVES (1 or 2) of P (E4M3, the
    P·V operands) times the tiles of ones (:func:`_ones_tile`), in a fresh ``(64, _ROW_SUM_COLUMNS)``
    accumulator whose columns add up to the sum of P as rounded to E4M3 (the numerator's own weights)."""
    operand: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=row_sum_zero.type.layout, k_width=4)
    row_sum = warpgroup_mma(gl.convert_layout(p8_lo, operand, assert_trivial=True),
                            ones_smem.index(0).permute((1, 0)), row_sum_zero, use_acc=False, is_async=True)
    if HALVES == 2:
        row_sum = warpgroup_mma(gl.convert_layout(p8_hi, operand, assert_trivial=True),
                                ones_smem.index(1).permute((1, 0)), row_sum, is_async=True)
    return row_sum


@gluon.jit
def _ones_tile(HALF: gl.constexpr, BLOCK_N: gl.constexpr, layout: gl.constexpr):
    """The ``(_ROW_SUM_COLUMNS, BLOCK_N)`` E4M3 tile that sums key tile HALF (0 or 1) of a step in
    :func:`_row_sums`: key k's one in column ``(HALF·BLOCK_N + k) // _WGMMA_K``, so that each wgmma
    instruction's keys land in a column of their own, which no other instruction adds to. The FP8 wgmma
    keeps about 13 bits below the largest of an instruction's products and its accumulator and drops
    what is smaller: with one column for all keys every instruction after a step's first added its
    products to the running sum and cut off the small weights (with exact INT8 scores the LSE landed up
    to 0.0053 from the float64 emulation of the same rounded weights); each column a sum of 32 products
    from zero, 0.0009 (docs/perf-notes.md, section 35).
    Built from the E4M3 bits of one: a converted float splat came out as 1, 1, 32, -384 (ptxas drops the
    PTX's packing of the cvt's 16-bit result into both halves of a word: benchmarks/fp8_splat_repro.py)."""
    column = gl.arange(0, _ROW_SUM_COLUMNS, layout=gl.SliceLayout(1, layout))
    key = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
    own = gl.expand_dims(column, 1) == gl.expand_dims((HALF * BLOCK_N + key) // _WGMMA_K, 0)
    return gl.where(own, _E4M3_ONE_BITS, 0).to(gl.int8).to(gl.float8e4nv, bitcast=True)


@gluon.jit
def _pass_turn(WG: gl.constexpr):
    """Consumer WG has issued this step's matmuls: the other consumer may issue its own."""
    gl.inline_asm_elementwise("bar.arrive $1, 256;\n\tmov.b32 $0, 0;", "=r,r", [_TURN_BARRIER + 1 - WG], gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def _scores(qk, k_scale_base, tile, offs_m, offs_n0, c_row, full_hi, seqlen_k, diagonal,
            BLOCK_N: gl.constexpr, K_BLOCK: gl.constexpr, CAUSAL: gl.constexpr, MASKED: gl.constexpr = True):
    """Raw products of one key tile with their per-row factor ``c`` (> 0). With MASKED, a tile past
    ``full_hi`` is masked (ptxas turns the test into a select per score: tiles known to be whole pass False)."""
    start_n = tile * BLOCK_N
    if MASKED:
        # A tile past the last key (the upper half of a pipelined block's odd last tile) has no scale.
        k_scale = gl.load(k_scale_base + start_n // K_BLOCK, mask=start_n < seqlen_k, other=1.0)
        if start_n + BLOCK_N > full_hi:
            qk = _mask_scores(qk, offs_m, start_n + offs_n0, seqlen_k, diagonal, CAUSAL)
    else:
        k_scale = gl.load(k_scale_base + start_n // K_BLOCK)
    return qk, c_row * k_scale


@gluon.jit
def _column(row_values, rows: gl.constexpr):
    """Per-row values ``(64,)`` as a ``(64, 1)`` column of an accumulator whose rows are ``rows``."""
    return gl.expand_dims(gl.convert_layout(row_values, rows), 1)


@gluon.jit
def _take_turn_for_pv(p8_lo, p8_hi, l_i, ROW_SUM_MMA: gl.constexpr, WG: gl.constexpr):
    """Wait for the consumer's turn once a step's softmax is done: after P's packed words where the tensor
    cores sum the rows (:func:`_take_turn_after_weights`), else after the row sum (:func:`_take_turn_after`).
    Returns P's halves and the row sum (the same registers)."""
    if ROW_SUM_MMA:
        p8_lo, p8_hi = _take_turn_after_weights(p8_lo, p8_hi, WG)
    else:
        l_i = _take_turn_after(l_i, WG)
    return p8_lo, p8_hi, l_i


@gluon.jit
def _add_row_sums(l_i, alpha, row_sum):
    """``l·alpha`` plus a step's row sums from the tensor cores (:func:`_row_sums`, waited for)."""
    return l_i * _column(alpha, gl.SliceLayout(1, row_sum.type.layout)) + row_sum


@gluon.jit
def _pv_step(p8_lo, p8_hi, v_lo, v_hi, acc, alpha, l_i, ones_smem, row_sum_zero, pv_rows: gl.constexpr,
             PROMOTE: gl.constexpr, ROW_SUM_MMA: gl.constexpr, WG: gl.constexpr, HALVES: gl.constexpr):
    """A step's P·V at the consumer's turn: waits for the turn, issues ``P·V`` over the step's HALVES (1 or 2)
    key tiles (``p8_hi``, ``v_hi`` unused with one) chained in one wgmma accumulator, waits for it and
    returns ``acc·alpha + P·V`` and the row sum. With PROMOTE the product lands in fresh registers and is
    added in fp32; without, it accumulates in ``acc·alpha``. With ROW_SUM_MMA the row sums of the step's P
    come from the tensor cores too (:func:`_row_sums`; ``l_i`` is then ``(64, _ROW_SUM_COLUMNS)``, its
    columns adding up to the row sum); without, ``l_i`` already holds them. ``alpha`` is per row, ``(64,)``."""
    alpha_pv = _column(alpha, pv_rows)
    p8_lo, p8_hi, l_i = _take_turn_for_pv(p8_lo, p8_hi, l_i, ROW_SUM_MMA, WG)
    if PROMOTE:
        pv = warpgroup_mma(p8_lo, v_lo.permute((1, 0)), acc, use_acc=False, is_async=True)
    else:
        pv = warpgroup_mma(p8_lo, v_lo.permute((1, 0)), acc * alpha_pv, is_async=True)
    if HALVES == 2:
        pv = warpgroup_mma(p8_hi, v_hi.permute((1, 0)), pv, is_async=True)
    if ROW_SUM_MMA:
        row_sum = _row_sums(p8_lo, p8_hi, ones_smem, row_sum_zero, HALVES)
        pv, row_sum = warpgroup_mma_wait(0, deps=(pv, row_sum))
        l_i = _add_row_sums(l_i, alpha, row_sum)
    else:
        pv = warpgroup_mma_wait(0, deps=(pv,))
    if PROMOTE:
        pv = acc * alpha_pv + pv
    return pv, l_i


@gluon.jit
def _softmax_tiles(qk, c, m_tile, m_i, l_i, LOG2_P_SCALE: gl.constexpr, ROW_SUM_MMA: gl.constexpr):
    """:func:`_softmax_step`, or without the row sum where the tensor cores take it (ROW_SUM_MMA)."""
    if ROW_SUM_MMA:
        p, alpha, m_i = _softmax_weights(qk, c, m_tile, m_i, LOG2_P_SCALE)
    else:
        p, alpha, m_i, l_i = _softmax_step(qk, c, m_tile, m_i, l_i, LOG2_P_SCALE)
    return p, alpha, m_i, l_i


@gluon.jit
def _attend_tile(qk, acc, l_i, m_i, v_tile, ones_smem, row_sum_zero, k_scale_base, tile, offs_m, offs_n0, c_row,
                 full_hi, seqlen_k, diagonal, p_layout: gl.constexpr, pv_rows: gl.constexpr, BLOCK_N: gl.constexpr,
                 K_BLOCK: gl.constexpr, CAUSAL: gl.constexpr, LOG2_P_SCALE: gl.constexpr, PROMOTE: gl.constexpr,
                 ROW_SUM_MMA: gl.constexpr, WG: gl.constexpr):
    """Softmax of one key tile's products ``qk`` (the odd last tile), then its P·V at the consumer's turn
    (:func:`_pv_step`)."""
    qk, c = _scores(qk.to(gl.float32), k_scale_base, tile, offs_m, offs_n0, c_row, full_hi, seqlen_k, diagonal,
                    BLOCK_N, K_BLOCK, CAUSAL)
    p, alpha, m_i, l_i = _softmax_tiles(qk, c, gl.max(qk, axis=1) * c, m_i, l_i, LOG2_P_SCALE, ROW_SUM_MMA)
    p8 = _pv_operand(p, p_layout)
    acc, l_i = _pv_step(p8, p8, v_tile, v_tile, acc, alpha, l_i, ones_smem, row_sum_zero, pv_rows, PROMOTE,
                        ROW_SUM_MMA, WG, 1)
    return acc, l_i, m_i


@gluon.jit
def _issue_pair_scores(q_tile, k_smem, ready, qk_zero, ring_pair, NUM_STAGES: gl.constexpr):
    """Wait for the program's ``ring_pair``-th pair of key tiles and issue both score matmuls (async);
    returns the pair's first slot and the pending products."""
    slot = _wait_for_pair(ready, 2 * ring_pair, NUM_STAGES)
    qk_lo = warpgroup_mma(q_tile, k_smem.index(slot).permute((1, 0)), qk_zero, use_acc=False, is_async=True)
    qk_hi = warpgroup_mma(q_tile, k_smem.index(slot + 1).permute((1, 0)), qk_zero, use_acc=False, is_async=True)
    return slot, qk_lo, qk_hi


@gluon.jit
def _pair_softmax(qk_lo, qk_hi, l_i, m_i, k_scale_base, j, offs_m, offs_n0, c_row, full_hi, seqlen_k, diagonal,
                  p_layout: gl.constexpr, BLOCK_N: gl.constexpr, K_BLOCK: gl.constexpr, CAUSAL: gl.constexpr,
                  LOG2_P_SCALE: gl.constexpr, MASKED: gl.constexpr, ROW_SUM_MMA: gl.constexpr):
    """One softmax step over the block's key tiles ``2j`` and ``2j + 1`` (products ``qk_lo``, ``qk_hi``):
    one row max, each half's exponentials with its own K scale. Returns both halves of P as P·V operands,
    the accumulator's rescale (per row), the new row max and the new row sum (``l_i`` as it came with
    ROW_SUM_MMA: the tensor cores add this step's, :func:`_pv_step`)."""
    t = 2 * j
    qk_lo, c_lo = _scores(qk_lo.to(gl.float32), k_scale_base, t, offs_m, offs_n0, c_row, full_hi, seqlen_k,
                          diagonal, BLOCK_N, K_BLOCK, CAUSAL, MASKED)
    qk_hi, c_hi = _scores(qk_hi.to(gl.float32), k_scale_base, t + 1, offs_m, offs_n0, c_row, full_hi, seqlen_k,
                          diagonal, BLOCK_N, K_BLOCK, CAUSAL, MASKED)
    m_tile = gl.maximum(gl.max(qk_lo, axis=1) * c_lo, gl.max(qk_hi, axis=1) * c_hi)
    p_lo, alpha, m_i, l_i = _softmax_tiles(qk_lo, c_lo, m_tile, m_i, l_i, LOG2_P_SCALE, ROW_SUM_MMA)
    p_hi, _, m_i, l_i = _softmax_tiles(qk_hi, c_hi, m_tile, m_i, l_i, LOG2_P_SCALE, ROW_SUM_MMA)  # alpha == 1
    return _pv_operand(p_lo, p_layout), _pv_operand(p_hi, p_layout), alpha, l_i, m_i


@gluon.jit
def _consume_pair(q_tile, k_smem, v_smem, ones_smem, ready, empty, qk_zero, row_sum_zero, acc, l_i, m_i, k_scale_base,
                  ring_pair, j, offs_m, offs_n0, c_row, full_hi, seqlen_k, diagonal, p_layout: gl.constexpr,
                  pv_rows: gl.constexpr, BLOCK_N: gl.constexpr, K_BLOCK: gl.constexpr, CAUSAL: gl.constexpr,
                  LOG2_P_SCALE: gl.constexpr, PROMOTE: gl.constexpr, ROW_SUM_MMA: gl.constexpr,
                  NUM_STAGES: gl.constexpr, WG: gl.constexpr, MASKED: gl.constexpr):
    """The query block's key tiles ``2j`` and ``2j + 1``, the program's ``ring_pair``-th pair in the ring
    (NUM_STAGES even, so their slots are adjacent and share one ``ready`` and one ``empty`` barrier) as one
    softmax step of 2·BLOCK_N keys (:func:`_pair_softmax`): both score matmuls, the softmax, both halves'
    P·V (:func:`_pv_step`); then the pair's slots are released.

    The consumer holds the tensor-core turn (:func:`_take_turn`) from the P·V of the pair before through
    this pair's score matmuls, and waits for it again before this pair's P·V: the two consumers' matmuls
    alternate, so one's exponentials run under the other's matmuls."""
    slot, qk_lo, qk_hi = _issue_pair_scores(q_tile, k_smem, ready, qk_zero, ring_pair, NUM_STAGES)
    _pass_turn(WG)
    qk_lo, qk_hi = warpgroup_mma_wait(0, deps=(qk_lo, qk_hi))
    p8_lo, p8_hi, alpha, l_i, m_i = _pair_softmax(qk_lo, qk_hi, l_i, m_i, k_scale_base, j, offs_m, offs_n0, c_row,
                                                  full_hi, seqlen_k, diagonal, p_layout, BLOCK_N, K_BLOCK, CAUSAL,
                                                  LOG2_P_SCALE, MASKED, ROW_SUM_MMA)
    acc, l_i = _pv_step(p8_lo, p8_hi, v_smem.index(slot), v_smem.index(slot + 1), acc, alpha, l_i, ones_smem,
                        row_sum_zero, pv_rows, PROMOTE, ROW_SUM_MMA, WG, 2)
    _release_pair(empty, slot, NUM_STAGES, WG)
    return acc, l_i, m_i


@gluon.jit
def _consume_pair_pipelined(q_tile, k_smem, v_smem, ones_smem, ready, empty, qk_zero, row_sum_zero, acc, qk_lo, qk_hi,
                            slot, l_i, m_i, k_scale_base, ring_pair, j, offs_m, offs_n0, c_row, full_hi, seqlen_k,
                            diagonal, p_layout: gl.constexpr, pv_rows: gl.constexpr, BLOCK_N: gl.constexpr,
                            K_BLOCK: gl.constexpr, CAUSAL: gl.constexpr, LOG2_P_SCALE: gl.constexpr,
                            ROW_SUM_MMA: gl.constexpr, NUM_STAGES: gl.constexpr, WG: gl.constexpr,
                            MASKED: gl.constexpr, LAST: gl.constexpr):
    """As :func:`_consume_pair` with the next pair's score matmuls in this pair's turn: the softmax of pair
    ``j`` (the program's ``ring_pair``-th, products ``qk_lo``, ``qk_hi`` already waited for, slots from
    ``slot``), then at the consumer's turn its P·V and, unless LAST, the next pair's score matmuls back to
    back, the turn passed, one wait for all; pair j's slots are released. No wait splits a turn, so its
    matmuls reach the tensor cores without a gap. Returns the accumulator, the next pair's products and
    first slot, and the row statistics."""
    p8_lo, p8_hi, alpha, l_i, m_i = _pair_softmax(qk_lo, qk_hi, l_i, m_i, k_scale_base, j, offs_m, offs_n0, c_row,
                                                  full_hi, seqlen_k, diagonal, p_layout, BLOCK_N, K_BLOCK, CAUSAL,
                                                  LOG2_P_SCALE, MASKED, ROW_SUM_MMA)
    acc = acc * _column(alpha, pv_rows)
    p8_lo, p8_hi, l_i = _take_turn_for_pv(p8_lo, p8_hi, l_i, ROW_SUM_MMA, WG)
    acc = warpgroup_mma(p8_lo, v_smem.index(slot).permute((1, 0)), acc, is_async=True)
    acc = warpgroup_mma(p8_hi, v_smem.index(slot + 1).permute((1, 0)), acc, is_async=True)
    row_sum = _row_sums(p8_lo, p8_hi, ones_smem, row_sum_zero, 2) if ROW_SUM_MMA else row_sum_zero
    if LAST:
        next_slot = slot
        _pass_turn(WG)
        acc, row_sum = warpgroup_mma_wait(0, deps=(acc, row_sum))
    else:
        next_slot, qk_lo, qk_hi = _issue_pair_scores(q_tile, k_smem, ready, qk_zero, ring_pair + 1, NUM_STAGES)
        _pass_turn(WG)
        acc, qk_lo, qk_hi, row_sum = warpgroup_mma_wait(0, deps=(acc, qk_lo, qk_hi, row_sum))
    if ROW_SUM_MMA:
        l_i = _add_row_sums(l_i, alpha, row_sum)
    _release_pair(empty, slot, NUM_STAGES, WG)
    return acc, qk_lo, qk_hi, next_slot, l_i, m_i


@gluon.jit
def _attend_block(q_tile, k_smem, v_smem, ones_smem, ready, empty, qk_zero, row_sum_zero, acc, l_i, m_i, k_scale_base,
                  ring_pair, num_tiles, offs_m, offs_n0, c_row, full_hi, seqlen_k, diagonal, p_layout: gl.constexpr,
                  pv_rows: gl.constexpr, BLOCK_N: gl.constexpr, K_BLOCK: gl.constexpr, CAUSAL: gl.constexpr,
                  LOG2_P_SCALE: gl.constexpr, PROMOTE: gl.constexpr, ROW_SUM_MMA: gl.constexpr,
                  NUM_STAGES: gl.constexpr, WG: gl.constexpr):
    """A query block's ``num_tiles`` key tiles from the program's ``ring_pair``-th pair, the consumer holding
    the turn: whole pairs without masks, masked pairs, an odd last tile alone. Step j's turn runs from
    pair j-1's P·V (the block's start for j = 0) through pair j's score matmuls; the turn passes after the
    last P·V, so the other consumer's last P·V runs under this one's epilogue."""
    num_pairs = num_tiles // 2
    whole_pairs = gl.minimum(full_hi // (2 * BLOCK_N), num_pairs)
    for j in range(0, whole_pairs):
        acc, l_i, m_i = _consume_pair(q_tile, k_smem, v_smem, ones_smem, ready, empty, qk_zero, row_sum_zero, acc,
                                      l_i, m_i, k_scale_base, ring_pair + j, j, offs_m, offs_n0, c_row, full_hi,
                                      seqlen_k, diagonal, p_layout, pv_rows, BLOCK_N, K_BLOCK, CAUSAL, LOG2_P_SCALE,
                                      PROMOTE, ROW_SUM_MMA, NUM_STAGES, WG, False)
    for j in range(whole_pairs, num_pairs):
        acc, l_i, m_i = _consume_pair(q_tile, k_smem, v_smem, ones_smem, ready, empty, qk_zero, row_sum_zero, acc,
                                      l_i, m_i, k_scale_base, ring_pair + j, j, offs_m, offs_n0, c_row, full_hi,
                                      seqlen_k, diagonal, p_layout, pv_rows, BLOCK_N, K_BLOCK, CAUSAL, LOG2_P_SCALE,
                                      PROMOTE, ROW_SUM_MMA, NUM_STAGES, WG, True)
    if num_tiles % 2 == 1:
        # An odd last tile alone: the arithmetic of a pair whose upper tile is past every visible key.
        last = num_tiles - 1  # even: the first tile of its pair
        slot = _wait_for_pair(ready, 2 * (ring_pair + num_pairs), NUM_STAGES)
        qk = warpgroup_mma(q_tile, k_smem.index(slot).permute((1, 0)), qk_zero, use_acc=False, is_async=True)
        _pass_turn(WG)
        qk = warpgroup_mma_wait(0, deps=(qk,))
        acc, l_i, m_i = _attend_tile(qk, acc, l_i, m_i, v_smem.index(slot), ones_smem, row_sum_zero, k_scale_base,
                                     last, offs_m, offs_n0, c_row, full_hi, seqlen_k, diagonal, p_layout, pv_rows,
                                     BLOCK_N, K_BLOCK, CAUSAL, LOG2_P_SCALE, PROMOTE, ROW_SUM_MMA, WG)
        _release_pair(empty, slot, NUM_STAGES, WG)
    _pass_turn(WG)
    return acc, l_i, m_i


@gluon.jit
def _attend_block_pipelined(q_tile, k_smem, v_smem, ones_smem, ready, empty, qk_zero, row_sum_zero, acc, l_i, m_i,
                            k_scale_base, ring_pair, num_pairs, offs_m, offs_n0, c_row, full_hi, seqlen_k, diagonal,
                            p_layout: gl.constexpr, pv_rows: gl.constexpr, BLOCK_N: gl.constexpr,
                            K_BLOCK: gl.constexpr, CAUSAL: gl.constexpr, LOG2_P_SCALE: gl.constexpr,
                            ROW_SUM_MMA: gl.constexpr, NUM_STAGES: gl.constexpr, WG: gl.constexpr):
    """:func:`_attend_block` with each turn issuing a pair's P·V and the next pair's score matmuls together
    (:func:`_consume_pair_pipelined`); the first turn issues only the first pair's, the last only the last
    P·V. ``num_pairs`` (at least one) covers every visible key; an odd last tile runs as a pair whose upper
    tile is masked whole (the producer loads it anyway): the same arithmetic. The last pair runs masked."""
    whole_pairs = gl.minimum(full_hi // (2 * BLOCK_N), num_pairs - 1)
    slot, qk_lo, qk_hi = _issue_pair_scores(q_tile, k_smem, ready, qk_zero, ring_pair, NUM_STAGES)
    _pass_turn(WG)
    qk_lo, qk_hi = warpgroup_mma_wait(0, deps=(qk_lo, qk_hi))
    for j in range(0, whole_pairs):
        acc, qk_lo, qk_hi, slot, l_i, m_i = _consume_pair_pipelined(
            q_tile, k_smem, v_smem, ones_smem, ready, empty, qk_zero, row_sum_zero, acc, qk_lo, qk_hi, slot, l_i,
            m_i, k_scale_base, ring_pair + j, j, offs_m, offs_n0, c_row, full_hi, seqlen_k, diagonal, p_layout,
            pv_rows, BLOCK_N, K_BLOCK, CAUSAL, LOG2_P_SCALE, ROW_SUM_MMA, NUM_STAGES, WG, False, False)
    for j in range(whole_pairs, num_pairs - 1):
        acc, qk_lo, qk_hi, slot, l_i, m_i = _consume_pair_pipelined(
            q_tile, k_smem, v_smem, ones_smem, ready, empty, qk_zero, row_sum_zero, acc, qk_lo, qk_hi, slot, l_i,
            m_i, k_scale_base, ring_pair + j, j, offs_m, offs_n0, c_row, full_hi, seqlen_k, diagonal, p_layout,
            pv_rows, BLOCK_N, K_BLOCK, CAUSAL, LOG2_P_SCALE, ROW_SUM_MMA, NUM_STAGES, WG, True, False)
    last = num_pairs - 1
    acc, _, _, _, l_i, m_i = _consume_pair_pipelined(
        q_tile, k_smem, v_smem, ones_smem, ready, empty, qk_zero, row_sum_zero, acc, qk_lo, qk_hi, slot, l_i, m_i,
        k_scale_base, ring_pair + last, last, offs_m, offs_n0, c_row, full_hi, seqlen_k, diagonal, p_layout, pv_rows,
        BLOCK_N, K_BLOCK, CAUSAL, LOG2_P_SCALE, ROW_SUM_MMA, NUM_STAGES, WG, True, True)
    return acc, l_i, m_i


@gluon.jit
def _block_pairs(num_tiles, PIPELINE_PV: gl.constexpr):
    """Pairs of key tiles a query block takes from the ring: its tiles two at a time (an odd last one with
    the next, loaded but past every visible key); pipelined at least one, so that a block whose rows see no
    key runs one pair masked whole."""
    num_pairs = gl.cdiv(num_tiles, 2)
    if PIPELINE_PV:
        num_pairs = gl.maximum(num_pairs, 1)
    return num_pairs


@gluon.jit
def _key_tiles(start_m, seqlen_q, seqlen_k, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    """Number of key tiles rows [start_m, start_m + BLOCK_M) visit, the end of the tiles all of them
    see whole, and the causal diagonal offset."""
    full_hi, hi, diagonal = _key_range(start_m, seqlen_q, seqlen_k, BLOCK_M, BLOCK_N, CAUSAL)
    return gl.cdiv(hi, BLOCK_N), full_hi, diagonal


@gluon.jit
def _block_key_tiles(block_start, seqlen_q, seqlen_k, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                     CAUSAL: gl.constexpr):
    """Key tiles a query block's 2·BLOCK_M rows from ``block_start`` visit. Both consumers walk all of them
    (under a causal mask the lower rows' last tiles are masked whole for the upper ones), so that their
    turns pair up."""
    num_tiles, _, _ = _key_tiles(block_start, seqlen_q, seqlen_k, 2 * BLOCK_M, BLOCK_N, CAUSAL)
    return num_tiles


@gluon.jit
def _program_blocks(num_query_blocks):
    """How many query blocks this program runs: blocks ``program_id``, ``program_id + num_programs``, ..."""
    return gl.cdiv(num_query_blocks - gl.program_id(0), gl.num_programs(0))


@gluon.jit
def _query_block(i, seqlen_q, num_query_blocks, BLOCK_M: gl.constexpr, CAUSAL: gl.constexpr):
    """The program's ``i``-th query block: its first row and its (batch, head) index. Without a mask the
    blocks run head after head, so a head's K and V stay in L2 while its blocks run. Under a causal mask a
    block's work grows with its index, and programs take every ``num_programs``-th block: in head order the
    programs would keep blocks of one length (with 132 programs and 128 blocks a head, program 0 would run
    the longest of every head, program 64 the shortest), so the blocks run longest first across heads."""
    block = gl.program_id(0) + i * gl.num_programs(0)
    blocks_per_head = gl.cdiv(seqlen_q, 2 * BLOCK_M)
    if CAUSAL:
        num_heads = num_query_blocks // blocks_per_head
        m_block = blocks_per_head - 1 - block // num_heads
        bh = block % num_heads
    else:
        m_block = block % blocks_per_head
        bh = block // blocks_per_head
    return m_block * 2 * BLOCK_M, bh


@gluon.jit
def _issue_q_loads(q_desc, q_smem, q_ready, q_empty, i, bh, block_start, seqlen_q):
    """Start the TMA copies of both consumers' Q tiles of the program's ``i``-th query block, each once its
    consumer is done with the block before (:func:`_ws_consume` releases its Q tile after its last P·V)."""
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
    for c in gl.static_range(2):
        mbarrier.wait(q_empty.index(c), (i & 1) ^ 1)  # a fresh barrier passes a wait for parity 1
        mbarrier.expect(q_ready.index(c), q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [bh * seqlen_q + block_start + c * BLOCK_M, 0], q_ready.index(c),
                                        q_smem.index(c))


@gluon.jit
def _ws_producer(
    q_desc, k_desc, vt_desc, q_smem, k_smem, v_smem, ready, empty, q_ready, q_empty,
    seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_query_blocks,
    CAUSAL: gl.constexpr, NUM_STAGES: gl.constexpr, PIPELINE_PV: gl.constexpr,
):
    """One warp: per query block of the program, every pair of key tiles into the ring, which runs on across
    blocks (a pair of slots is refilled once both consumers have released the pair they held), and both
    consumers' Q tiles after the block's first pair: that pair loads while the consumers finish the block
    before, whose Q tiles they hold until its end."""
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    HEAD_DIM_PAD: gl.constexpr = q_desc.block_type.shape[1]
    NUM_PAIRS: gl.constexpr = NUM_STAGES // 2
    ring_pair = 0  # pairs of key tiles loaded so far, over all of the program's blocks
    for i in range(_program_blocks(num_query_blocks)):
        block_start, bh = _query_block(i, seqlen_q, num_query_blocks, BLOCK_M, CAUSAL)
        b = bh // num_q_heads
        kv_bh = b * num_kv_heads + (bh % num_q_heads) // (num_q_heads // num_kv_heads)
        num_pairs = _block_pairs(_block_key_tiles(block_start, seqlen_q, seqlen_k, BLOCK_M, BLOCK_N, CAUSAL),
                                 PIPELINE_PV)
        for p in range(num_pairs):
            phase = ((ring_pair // NUM_PAIRS) & 1) ^ 1
            mbarrier.wait(empty.index(ring_pair % NUM_PAIRS), phase)
            mbarrier.wait(empty.index(NUM_PAIRS + ring_pair % NUM_PAIRS), phase)
            _issue_kv_pair_load(k_desc, vt_desc, k_smem, v_smem, ready, ring_pair, p, kv_bh * seqlen_k_pad,
                                kv_bh * HEAD_DIM_PAD, BLOCK_N, NUM_STAGES)
            ring_pair += 1
            if p == 0:
                _issue_q_loads(q_desc, q_smem, q_ready, q_empty, i, bh, block_start, seqlen_q)
        if num_pairs == 0:  # rows that see no key (causal, fewer keys than queries): Q all the same
            _issue_q_loads(q_desc, q_smem, q_ready, q_empty, i, bh, block_start, seqlen_q)


@gluon.jit
def _ws_consume(
    q_desc, k_desc, vt_desc, q_smem, k_smem, v_smem, ones_smem, ready, empty, q_ready, q_empty,
    q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
    seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_q_scale_blocks, num_k_scale_blocks,
    num_query_blocks, qk_scale_log2, stride_ob, stride_oh, stride_om,
    HEAD_DIM: gl.constexpr, Q_BLOCK: gl.constexpr, K_BLOCK: gl.constexpr, CAUSAL: gl.constexpr,
    LOG2_P_SCALE: gl.constexpr, PROMOTE: gl.constexpr, SMOOTH_V: gl.constexpr, NUM_STAGES: gl.constexpr,
    PIPELINE_PV: gl.constexpr, ROW_SUM_MMA: gl.constexpr, WG: gl.constexpr,
):
    """One warpgroup: rows 64·WG to 64·WG + 63 of each of the program's query blocks, against the ring's
    key tiles."""
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
    gl.static_assert(BLOCK_M == 64, "64 rows a warpgroup: two a thread, one turn barrier a thread (_take_turn_after)")
    HEAD_DIM_PAD: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    QK_INT8: gl.constexpr = q_desc.dtype == gl.int8
    qk_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BLOCK_N, 32])
    pv_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, HEAD_DIM_PAD, 32])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=pv_layout, k_width=4)
    qk_rows: gl.constexpr = gl.SliceLayout(1, qk_layout)
    pv_rows: gl.constexpr = gl.SliceLayout(1, pv_layout)
    pv_cols: gl.constexpr = gl.SliceLayout(0, pv_layout)
    offs_n0 = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, qk_layout))
    offs_d = gl.arange(0, HEAD_DIM_PAD, layout=pv_cols)
    qk_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.int32 if QK_INT8 else gl.float32, qk_layout)
    row_sum_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                             instr_shape=[16, _ROW_SUM_COLUMNS, 32])
    row_sum_zero = gl.zeros([BLOCK_M, _ROW_SUM_COLUMNS], gl.float32, row_sum_layout)

    ring_pair = 0  # pairs of key tiles consumed so far, over all of the program's blocks
    if WG == 1:
        _pass_turn(WG)  # consumer 0 goes first
    for i in range(_program_blocks(num_query_blocks)):
        block_start, bh = _query_block(i, seqlen_q, num_query_blocks, BLOCK_M, CAUSAL)
        start_m = block_start + WG * BLOCK_M
        b = bh // num_q_heads
        h = bh % num_q_heads
        kv_bh = b * num_kv_heads + h // (num_q_heads // num_kv_heads)
        num_tiles = _block_key_tiles(block_start, seqlen_q, seqlen_k, BLOCK_M, BLOCK_N, CAUSAL)
        _, full_hi, diagonal = _key_tiles(start_m, seqlen_q, seqlen_k, BLOCK_M, BLOCK_N, CAUSAL)

        offs_m = start_m + gl.arange(0, BLOCK_M, layout=qk_rows)
        q_scale = gl.load(q_scale_ptr + bh * num_q_scale_blocks + offs_m // Q_BLOCK, mask=offs_m < seqlen_q,
                          other=1.0)
        c_row = q_scale * qk_scale_log2
        k_scale_base = k_scale_ptr + kv_bh * num_k_scale_blocks
        acc = gl.zeros([BLOCK_M, HEAD_DIM_PAD], gl.float32, pv_layout)
        l_i = row_sum_zero if ROW_SUM_MMA else gl.zeros([BLOCK_M], gl.float32, qk_rows)
        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, qk_rows)
        q_tile = q_smem.index(WG)
        mbarrier.wait(q_ready.index(WG), i & 1)
        # Key tiles two at a time, one softmax step each; tiles every row sees whole skip the masks.
        num_pairs = _block_pairs(num_tiles, PIPELINE_PV)
        _take_turn(WG)
        if PIPELINE_PV:
            acc, l_i, m_i = _attend_block_pipelined(q_tile, k_smem, v_smem, ones_smem, ready, empty, qk_zero,
                                                    row_sum_zero, acc, l_i, m_i, k_scale_base, ring_pair, num_pairs,
                                                    offs_m, offs_n0, c_row, full_hi, seqlen_k, diagonal, p_layout,
                                                    pv_rows, BLOCK_N, K_BLOCK, CAUSAL, LOG2_P_SCALE, ROW_SUM_MMA,
                                                    NUM_STAGES, WG)
        else:
            acc, l_i, m_i = _attend_block(q_tile, k_smem, v_smem, ones_smem, ready, empty, qk_zero, row_sum_zero, acc,
                                          l_i, m_i, k_scale_base, ring_pair, num_tiles, offs_m, offs_n0, c_row,
                                          full_hi, seqlen_k, diagonal, p_layout, pv_rows, BLOCK_N, K_BLOCK, CAUSAL,
                                          LOG2_P_SCALE, PROMOTE, ROW_SUM_MMA, NUM_STAGES, WG)
        mbarrier.arrive(q_empty.index(WG), count=1)  # the next block's Q tile may load
        ring_pair += num_pairs

        offs_mo = start_m + gl.arange(0, BLOCK_M, layout=pv_rows)
        v_scale = gl.load(v_scale_ptr + kv_bh * HEAD_DIM_PAD + offs_d)
        v_mean = gl.load(v_mean_ptr + kv_bh * HEAD_DIM_PAD + offs_d) if SMOOTH_V else v_scale
        out_ptrs = (out_ptr + b * stride_ob + h * stride_oh + gl.expand_dims(offs_mo, 1) * stride_om
                    + gl.expand_dims(offs_d, 0))
        if ROW_SUM_MMA:
            l_i = gl.sum(l_i, axis=1)  # each column sums its own keys (_ones_tile)
        _store_output(acc, gl.convert_layout(l_i, pv_rows), gl.convert_layout(m_i, pv_rows), v_scale, v_mean,
                      out_ptrs, lse_ptr + bh * seqlen_q + offs_mo, offs_mo < seqlen_q, offs_d < HEAD_DIM,
                      LOG2_P_SCALE, SMOOTH_V)
    if WG == 0:
        _take_turn(WG)  # consumer 1's pass after its last block: every arrival on a turn barrier is waited for


@gluon.jit
def _fp8_attention_fwd_ws_kernel(
    q_desc, k_desc, vt_desc, q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
    seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_q_scale_blocks, num_k_scale_blocks,
    num_query_blocks, qk_scale_log2,
    stride_ob, stride_oh, stride_om,
    HEAD_DIM: gl.constexpr, Q_BLOCK: gl.constexpr, K_BLOCK: gl.constexpr, CAUSAL: gl.constexpr,
    LOG2_P_SCALE: gl.constexpr, PROMOTE: gl.constexpr, SMOOTH_V: gl.constexpr, NUM_STAGES: gl.constexpr,
    PIPELINE_PV: gl.constexpr, ROW_SUM_MMA: gl.constexpr, CONSUMER_REGS: gl.constexpr, num_warps: gl.constexpr,
):
    """Persistent and warp-specialized: two consumer warpgroups (64 query rows each of a 128-row query
    block) share one TMA producer warp's ring, block after block."""
    gl.static_assert(num_warps == 4, "the default partition is consumer warpgroup 0")
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
    HEAD_DIM_PAD: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2, BLOCK_M, HEAD_DIM_PAD], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [NUM_STAGES, BLOCK_N, HEAD_DIM_PAD], k_desc.layout)
    v_smem = gl.allocate_shared_memory(vt_desc.dtype, [NUM_STAGES, HEAD_DIM_PAD, BLOCK_N], vt_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES // 2, 1], mbarrier.MBarrierLayout())  # one per pair
    empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())  # per pair and consumer
    if ROW_SUM_MMA:  # the tensor cores' row sums: P times tiles of ones (_row_sums), one per key tile of a step
        gl.static_assert(2 * BLOCK_N <= _ROW_SUM_COLUMNS * _WGMMA_K, "a step's keys need a column per instruction")
        ones_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([_ROW_SUM_COLUMNS, BLOCK_N], gl.float8e4nv)
        ones_fill: gl.constexpr = gl.BlockedLayout([1, 16], [1, 32], [4, 1], [1, 0])
        ones_smem = gl.allocate_shared_memory(gl.float8e4nv, [2, _ROW_SUM_COLUMNS, BLOCK_N], ones_layout)
        for half in gl.static_range(2):
            ones_smem.index(half).store(_ones_tile(half, BLOCK_N, ones_fill))
        fence_async_shared()  # the wgmma's reads (async proxy) see the stores
    else:
        ones_smem = v_smem  # not read
    q_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_STAGES // 2):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
        mbarrier.init(empty.index(NUM_STAGES // 2 + i), count=1)
    for i in gl.static_range(2):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=1)
    # Consumer warpgroup 0 is the default partition, 1 and the producer are workers. The argument tuples are
    # written out in the call: an assigned tuple would turn its constexprs into tensors.
    gl.warp_specialize([
        (_ws_consume, (q_desc, k_desc, vt_desc, q_smem, k_smem, v_smem, ones_smem, ready, empty, q_ready, q_empty,
                       q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
                       seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_q_scale_blocks,
                       num_k_scale_blocks, num_query_blocks, qk_scale_log2, stride_ob, stride_oh, stride_om,
                       HEAD_DIM, Q_BLOCK, K_BLOCK, CAUSAL, LOG2_P_SCALE, PROMOTE, SMOOTH_V, NUM_STAGES,
                       PIPELINE_PV, ROW_SUM_MMA, 0)),
        (_ws_consume, (q_desc, k_desc, vt_desc, q_smem, k_smem, v_smem, ones_smem, ready, empty, q_ready, q_empty,
                       q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
                       seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_q_scale_blocks,
                       num_k_scale_blocks, num_query_blocks, qk_scale_log2, stride_ob, stride_oh, stride_om,
                       HEAD_DIM, Q_BLOCK, K_BLOCK, CAUSAL, LOG2_P_SCALE, PROMOTE, SMOOTH_V, NUM_STAGES,
                       PIPELINE_PV, ROW_SUM_MMA, 1)),
        (_ws_producer, (q_desc, k_desc, vt_desc, q_smem, k_smem, v_smem, ready, empty, q_ready, q_empty,
                        seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_query_blocks, CAUSAL,
                        NUM_STAGES, PIPELINE_PV)),
    ], [4, 1],
                       [CONSUMER_REGS, 24])


_GL_DTYPES = {torch.float8_e4m3fn: gl.float8e4nv, torch.int8: gl.int8}
# Where it beats the Triton kernel (perf-notes sections 16, 26, 27, 31): padded head dim 128 or 256, from 1024
# tokens without a mask and from 4096 under a causal mask.
HOPPER_HEAD_DIMS_PAD = (128, 256)
HOPPER_MIN_SEQLEN = 1024
HOPPER_MIN_SEQLEN_CAUSAL = 4096
_ROWS_PER_CONSUMER = 64


def _descriptor(t: torch.Tensor, block: list[int]) -> TensorDescriptor:
    """A TMA descriptor over contiguous ``t`` seen as 2-D: all leading dims as rows, the last as columns.

    The base stays ``t`` itself, not a reshaped view: a launch plan recognises a caller's input by
    identity when it replays (:class:`fp8attn.kernels.launch.LaunchPlan`).
    """
    rows, cols = t.numel() // t.shape[-1], t.shape[-1]
    layout = gl.NVMMASharedLayout.get_default_for(block, _GL_DTYPES[t.dtype])
    return TensorDescriptor(t, [rows, cols], [cols, 1], block, layout)


@functools.cache
def _is_sm90(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) == (9, 0)


def _num_programs(device: torch.device, num_query_blocks: int) -> int:
    """Persistent programs: one per SM of a GPU (one fits an SM: 144-224 KiB of shared memory, 384 threads
    at 168 registers). A launch built on another device (``meta``, to compile offline) is never run."""
    return sm_count(device) if device.type == "cuda" else num_query_blocks


def hopper_softmax_keys(head_dim_pad: int, k_block: int) -> int:
    """Keys per online-softmax step of this kernel (two of the Triton kernel's tiles): the ``block_n``
    of its float64 emulation, ``fp8attn.reference.attention_emulated``."""
    return 2 * forward_config(head_dim_pad, k_block).block_n


def hopper_pipelines_pv(qkv: QuantizedQKV) -> bool:
    """Whether a consumer's turn issues a pair's P·V together with the next pair's score matmuls
    (:func:`_attend_block_pipelined`): where the accumulator is not promoted (padded D=256; a promoted
    product's registers would not fit beside the next scores) and Q·Kᵀ is E4M3 (with INT8 Q·Kᵀ it
    measured −5 to +4 %: docs/perf-notes.md, section 33)."""
    return forward_config(qkv.q.shape[-1], qkv.k_block).promote_every != 1 and qkv.q.dtype == torch.float8_e4m3fn


def hopper_kernel_sizes(head_dim_pad: int, seqlen_q: int, seqlen_k: int, causal: bool) -> bool:
    """The sizes this kernel is used for (where it beats the Triton kernel: perf-notes sections 16, 26, 27
    and 31): padded head dim 128 or 256, at least 1024 queries and keys (4096 under a causal mask, where
    the Triton kernel's 64-row programs balance short query blocks better)."""
    min_seqlen = HOPPER_MIN_SEQLEN_CAUSAL if causal else HOPPER_MIN_SEQLEN
    return head_dim_pad in HOPPER_HEAD_DIMS_PAD and min(seqlen_q, seqlen_k) >= min_seqlen


def hopper_kernel_shape(qkv: QuantizedQKV, causal: bool) -> bool:
    """:func:`hopper_kernel_sizes` for ``qkv``, in an E4M3 P·V recipe."""
    return (hopper_kernel_sizes(qkv.q.shape[-1], qkv.seqlen_q, qkv.seqlen_k, causal)
            and qkv.v_t.dtype == torch.float8_e4m3fn)


def hopper_kernel_applies(qkv: QuantizedQKV, causal: bool) -> bool:
    """True where the library runs this kernel instead of the Triton one: :func:`hopper_kernel_shape`,
    compiled (not interpreted) on an sm_90 GPU, the kernel layout contiguous and 16-byte aligned (TMA)."""
    return (
        not knobs.runtime.interpret
        and qkv.q.device.type == "cuda"
        and hopper_kernel_shape(qkv, causal)
        and all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in (qkv.q, qkv.k, qkv.v_t))
        and _is_sm90(qkv.q.device)
    )


def hopper_forward_launch(
    qkv: QuantizedQKV, out: torch.Tensor, lse: torch.Tensor, *, causal: bool, softmax_scale: float, p_scale: float,
    num_stages: int | None = None, consumer_regs: int = 240, maxnreg: int = 168, num_programs: int | None = None,
    exact_lse: bool = True,
) -> Launch:
    """The Gluon kernel's launch for ``qkv`` writing ``out (B, Hq, Sq, D)`` and ``lse (B, Hq, Sq)``.

    Takes E4M3 P·V recipes on a contiguous kernel layout (any head dim; the library uses it where
    :func:`hopper_kernel_applies`). One program per SM (fewer when there are fewer query blocks of 128
    rows) walks query blocks. ``maxnreg`` caps the launch's registers per thread so that the
    12 warps (two consumer warpgroups, the producer's warpgroup) fit an SM: 168 · 384 ≤ 65536;
    ``setmaxnreg`` then moves the producer's share to the consumers (``consumer_regs``). The ring holds
    ``num_stages`` key tiles: even (a consumer takes them in pairs, :func:`hopper_softmax_keys`) and at least
    four (a consumer waits for the next pair while it holds the tensor-core turn the other consumer needs
    to release the pair before: with one pair in the ring, that would deadlock); by default six where
    :func:`hopper_pipelines_pv` (a pair is released one wait later there), else four. ``num_programs`` caps the
    persistent programs (default: one per SM), so that small shapes can walk many blocks a program.
    ``exact_lse=False`` sums P's rows on the tensor cores (:func:`_row_sums`; the emulation's
    ``row_sum_of_rounded_p``): P as rounded to E4M3 times tiles of ones instead of fp32 P on the FMA
    pipe. Those sums normalise P·V by the weights it used (the output's error against float64 stays
    within ±1 % of the fp32 sums'), but the ``lse`` of rounded weights is not the scores' log-sum-exp:
    0.0007 low on average and up to 0.027 off on the H200 (docs/perf-notes.md, sections 34 and 35), so
    it is for callers that do not read it (the library's calls without ``return_lse``)."""
    batch, num_q_heads, seqlen_q, dp = qkv.q.shape
    num_kv_heads, seqlen_k_pad = qkv.k.shape[1], qkv.k.shape[2]
    if qkv.v_t.dtype != torch.float8_e4m3fn:
        raise ValueError(f"the Hopper kernel takes E4M3 P·V recipes, got V in {qkv.v_t.dtype}")
    cfg = forward_config(dp, qkv.k_block, causal, qk_int8=qkv.q.dtype == torch.int8)
    pipeline_pv = hopper_pipelines_pv(qkv)
    if num_stages is None:
        num_stages = 6 if pipeline_pv else 4
    if num_stages < 4 or num_stages % 2:
        raise ValueError(f"num_stages must be even (key tiles are taken in pairs) and >= 4 (two pairs: the "
                         f"consumers take turns), got {num_stages}")
    if not all(t.is_contiguous() for t in (qkv.q, qkv.k, qkv.v_t)):
        raise ValueError("the Hopper kernel reads q, k and v_t through 2-D TMA views: they must be contiguous")
    if num_programs is not None and num_programs < 1:
        raise ValueError(f"num_programs must be at least 1, got {num_programs}")
    q_desc = _descriptor(qkv.q, [_ROWS_PER_CONSUMER, dp])
    k_desc = _descriptor(qkv.k, [cfg.block_n, dp])
    vt_desc = _descriptor(qkv.v_t, [dp, cfg.block_n])
    num_query_blocks = cdiv(seqlen_q, 2 * _ROWS_PER_CONSUMER) * batch * num_q_heads
    args = (
        q_desc, k_desc, vt_desc, qkv.q_scale, qkv.k_scale, qkv.v_scale,
        qkv.v_mean if qkv.v_mean is not None else qkv.v_scale, out, lse,
        seqlen_q, qkv.seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, qkv.q_scale.shape[-1],
        qkv.k_scale.shape[-1], num_query_blocks, softmax_scale * LOG2_E, *out.stride()[:3],
    )
    constexprs = dict(
        HEAD_DIM=qkv.head_dim, Q_BLOCK=qkv.q_block, K_BLOCK=qkv.k_block, CAUSAL=causal,
        LOG2_P_SCALE=math.log2(p_scale), PROMOTE=cfg.promote_every == 1, SMOOTH_V=qkv.v_mean is not None,
        NUM_STAGES=num_stages, PIPELINE_PV=pipeline_pv, ROW_SUM_MMA=not exact_lse,
        CONSUMER_REGS=consumer_regs,
    )
    grid = (min(num_query_blocks, num_programs or _num_programs(qkv.q.device, num_query_blocks)),)
    return Launch(_fp8_attention_fwd_ws_kernel, grid, args, constexprs, dict(num_warps=4, maxnreg=maxnreg))
