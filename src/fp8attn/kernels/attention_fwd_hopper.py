"""The forward kernel's hot loop written in Gluon for Hopper: TMA loads and asynchronous wgmma.

Same recipe and tiles as :mod:`fp8attn.kernels.attention_fwd` (whose docstring explains the scale
folding); what differs is the schedule, which ``tl.dot``-level Triton does not express:

* K and Vᵀ tiles arrive by TMA into a ring of ``NUM_STAGES`` shared-memory slots, issued
  ``NUM_STAGES - 1`` tiles ahead by the consumer warps themselves (a TMA copy costs one thread one
  instruction), one mbarrier per slot;
* inside one warpgroup, the matmuls of neighbouring key tiles overlap the softmax (FlashAttention-3's
  intra-warpgroup pipelining): iteration ``j`` issues ``S_j = Q·K_jᵀ`` and then ``P_{j-1}·V_{j-1}``
  asynchronously, waits for ``S_j`` only, and runs tile ``j``'s softmax while ``P_{j-1}·V_{j-1}`` is
  still on the tensor cores.

Numerics are the Triton kernel's, operation for operation: the same wgmma shapes and operand
types, P rounded to E4M3 per tile, P·V promoted to fp32 every tile when ``PROMOTE`` (the
accumulator otherwise stays in the wgmma accumulator), the same online-softmax arithmetic.
"""

from __future__ import annotations

import math

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from fp8attn.kernels.attention_fwd import LOG2_E, forward_config
from fp8attn.kernels.launch import Launch
from fp8attn.quantize import QuantizedQKV

LN_2: gl.constexpr = gl.constexpr(math.log(2.0))


@gluon.jit
def _issue_kv_load(k_desc, vt_desc, k_smem, v_smem, ready, tile, kv_row, vt_row, BLOCK_N: gl.constexpr,
                   NUM_STAGES: gl.constexpr):
    """Start the TMA copies of key tile ``tile`` (K rows and Vᵀ columns) into its ring slot."""
    slot = tile % NUM_STAGES
    bar = ready.index(slot)
    mbarrier.expect(bar, k_desc.block_type.nbytes + vt_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(k_desc, [kv_row + tile * BLOCK_N, 0], bar, k_smem.index(slot))
    tma.async_copy_global_to_shared(vt_desc, [vt_row, tile * BLOCK_N], bar, v_smem.index(slot))


@gluon.jit
def _scores(qk, k_scale_base, tile, offs_m, offs_n0, c_row, full_hi, seqlen_k, diagonal,
            BLOCK_N: gl.constexpr, K_BLOCK: gl.constexpr, CAUSAL: gl.constexpr):
    """Raw products of one key tile with their per-row factor ``c`` (> 0); masked tiles get -inf."""
    start_n = tile * BLOCK_N
    k_scale = gl.load(k_scale_base + start_n // K_BLOCK)
    if start_n + BLOCK_N > full_hi:
        offs_n = start_n + offs_n0
        visible = gl.expand_dims(offs_n, 0) < seqlen_k
        if CAUSAL:
            visible = visible & (gl.expand_dims(offs_n, 0) <= gl.expand_dims(offs_m, 1) + diagonal)
        qk = gl.where(visible, qk, float("-inf"))
    return qk, c_row * k_scale


@gluon.jit
def _softmax_step(qk, c, m_i, l_i, LOG2_P_SCALE: gl.constexpr):
    """The Triton kernel's ``_softmax_step``: P (times 2**LOG2_P_SCALE), alpha, new row max and sum."""
    m_new = gl.maximum(m_i, gl.max(qk, axis=1) * c)
    m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2(m_i - m_use)
    p = gl.exp2(qk * gl.expand_dims(c, 1) - gl.expand_dims(m_use - LOG2_P_SCALE, 1))
    return p, alpha, m_use, l_i * alpha + gl.sum(p, axis=1)


@gluon.jit
def _attend_tile(qk, acc, l_i, m_i, v_tile, k_scale_base, tile, offs_m, offs_n0, c_row, full_hi, seqlen_k, diagonal,
                 p_layout: gl.constexpr, pv_rows: gl.constexpr, BLOCK_N: gl.constexpr, K_BLOCK: gl.constexpr,
                 CAUSAL: gl.constexpr, LOG2_P_SCALE: gl.constexpr, PROMOTE: gl.constexpr, QK_IN_FLIGHT: gl.constexpr,
                 PV_LEFT_RUNNING: gl.constexpr = True):
    """Softmax of one key tile's products ``qk``, then ``acc·alpha + P·V``.

    With PROMOTE the product lands in fresh registers and is added in fp32, waited for here; without,
    it accumulates into ``acc`` and is left running: the previous tile's P·V is waited for here, just
    before ``acc`` is rescaled, letting the QK_IN_FLIGHT (0 or 1) newer score matmuls run on.
    """
    qk, c = _scores(qk.to(gl.float32), k_scale_base, tile, offs_m, offs_n0, c_row, full_hi, seqlen_k, diagonal,
                    BLOCK_N, K_BLOCK, CAUSAL)
    p, alpha, m_i, l_i = _softmax_step(qk, c, m_i, l_i, LOG2_P_SCALE)
    p8 = gl.convert_layout(p.to(gl.float8e4nv), p_layout)
    alpha = gl.expand_dims(gl.convert_layout(alpha, pv_rows), 1)
    if PROMOTE:
        pv = warpgroup_mma(p8, v_tile.permute((1, 0)), acc, use_acc=False, is_async=True)
        pv = warpgroup_mma_wait(0, deps=(pv,))
        acc = acc * alpha + pv
    elif PV_LEFT_RUNNING:
        acc = warpgroup_mma_wait(QK_IN_FLIGHT, deps=(acc,))
        acc = warpgroup_mma(p8, v_tile.permute((1, 0)), acc * alpha, is_async=True)
    else:
        acc = warpgroup_mma(p8, v_tile.permute((1, 0)), acc * alpha, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc,))
    return acc, l_i, m_i


@gluon.jit
def _fp8_attention_fwd_wgmma_kernel(
    q_desc, k_desc, vt_desc, q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
    seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_q_scale_blocks, num_k_scale_blocks,
    qk_scale_log2,
    stride_ob, stride_oh, stride_om,
    HEAD_DIM: gl.constexpr, Q_BLOCK: gl.constexpr, K_BLOCK: gl.constexpr, CAUSAL: gl.constexpr,
    LOG2_P_SCALE: gl.constexpr, PROMOTE: gl.constexpr, SMOOTH_V: gl.constexpr, NUM_STAGES: gl.constexpr,
    num_warps: gl.constexpr,
):
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
    HEAD_DIM_PAD: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    QK_INT8: gl.constexpr = q_desc.dtype == gl.int8
    PV_IN_FLIGHT: gl.constexpr = 0 if PROMOTE else 1  # P·V groups left running at the end of an iteration
    gl.static_assert(NUM_STAGES >= 2 + PV_IN_FLIGHT, "tile j + 1 loads while tile j (and j - 1) are in use")
    qk_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, BLOCK_N, 32])
    pv_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, HEAD_DIM_PAD, 32])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=pv_layout, k_width=4)
    qk_rows: gl.constexpr = gl.SliceLayout(1, qk_layout)
    pv_rows: gl.constexpr = gl.SliceLayout(1, pv_layout)
    pv_cols: gl.constexpr = gl.SliceLayout(0, pv_layout)

    start_m = gl.program_id(0) * BLOCK_M
    bh = gl.program_id(1)
    b = bh // num_q_heads
    h = bh % num_q_heads
    kv_bh = b * num_kv_heads + h // (num_q_heads // num_kv_heads)
    kv_row = kv_bh * seqlen_k_pad
    vt_row = kv_bh * HEAD_DIM_PAD

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [BLOCK_M, HEAD_DIM_PAD], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [NUM_STAGES, BLOCK_N, HEAD_DIM_PAD], k_desc.layout)
    v_smem = gl.allocate_shared_memory(vt_desc.dtype, [NUM_STAGES, HEAD_DIM_PAD, BLOCK_N], vt_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(ready.index(i), count=1)
    mbarrier.init(q_ready, count=1)

    diagonal = seqlen_k - seqlen_q
    if CAUSAL:
        hi = gl.maximum(gl.minimum(seqlen_k, start_m + BLOCK_M + diagonal), 0)
        full_hi = gl.maximum(gl.minimum(seqlen_k, start_m + diagonal + 1), 0) // BLOCK_N * BLOCK_N
    else:
        hi = seqlen_k
        full_hi = seqlen_k // BLOCK_N * BLOCK_N
    num_tiles = gl.cdiv(hi, BLOCK_N)

    mbarrier.expect(q_ready, q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [bh * seqlen_q + start_m, 0], q_ready, q_smem)
    for i in gl.static_range(NUM_STAGES - PV_IN_FLIGHT):
        if i < num_tiles:
            _issue_kv_load(k_desc, vt_desc, k_smem, v_smem, ready, i, kv_row, vt_row, BLOCK_N, NUM_STAGES)

    offs_m = start_m + gl.arange(0, BLOCK_M, layout=qk_rows)
    offs_n0 = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, qk_layout))
    m_ok = offs_m < seqlen_q
    q_scale = gl.load(q_scale_ptr + bh * num_q_scale_blocks + offs_m // Q_BLOCK, mask=m_ok, other=1.0)
    c_row = q_scale * qk_scale_log2
    k_scale_base = k_scale_ptr + kv_bh * num_k_scale_blocks
    qk_acc_type: gl.constexpr = gl.int32 if QK_INT8 else gl.float32
    qk_zero = gl.zeros([BLOCK_M, BLOCK_N], qk_acc_type, qk_layout)

    acc = gl.zeros([BLOCK_M, HEAD_DIM_PAD], gl.float32, pv_layout)
    if not PROMOTE:
        acc = warpgroup_mma_init(acc)  # carried through the loop as an in-flight wgmma accumulator
    l_i = gl.zeros([BLOCK_M], gl.float32, qk_rows)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, qk_rows)
    mbarrier.wait(q_ready, 0)
    if num_tiles > 0:
        mbarrier.wait(ready.index(0), 0)
        qk = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), qk_zero, use_acc=False, is_async=True)
        qk = warpgroup_mma_wait(0, deps=(qk,))
        for j in range(0, num_tiles - 1):
            # Scores of tile j + 1 run on the tensor cores while tile j's softmax runs here.
            nxt = (j + 1) % NUM_STAGES
            mbarrier.wait(ready.index(nxt), ((j + 1) // NUM_STAGES) & 1)
            qk_next = warpgroup_mma(q_smem, k_smem.index(nxt).permute((1, 0)), qk_zero, use_acc=False,
                                    is_async=True)
            acc, l_i, m_i = _attend_tile(qk, acc, l_i, m_i, v_smem.index(j % NUM_STAGES), k_scale_base, j, offs_m,
                                         offs_n0, c_row, full_hi, seqlen_k, diagonal, p_layout, pv_rows, BLOCK_N,
                                         K_BLOCK, CAUSAL, LOG2_P_SCALE, PROMOTE, 1)
            qk = warpgroup_mma_wait(PV_IN_FLIGHT, deps=(qk_next,))
            # The newest finished P·V is tile j's (tile j - 1's while one runs on): its slot takes the tile
            # NUM_STAGES later.
            if j + NUM_STAGES - PV_IN_FLIGHT < num_tiles:
                _issue_kv_load(k_desc, vt_desc, k_smem, v_smem, ready, j + NUM_STAGES - PV_IN_FLIGHT, kv_row, vt_row,
                               BLOCK_N, NUM_STAGES)
        last = num_tiles - 1
        acc, l_i, m_i = _attend_tile(qk, acc, l_i, m_i, v_smem.index(last % NUM_STAGES), k_scale_base, last, offs_m,
                                     offs_n0, c_row, full_hi, seqlen_k, diagonal, p_layout, pv_rows, BLOCK_N, K_BLOCK,
                                     CAUSAL, LOG2_P_SCALE, PROMOTE, 0)
    if not PROMOTE:
        acc = warpgroup_mma_wait(0, deps=(acc,))
    for i in gl.static_range(NUM_STAGES):
        mbarrier.invalidate(ready.index(i))
    mbarrier.invalidate(q_ready)

    # Epilogue: out = acc · v_scale / l (+ v_mean); the natural-log LSE.
    offs_d = gl.arange(0, HEAD_DIM_PAD, layout=pv_cols)
    offs_mo = start_m + gl.arange(0, BLOCK_M, layout=pv_rows)
    l_o = gl.convert_layout(l_i, pv_rows)
    seen = l_o > 0
    inv_l = gl.where(seen, 1.0 / gl.where(seen, l_o, 1.0), 0.0)
    v_scale = gl.load(v_scale_ptr + kv_bh * HEAD_DIM_PAD + offs_d)
    out = acc * gl.expand_dims(inv_l, 1) * gl.expand_dims(v_scale, 0)
    if SMOOTH_V:
        v_mean = gl.load(v_mean_ptr + kv_bh * HEAD_DIM_PAD + offs_d)
        out = gl.where(gl.expand_dims(seen, 1), out + gl.expand_dims(v_mean, 0), 0.0)
    out_ptrs = (out_ptr + b * stride_ob + h * stride_oh + gl.expand_dims(offs_mo, 1) * stride_om
                + gl.expand_dims(offs_d, 0))
    store_ok = gl.expand_dims(offs_mo < seqlen_q, 1) & gl.expand_dims(offs_d < HEAD_DIM, 0)
    gl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=store_ok)
    seen_q = l_i > 0
    lse = gl.where(seen_q, (m_i + gl.log2(gl.where(seen_q, l_i, 1.0)) - LOG2_P_SCALE) * LN_2, float("-inf"))
    gl.store(lse_ptr + bh * seqlen_q + offs_m, lse, mask=m_ok)


@gluon.jit
def _key_tiles(start_m, seqlen_q, seqlen_k, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    """Key tiles rows [start_m, start_m + BLOCK_M) visit, the end of the tiles they all see whole, and
    the causal diagonal offset (bottom-right aligned)."""
    diagonal = seqlen_k - seqlen_q
    if CAUSAL:
        hi = gl.maximum(gl.minimum(seqlen_k, start_m + BLOCK_M + diagonal), 0)
        full_hi = gl.maximum(gl.minimum(seqlen_k, start_m + diagonal + 1), 0) // BLOCK_N * BLOCK_N
    else:
        hi = seqlen_k
        full_hi = seqlen_k // BLOCK_N * BLOCK_N
    return gl.cdiv(hi, BLOCK_N), full_hi, diagonal


@gluon.jit
def _ws_producer(
    q_desc, k_desc, vt_desc, q_smem, k_smem, v_smem, ready, empty, q_ready,
    q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
    seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_q_scale_blocks, num_k_scale_blocks,
    qk_scale_log2, stride_ob, stride_oh, stride_om,
    HEAD_DIM: gl.constexpr, Q_BLOCK: gl.constexpr, K_BLOCK: gl.constexpr, CAUSAL: gl.constexpr,
    LOG2_P_SCALE: gl.constexpr, PROMOTE: gl.constexpr, SMOOTH_V: gl.constexpr, NUM_STAGES: gl.constexpr,
):
    """One warp: both consumers' Q tiles, then every key tile either consumer needs, into the ring.

    A slot is refilled once each consumer that read its previous tile has released it (consumer 0,
    the upper rows, may need fewer tiles under a causal mask and stops releasing early).
    """
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    HEAD_DIM_PAD: gl.constexpr = q_desc.block_type.shape[1]
    start_m = gl.program_id(0) * 2 * BLOCK_M
    bh = gl.program_id(1)
    b = bh // num_q_heads
    kv_bh = b * num_kv_heads + (bh % num_q_heads) // (num_q_heads // num_kv_heads)
    for c in gl.static_range(2):
        mbarrier.expect(q_ready.index(c), q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [bh * seqlen_q + start_m + c * BLOCK_M, 0], q_ready.index(c),
                                        q_smem.index(c))
    n0, _, _ = _key_tiles(start_m, seqlen_q, seqlen_k, BLOCK_M, BLOCK_N, CAUSAL)
    n1, _, _ = _key_tiles(start_m + BLOCK_M, seqlen_q, seqlen_k, BLOCK_M, BLOCK_N, CAUSAL)
    for t in range(gl.maximum(n0, n1)):
        slot = t % NUM_STAGES
        phase = ((t // NUM_STAGES) & 1) ^ 1  # a fresh barrier passes a wait for parity 1
        mbarrier.wait(empty.index(slot), phase, pred=t < n0 + NUM_STAGES)
        mbarrier.wait(empty.index(NUM_STAGES + slot), phase, pred=t < n1 + NUM_STAGES)
        _issue_kv_load(k_desc, vt_desc, k_smem, v_smem, ready, t, kv_bh * seqlen_k_pad, kv_bh * HEAD_DIM_PAD,
                       BLOCK_N, NUM_STAGES)


@gluon.jit
def _ws_consume(
    q_desc, k_desc, vt_desc, q_smem, k_smem, v_smem, ready, empty, q_ready,
    q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
    seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_q_scale_blocks, num_k_scale_blocks,
    qk_scale_log2, stride_ob, stride_oh, stride_om,
    HEAD_DIM: gl.constexpr, Q_BLOCK: gl.constexpr, K_BLOCK: gl.constexpr, CAUSAL: gl.constexpr,
    LOG2_P_SCALE: gl.constexpr, PROMOTE: gl.constexpr, SMOOTH_V: gl.constexpr, NUM_STAGES: gl.constexpr,
    WG: gl.constexpr,
):
    """One warpgroup: the 64 query rows number WG of the program's 128, against the ring's key tiles."""
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
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

    start_m = gl.program_id(0) * 2 * BLOCK_M + WG * BLOCK_M
    bh = gl.program_id(1)
    b = bh // num_q_heads
    h = bh % num_q_heads
    kv_bh = b * num_kv_heads + h // (num_q_heads // num_kv_heads)
    num_tiles, full_hi, diagonal = _key_tiles(start_m, seqlen_q, seqlen_k, BLOCK_M, BLOCK_N, CAUSAL)

    offs_m = start_m + gl.arange(0, BLOCK_M, layout=qk_rows)
    offs_n0 = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, qk_layout))
    m_ok = offs_m < seqlen_q
    q_scale = gl.load(q_scale_ptr + bh * num_q_scale_blocks + offs_m // Q_BLOCK, mask=m_ok, other=1.0)
    c_row = q_scale * qk_scale_log2
    k_scale_base = k_scale_ptr + kv_bh * num_k_scale_blocks
    qk_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.int32 if QK_INT8 else gl.float32, qk_layout)
    acc = gl.zeros([BLOCK_M, HEAD_DIM_PAD], gl.float32, pv_layout)
    l_i = gl.zeros([BLOCK_M], gl.float32, qk_rows)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, qk_rows)
    q_tile = q_smem.index(WG)
    mbarrier.wait(q_ready.index(WG), 0)
    if num_tiles > 0:
        mbarrier.wait(ready.index(0), 0)
        qk = warpgroup_mma(q_tile, k_smem.index(0).permute((1, 0)), qk_zero, use_acc=False, is_async=True)
        qk = warpgroup_mma_wait(0, deps=(qk,))
        for j in range(0, num_tiles - 1):
            nxt = (j + 1) % NUM_STAGES
            mbarrier.wait(ready.index(nxt), ((j + 1) // NUM_STAGES) & 1)
            qk_next = warpgroup_mma(q_tile, k_smem.index(nxt).permute((1, 0)), qk_zero, use_acc=False,
                                    is_async=True)
            acc, l_i, m_i = _attend_tile(qk, acc, l_i, m_i, v_smem.index(j % NUM_STAGES), k_scale_base, j, offs_m,
                                         offs_n0, c_row, full_hi, seqlen_k, diagonal, p_layout, pv_rows, BLOCK_N,
                                         K_BLOCK, CAUSAL, LOG2_P_SCALE, PROMOTE, 1, False)
            qk = warpgroup_mma_wait(0, deps=(qk_next,))
            mbarrier.arrive(empty.index(WG * NUM_STAGES + j % NUM_STAGES), count=1)
        last = num_tiles - 1
        acc, l_i, m_i = _attend_tile(qk, acc, l_i, m_i, v_smem.index(last % NUM_STAGES), k_scale_base, last, offs_m,
                                     offs_n0, c_row, full_hi, seqlen_k, diagonal, p_layout, pv_rows, BLOCK_N, K_BLOCK,
                                     CAUSAL, LOG2_P_SCALE, PROMOTE, 0, False)
        mbarrier.arrive(empty.index(WG * NUM_STAGES + last % NUM_STAGES), count=1)

    offs_d = gl.arange(0, HEAD_DIM_PAD, layout=pv_cols)
    offs_mo = start_m + gl.arange(0, BLOCK_M, layout=pv_rows)
    l_o = gl.convert_layout(l_i, pv_rows)
    seen = l_o > 0
    inv_l = gl.where(seen, 1.0 / gl.where(seen, l_o, 1.0), 0.0)
    v_scale = gl.load(v_scale_ptr + kv_bh * HEAD_DIM_PAD + offs_d)
    out = acc * gl.expand_dims(inv_l, 1) * gl.expand_dims(v_scale, 0)
    if SMOOTH_V:
        v_mean = gl.load(v_mean_ptr + kv_bh * HEAD_DIM_PAD + offs_d)
        out = gl.where(gl.expand_dims(seen, 1), out + gl.expand_dims(v_mean, 0), 0.0)
    out_ptrs = (out_ptr + b * stride_ob + h * stride_oh + gl.expand_dims(offs_mo, 1) * stride_om
                + gl.expand_dims(offs_d, 0))
    store_ok = gl.expand_dims(offs_mo < seqlen_q, 1) & gl.expand_dims(offs_d < HEAD_DIM, 0)
    gl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=store_ok)
    seen_q = l_i > 0
    lse = gl.where(seen_q, (m_i + gl.log2(gl.where(seen_q, l_i, 1.0)) - LOG2_P_SCALE) * LN_2, float("-inf"))
    gl.store(lse_ptr + bh * seqlen_q + offs_m, lse, mask=m_ok)


@gluon.jit
def _ws_consumer0(
    q_desc, k_desc, vt_desc, q_smem, k_smem, v_smem, ready, empty, q_ready,
    q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
    seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_q_scale_blocks, num_k_scale_blocks,
    qk_scale_log2, stride_ob, stride_oh, stride_om,
    HEAD_DIM: gl.constexpr, Q_BLOCK: gl.constexpr, K_BLOCK: gl.constexpr, CAUSAL: gl.constexpr,
    LOG2_P_SCALE: gl.constexpr, PROMOTE: gl.constexpr, SMOOTH_V: gl.constexpr, NUM_STAGES: gl.constexpr,
):
    _ws_consume(q_desc, k_desc, vt_desc, q_smem, k_smem, v_smem, ready, empty, q_ready,
                q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
                seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_q_scale_blocks, num_k_scale_blocks,
                qk_scale_log2, stride_ob, stride_oh, stride_om,
                HEAD_DIM, Q_BLOCK, K_BLOCK, CAUSAL, LOG2_P_SCALE, PROMOTE, SMOOTH_V, NUM_STAGES, 0)


@gluon.jit
def _ws_consumer1(
    q_desc, k_desc, vt_desc, q_smem, k_smem, v_smem, ready, empty, q_ready,
    q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
    seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_q_scale_blocks, num_k_scale_blocks,
    qk_scale_log2, stride_ob, stride_oh, stride_om,
    HEAD_DIM: gl.constexpr, Q_BLOCK: gl.constexpr, K_BLOCK: gl.constexpr, CAUSAL: gl.constexpr,
    LOG2_P_SCALE: gl.constexpr, PROMOTE: gl.constexpr, SMOOTH_V: gl.constexpr, NUM_STAGES: gl.constexpr,
):
    _ws_consume(q_desc, k_desc, vt_desc, q_smem, k_smem, v_smem, ready, empty, q_ready,
                q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
                seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_q_scale_blocks, num_k_scale_blocks,
                qk_scale_log2, stride_ob, stride_oh, stride_om,
                HEAD_DIM, Q_BLOCK, K_BLOCK, CAUSAL, LOG2_P_SCALE, PROMOTE, SMOOTH_V, NUM_STAGES, 1)


@gluon.jit
def _fp8_attention_fwd_ws_kernel(
    q_desc, k_desc, vt_desc, q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
    seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_q_scale_blocks, num_k_scale_blocks,
    qk_scale_log2,
    stride_ob, stride_oh, stride_om,
    HEAD_DIM: gl.constexpr, Q_BLOCK: gl.constexpr, K_BLOCK: gl.constexpr, CAUSAL: gl.constexpr,
    LOG2_P_SCALE: gl.constexpr, PROMOTE: gl.constexpr, SMOOTH_V: gl.constexpr, NUM_STAGES: gl.constexpr,
    CONSUMER_REGS: gl.constexpr, num_warps: gl.constexpr,
):
    """Warp-specialized: two consumer warpgroups (64 query rows each) share one TMA producer warp's ring."""
    gl.static_assert(num_warps == 4, "the default partition is consumer warpgroup 0")
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
    HEAD_DIM_PAD: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2, BLOCK_M, HEAD_DIM_PAD], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [NUM_STAGES, BLOCK_N, HEAD_DIM_PAD], k_desc.layout)
    v_smem = gl.allocate_shared_memory(vt_desc.dtype, [NUM_STAGES, HEAD_DIM_PAD, BLOCK_N], vt_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [2 * NUM_STAGES, 1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
        mbarrier.init(empty.index(NUM_STAGES + i), count=1)
    for i in gl.static_range(2):
        mbarrier.init(q_ready.index(i), count=1)
    # The argument tuples are written out in the call: an assigned tuple would turn its constexprs into tensors.
    gl.warp_specialize([
        (_ws_consumer0, (q_desc, k_desc, vt_desc, q_smem, k_smem, v_smem, ready, empty, q_ready,
                          q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
                          seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_q_scale_blocks,
                          num_k_scale_blocks, qk_scale_log2, stride_ob, stride_oh, stride_om,
                          HEAD_DIM, Q_BLOCK, K_BLOCK, CAUSAL, LOG2_P_SCALE, PROMOTE, SMOOTH_V, NUM_STAGES)),
        (_ws_consumer1, (q_desc, k_desc, vt_desc, q_smem, k_smem, v_smem, ready, empty, q_ready,
                          q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
                          seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_q_scale_blocks,
                          num_k_scale_blocks, qk_scale_log2, stride_ob, stride_oh, stride_om,
                          HEAD_DIM, Q_BLOCK, K_BLOCK, CAUSAL, LOG2_P_SCALE, PROMOTE, SMOOTH_V, NUM_STAGES)),
        (_ws_producer, (q_desc, k_desc, vt_desc, q_smem, k_smem, v_smem, ready, empty, q_ready,
                          q_scale_ptr, k_scale_ptr, v_scale_ptr, v_mean_ptr, out_ptr, lse_ptr,
                          seqlen_q, seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, num_q_scale_blocks,
                          num_k_scale_blocks, qk_scale_log2, stride_ob, stride_oh, stride_om,
                          HEAD_DIM, Q_BLOCK, K_BLOCK, CAUSAL, LOG2_P_SCALE, PROMOTE, SMOOTH_V, NUM_STAGES)),
    ], [4, 1],
                       [CONSUMER_REGS, 24])


_GL_DTYPES = {torch.float8_e4m3fn: gl.float8e4nv, torch.int8: gl.int8}


def _descriptor(t2d: torch.Tensor, block: list[int]) -> TensorDescriptor:
    layout = gl.NVMMASharedLayout.get_default_for(block, _GL_DTYPES[t2d.dtype])
    return TensorDescriptor(t2d, list(t2d.shape), list(t2d.stride()), block, layout)


def wgmma_forward_launch(
    qkv: QuantizedQKV, out: torch.Tensor, lse: torch.Tensor, *, causal: bool, softmax_scale: float, p_scale: float,
    num_stages: int = 3, warp_specialized: bool = False, consumer_regs: int = 240, maxnreg: int = 168,
) -> Launch:
    """The Gluon forward kernel's launch for ``qkv`` (8-bit P·V recipes, contiguous kernel layout)."""
    batch, num_q_heads, seqlen_q, dp = qkv.q.shape
    num_kv_heads, seqlen_k_pad = qkv.k.shape[1], qkv.k.shape[2]
    if qkv.v_t.dtype != torch.float8_e4m3fn:
        raise ValueError(f"the wgmma kernel takes E4M3 P·V recipes, got V in {qkv.v_t.dtype}")
    if not all(t.is_contiguous() for t in (qkv.q, qkv.k, qkv.v_t)):
        raise ValueError("the wgmma kernel reads q, k and v_t through 2-D TMA views: they must be contiguous")
    cfg = forward_config(dp, qkv.k_block, causal, qk_int8=qkv.q.dtype == torch.int8)
    if cfg.promote_every not in (0, 1) or cfg.qk_imprecise_acc is not None or cfg.pv_imprecise_acc is not None:
        raise ValueError(f"the wgmma kernel runs promote_every 0 or 1 without imprecise-accumulation limits: {cfg}")
    block_m = 64 if warp_specialized else cfg.block_m
    q_desc = _descriptor(qkv.q.reshape(-1, dp), [block_m, dp])
    k_desc = _descriptor(qkv.k.reshape(-1, dp), [cfg.block_n, dp])
    vt_desc = _descriptor(qkv.v_t.reshape(-1, seqlen_k_pad), [dp, cfg.block_n])
    args = (
        q_desc, k_desc, vt_desc, qkv.q_scale, qkv.k_scale, qkv.v_scale,
        qkv.v_mean if qkv.v_mean is not None else qkv.v_scale, out, lse,
        seqlen_q, qkv.seqlen_k, seqlen_k_pad, num_q_heads, num_kv_heads, qkv.q_scale.shape[-1],
        qkv.k_scale.shape[-1], softmax_scale * LOG2_E, *out.stride()[:3],
    )
    constexprs = dict(
        HEAD_DIM=qkv.head_dim, Q_BLOCK=qkv.q_block, K_BLOCK=qkv.k_block, CAUSAL=causal,
        LOG2_P_SCALE=math.log2(p_scale), PROMOTE=cfg.promote_every == 1, SMOOTH_V=qkv.v_mean is not None,
        NUM_STAGES=num_stages,
    )
    if warp_specialized:
        grid = (triton.cdiv(seqlen_q, 2 * block_m), batch * num_q_heads)
        return Launch(_fp8_attention_fwd_ws_kernel, grid, args, dict(constexprs, CONSUMER_REGS=consumer_regs),
                      dict(num_warps=4, maxnreg=maxnreg))
    grid = (triton.cdiv(seqlen_q, cfg.block_m), batch * num_q_heads)
    return Launch(_fp8_attention_fwd_wgmma_kernel, grid, args, constexprs, dict(num_warps=cfg.num_warps))
