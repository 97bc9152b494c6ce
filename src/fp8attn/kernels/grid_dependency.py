"""Programmatic dependent launch (PDL) between the launches of one call, on Hopper.

A call is two or three launches on one stream (statistics, quantize, attention; or layout, attention).
Launched normally, each waits for the previous one to finish and then for its own blocks to be
scheduled. With PDL (``launch_pdl=True``, compute capability 9.0 and up) a launch may start once every
block of the previous launch has signalled (``griddepcontrol.launch_dependents``, here at each block's
start): its blocks fill SMs as the previous launch's blocks retire, and each waits
(``griddepcontrol.wait``: the previous grid complete, its writes visible) before it reads what that
launch wrote.

The rule every kernel compiled with ``GRID_DEPENDENCY`` follows: before :func:`wait_for_previous_grid`
it reads only the caller's inputs and writes only this call's fresh buffers. Both are safe: the chain
starts with a normally launched kernel, which starts after everything earlier on the stream has
finished, so neither the inputs nor the memory of the fresh buffers is still in use by an earlier kernel.

``FP8ATTN_PROGRAMMATIC_LAUNCH=0`` in the environment turns it off (for comparisons).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton import knobs
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


def programmatic_launch(device: torch.device) -> bool:
    """Whether launches on ``device`` are compiled and launched for PDL: compiled kernels (not the
    interpreter) on a GPU of compute capability 9.0 or later, unless the environment turns it off."""
    return (device.type == "cuda" and not knobs.runtime.interpret
            and os.environ.get("FP8ATTN_PROGRAMMATIC_LAUNCH", "1") != "0" and _capability(device) >= (9, 0))


@functools.cache
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


@triton.jit
def signal_next_grid(GRID_DEPENDENCY: tl.constexpr):
    """Let the next launch's blocks be scheduled (once every block of this grid has signalled)."""
    if GRID_DEPENDENCY:
        gdc_launch_dependents()


@triton.jit
def wait_for_previous_grid(GRID_DEPENDENCY: tl.constexpr):
    """Block until the previous launch has finished and its writes are visible."""
    if GRID_DEPENDENCY:
        gdc_wait()
