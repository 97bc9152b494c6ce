"""A ptxas miscompile behind the first tensor-core row sums (docs/perf-notes.md, section 34), offline.

A shared-memory tile filled with ``gl.full(1.0, fp32).to(float8e4nv)`` read back 1, 1, 32, −384 in each
word on the H200. Triton's PTX is right — ``cvt.rn.satfinite.e4m3x2.f32 %rs, %r, %r`` then
``mov.b32 %r, {%rs, %rs}`` — but the SASS ptxas makes of it stores the ``F2FP...PACK_AB_MERGE_C``
register itself, whose upper half MERGE_C takes from an uninitialised register: the ``{%rs, %rs}``
pair is lost. Filled from the bits (``gl.full(0x38, int8)``, bitcast), the tile is a constant store.
This compiles both fills for sm_90 without a GPU and prints the PTX and SASS lines that show it:

    TRITON_INTERPRET=0 python benchmarks/fp8_splat_repro.py
"""

from __future__ import annotations

import subprocess
import tempfile

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared

from fp8attn.kernel_report import _tool, compile_offline
from fp8attn.kernels.launch import Launch


@gluon.jit
def _fill_and_read_back(tile_ptr, FILL: gl.constexpr, FROM_BITS: gl.constexpr):
    blocked: gl.constexpr = gl.BlockedLayout([1, 16], [1, 32], [4, 1], [1, 0])
    shared: gl.constexpr = gl.NVMMASharedLayout.get_default_for([8, 128], gl.float8e4nv)
    if FROM_BITS:
        value = gl.full([8, 128], FILL, gl.int8, blocked).to(gl.float8e4nv, bitcast=True)
    else:
        value = gl.full([8, 128], FILL, gl.float32, blocked).to(gl.float8e4nv)
    tile = gl.allocate_shared_memory(gl.float8e4nv, [8, 128], shared, value)
    fence_async_shared()
    gl.thread_barrier()
    rows = gl.arange(0, 8, layout=gl.SliceLayout(1, blocked))
    cols = gl.arange(0, 128, layout=gl.SliceLayout(0, blocked))
    gl.store(tile_ptr + rows[:, None] * 128 + cols[None, :], tile.load(blocked))


def main() -> None:
    tile = torch.empty(8, 128, dtype=torch.float8_e4m3fn, device="meta")
    for from_bits, fill in ((False, 1.0), (True, 0x38)):
        compiled = compile_offline(Launch(_fill_and_read_back, (1,), (tile,), dict(FILL=fill, FROM_BITS=from_bits),
                                          dict(num_warps=4)))
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            sass = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                                  check=True).stdout
        print("fill from bits 0x38" if from_bits else "fill 1.0 converted")
        for line in compiled.asm["ptx"].splitlines():
            if "e4m3x2" in line or ("mov.b32" in line and "{" in line) or "st.shared" in line:
                print("  PTX ", line.strip())
        for line in sass.splitlines():
            if "F2FP" in line or "STS" in line or "0x38383838" in line:
                print("  SASS", line.split(";")[0].strip(), ";")


if __name__ == "__main__":
    main()
