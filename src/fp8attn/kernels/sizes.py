"""Launch-size arithmetic for host code that runs on every call, and the GPU size it is planned against.

``triton.cdiv`` and ``triton.next_power_of_2`` are constexpr functions in Triton 3.6: called from Python they
unwrap their arguments first, about 4 µs a call against 0.03 µs for the integer expression (measured on the
development machine), and a decoding call plans its key splits with several of them.
"""

from __future__ import annotations

import functools

import torch


def cdiv(x: int, y: int) -> int:
    """``ceil(x / y)`` for positive ``y``."""
    return -(-x // y)


def next_power_of_2(n: int) -> int:
    """The smallest power of two ``>= n`` for positive ``n`` (0 for 0, as ``triton.next_power_of_2``)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; a CPU (Triton's interpreter) counts as an H100's 132, so that
    tests there take the GPU's decisions."""
    if device.type != "cuda":
        return 132
    return _cuda_sm_count(torch.cuda.current_device() if device.index is None else device.index)


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
