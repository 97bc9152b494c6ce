"""Offline (no GPU): what Triton 3.6 compiles for an FP8 P·V whose V tile is loaded as stored, in rows
``[BLOCK_N, D]``, against the kernel layout's Vᵀ ``[D, BLOCK_N]`` (transposed in shared memory for free).
Prints the shared memory and the SASS opcode counts of both. Run: ``TRITON_INTERPRET=0 python pv_operand_offline.py``."""

import collections
import subprocess
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fp8attn.kernel_report import _tool


@triton.jit
def pv_loop(p_ptr, v_ptr, o_ptr, n, stride_v, BLOCK_N: tl.constexpr, D: tl.constexpr, V_ROWS: tl.constexpr):
    offs_m = tl.arange(0, 64)
    offs_d = tl.arange(0, D)
    acc = tl.zeros([64, D], tl.float32)
    for start in tl.range(0, n, BLOCK_N, num_stages=3):
        offs_n = start + tl.arange(0, BLOCK_N)
        p = tl.load(p_ptr + offs_m[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :])
        if V_ROWS:
            v = tl.load(v_ptr + offs_n[:, None] * stride_v + offs_d[None, :])
        else:
            v = tl.trans(tl.load(v_ptr + offs_d[:, None] * stride_v + offs_n[None, :]))
        acc = tl.dot(p, v, acc)
    tl.store(o_ptr + offs_m[:, None] * D + offs_d[None, :], acc)


signature = {"p_ptr": "*fp8e4nv", "v_ptr": "*fp8e4nv", "o_ptr": "*fp32", "n": "i32", "stride_v": "i32",
             "BLOCK_N": "constexpr", "D": "constexpr", "V_ROWS": "constexpr"}
aligned = {(i,): [["tt.divisibility", 16]] for i in (0, 1, 2, 4)}
for v_rows in (False, True):
    source = ASTSource(pv_loop, signature, constexprs={"BLOCK_N": 128, "D": 128, "V_ROWS": v_rows}, attrs=aligned)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        sass = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    ops = collections.Counter()
    for line in sass.splitlines():
        if line.strip().startswith("/*") and ";" in line:
            words = line.split("*/", 1)[1].split()
            ops[words[1] if words[0].startswith("@") else words[0]] += 1
    shown = {op: n for op, n in ops.items() if op.split(".")[0] in ("STS", "LDS", "LDG", "LDGSTS", "PRMT", "QGMMA")}
    print(f"{'V in rows' if v_rows else 'V transposed (kernel layout)'}: shared {compiled.metadata.shared} B, {shown}")
