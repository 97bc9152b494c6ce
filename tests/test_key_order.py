"""Vᵀ's stored key order and P's relabelling agree, in PyTorch and in the kernels' own helper."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from fp8attn.fp8 import E4M3
from fp8attn.kernels.key_order import from_pv_key_order, pv_key_order, pv_key_positions, to_pv_key_order


@triton.jit
def _reorder_kernel(x_ptr, y_ptr, R: tl.constexpr, N: tl.constexpr):
    offs = tl.arange(0, R)[:, None] * N + tl.arange(0, N)[None, :]
    tl.store(y_ptr + offs, pv_key_order(tl.load(x_ptr + offs)))


def test_positions_move_key_bits_a4_a3_a2_a1_a0_to_a4_a2_a1_a3_a0():
    positions = pv_key_positions(96)
    for b, a in enumerate(positions.tolist()):
        bits = [(a >> i) & 1 for i in range(5)]  # a0 .. a4
        assert b % 32 == bits[0] | bits[3] << 1 | bits[1] << 2 | bits[2] << 3 | bits[4] << 4
        assert b // 32 == a // 32  # keys stay in their group of 32


@pytest.mark.parametrize("num_keys", [16, 32, 128])
def test_kernel_helper_relabels_keys_like_the_stored_order(device, num_keys):
    """The kernels' pv_key_order on a tile equals PyTorch's gather by pv_key_positions (tiles of fewer
    than 32 keys stay as they are)."""
    x = torch.arange(4 * num_keys, dtype=torch.int32, device=device).reshape(4, num_keys)
    y = torch.full_like(x, -1)
    _reorder_kernel[(1,)](x, y, R=4, N=num_keys)
    expected = x[:, pv_key_positions(num_keys, device)] if num_keys >= 32 else x
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_round_trip_and_which_layouts_reorder(gen):
    v_t = torch.randn(2, 3, 8, 256, generator=gen).to(E4M3)
    stored = to_pv_key_order(v_t, k_block=128)
    assert not torch.equal(stored.float(), v_t.float())
    assert torch.equal(from_pv_key_order(stored, k_block=128).float(), v_t.float())
    assert to_pv_key_order(v_t, k_block=16) is v_t  # 16-key tiles: natural order
    assert to_pv_key_order(v_t.half(), k_block=128).dtype == torch.float16  # fp16 P·V: natural order
    assert torch.equal(to_pv_key_order(v_t.half(), k_block=128), v_t.half())
