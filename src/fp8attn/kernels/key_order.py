"""The key order of E4M3 Vᵀ in the kernel layout: P·V's operand order, so P needs no shuffles.

On Hopper the P·V wgmma takes P from registers. Within every 32 keys a thread holds, for its rows,
keys ``8j + 2t + {0, 1}`` (``j`` = 0..3, ``t`` = lane % 4) of the Q·Kᵀ accumulator P is computed in,
but the E4M3 A operand wants keys ``16j + 4t + {0..3}`` (``j`` = 0..1) from the same thread: a
different set, so converting P costs warp shuffles, selects and byte permutes (per 64 keys and
thread: 16 SHFL, 16 SEL, 16 PRMT; docs/perf-notes.md, section 27). Any order of the keys gives the
same ``P·V`` as long as P's columns and V's rows follow it. So the quantize pass stores Vᵀ's keys
permuted within each group of 32, and the kernels relabel P's columns the same way (a reshape and a
permute of its key axis, which leaves every value in the thread that holds it): key ``a`` with bits
``(a4 a3 a2 a1 a0)`` sits at position ``(a4 a2 a1 a3 a0)``. fp16 V keeps the natural order: the fp16
A operand's layout is the accumulator's.

Tiles of 16 keys (``k_block = 16``) keep the natural order too: the groups are 32 keys, and every
tile the kernels and the quantize pass use is 32-key aligned when ``k_block >= 32``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

PV_KEY_GROUP = 32


@triton.jit
def pv_key_order(x):
    """``x [R, N]`` with keys on its last axis (P, or a Vᵀ tile) → the same values with the keys in
    P·V operand order within each group of 32; unchanged when N < 32."""
    R: tl.constexpr = x.shape[0]
    N: tl.constexpr = x.shape[1]
    if N >= 32:
        x = tl.reshape(x, [R, N // 32, 2, 2, 4, 2])
        x = tl.permute(x, (0, 1, 2, 4, 3, 5))
        x = tl.reshape(x, [R, N])
    return x


def pv_key_positions(num_keys: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The key stored at each of ``num_keys`` positions (a multiple of 32): ``stored = natural[..., positions]``."""
    keys = torch.arange(num_keys, device=device)
    return keys.reshape(num_keys // PV_KEY_GROUP, 2, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(num_keys)


def _keys_reordered(v_t: torch.Tensor, k_block: int) -> bool:
    """Whether the kernel layout stores this ``v_t`` in P·V operand order (the kernels' rule: E4M3 V and
    tiles of at least 32 keys, see :func:`pv_key_order`)."""
    return v_t.dtype != torch.float16 and k_block >= PV_KEY_GROUP


def to_pv_key_order(v_t: torch.Tensor, k_block: int) -> torch.Tensor:
    """E4M3 ``v_t [..., Skp]`` in natural key order → the kernel layout's order (a copy)."""
    if not _keys_reordered(v_t, k_block):
        return v_t
    return v_t[..., pv_key_positions(v_t.shape[-1], v_t.device)]


def from_pv_key_order(v_t: torch.Tensor, k_block: int) -> torch.Tensor:
    """The kernel layout's ``v_t [..., Skp]`` back in natural key order (a copy)."""
    if not _keys_reordered(v_t, k_block):
        return v_t
    natural = torch.empty_like(v_t)
    natural[..., pv_key_positions(v_t.shape[-1], v_t.device)] = v_t
    return natural
