"""What the compiler made of fp8attn's kernels: registers, spills, shared memory and matrix instructions.

Kernels are compiled ahead of time for a chosen GPU architecture (default sm_90, Hopper) from the very
:class:`~fp8attn.kernels.launch.Launch` the library runs, and their SASS is read with the
``cuobjdump`` that ships with Triton. No GPU is needed, so the check that the attention kernel issues
FP8 wgmma (``QGMMA``) rather than a slower path runs in CI too.

``python -m fp8attn.kernel_report`` (or ``fp8attn inspect``) prints one row per kernel and shape.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

# Matrix instructions worth counting: FP8 wgmma, fp16/bf16 wgmma, Ampere-style mma, integer mma;
# local-memory traffic (spills): LDL/STL.
_OPCODES = ("QGMMA", "HGMMA", "HMMA", "IGMMA", "IMMA", "LDL", "STL")
_TRITON_DTYPES = {
    torch.float8_e4m3fn: "fp8e4nv", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
    torch.int8: "i8", torch.int32: "i32",
}


@dataclass(frozen=True)
class KernelReport:
    """One compiled kernel: its resources and instruction counts."""

    kernel: str
    shape: str
    arch: int
    registers: int
    stack_bytes: int
    shared_bytes: int
    num_warps: int
    num_stages: int
    opcodes: dict[str, int]
    loop: dict[str, int] = field(default_factory=dict)  # opcode mix of one pass of the hot loop (key_loop_mix)
    stack_pointer_packs: int = 0  # F2FP merging R1 (the stack pointer) into a packed word: a ptxas miscompile
    loaded_packs: int = 0  # F2FP merging a register last written by a load into a packed word (loaded_packs)
    named_barriers: dict[str, int] = field(default_factory=dict)  # waits and arrives per barrier: named_barrier_uses
    programs: int = 0  # the launch's grid size (0 where a cubin was read without its launch)

    @property
    def spills(self) -> int:
        return self.opcodes.get("LDL", 0) + self.opcodes.get("STL", 0)


# ptxas 12.8 turns `mov.b32 %r, {%rs, %rs}` of a constant-folded fp8 pair into an F2FP that merges the
# stack pointer R1 into the word (docs/perf-notes.md §10): garbage bytes in the output (the same bytes
# appeared on the H100 with the GPU image's ptxas).
_STACK_POINTER_PACK = re.compile(r"\bF2FP\.[\w.]*MERGE_C\b[^;]*,\s*R1\s*;")
_MERGE_FROM = re.compile(r"\bF2FP\.[\w.]*MERGE_C\b[^;]*,\s*(R\d+)[\w.]*\s*;")
_WRITE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([\w.]+)\s+(R\d+)\b")

_NAMED_BARRIER = re.compile(r"\bBAR\.(SYNC|ARV)[\w.]*\s+(0x[0-9a-f]+)(?:,\s*(0x[0-9a-f]+|R\d+))?\s*;")
_SASS_LINE = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")
_BACKWARD_BRANCH = re.compile(r"\s+/\*([0-9a-f]{4,})\*/.*\bBRA\s+0x([0-9a-f]+)")


def loaded_packs(sass: str) -> int:
    """F2FP ... MERGE_C instructions whose fourth operand (the other half of the packed word) was last
    written by a load: bytes of memory in an fp8 word that should hold zeros. ptxas made them of constant
    zero tiles of P when Triton specialized a sequence length of 1 (docs/perf-notes.md, section 37)."""
    last_write: dict[str, str] = {}
    found = 0
    for line in sass.splitlines():
        merge = _MERGE_FROM.search(line)
        if merge and last_write.get(merge.group(1), "").startswith("LD"):
            found += 1
        write = _WRITE.match(line)
        if write:
            last_write[write.group(2)] = write.group(1)
    return found


_WGMMA = ("QGMMA", "HGMMA", "IGMMA")


def key_loop_mix(sass: str) -> dict[str, int]:
    """Opcode counts (without modifiers) of one pass of the kernel's hot loop: the first innermost loop
    (a backward branch and its target) that issues a wgmma — for the attention kernels their unmasked
    key loop (in the warp-specialized kernel, the first consumer's) — or the first loop of a kernel
    without wgmma."""
    ops = [(int(m.group(1), 16), m.group(2)) for m in map(_SASS_LINE.match, sass.splitlines()) if m]
    loops = []
    for line in sass.splitlines():
        m = _BACKWARD_BRANCH.match(line)
        if m and int(m.group(2), 16) < int(m.group(1), 16):
            loops.append((int(m.group(2), 16), int(m.group(1), 16)))
    if not loops:
        return {}

    def issues_wgmma(lo: int, hi: int) -> bool:
        return any(lo <= addr <= hi and op in _WGMMA for addr, op in ops)

    hot = [(lo, hi) for lo, hi in loops if issues_wgmma(lo, hi)]
    innermost = [(lo, hi) for lo, hi in hot if not any(lo <= a and b <= hi and (a, b) != (lo, hi) for a, b in hot)]
    lo, hi = min(innermost) if innermost else min(loops, key=lambda loop: loop[1])
    return dict(Counter(op for addr, op in ops if lo <= addr <= hi).most_common())


def named_barrier_uses(sass: str) -> dict[str, int]:
    """How often each named barrier is waited on (``SYNC``) or arrived at (``ARV``), keyed
    ``"SYNC 0xf 0x100"``: operation, barrier id, thread count (``R`` when the count is in a register,
    ``all`` when the whole CTA takes part)."""
    return dict(Counter(f"{op} {bar} {'R' if (count or '').startswith('R') else count or 'all'}"
                        for op, bar, count in _NAMED_BARRIER.findall(sass)))


def _tool(name: str) -> str:
    import triton.backends.nvidia as nvidia

    bundled = Path(nvidia.__file__).parent / "bin" / name
    found = str(bundled) if bundled.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found in Triton's bundled tools or on PATH")
    return found


def _signature(launch) -> tuple[dict[str, str], dict[tuple[int], list], dict[str, int]]:
    """Triton signature, divisibility attributes and constants, as the runtime would specialize this
    launch (an integer argument equal to 1, such as a unit stride, becomes the constant 1, and one
    divisible by 16 is marked so, unless the kernel says ``do_not_specialize`` for it)."""
    options = {name: value for name, value in launch.options.items() if name in launch.kernel.arg_names}
    names = [n for n in launch.kernel.arg_names if n not in launch.constexprs and n not in options]
    runtime_only = {p.name for p in getattr(launch.kernel, "params", ()) if getattr(p, "do_not_specialize", False)}
    signature, attrs, ones = {}, {}, {**options}
    for i, (name, value) in enumerate(zip(names, launch.args, strict=True)):
        if isinstance(value, TensorDescriptor):
            block = ", ".join(map(str, value.block_shape))
            signature[name] = f"tensordesc<{_TRITON_DTYPES[value.base.dtype]}[{block}],{value.layout!r}>"
        elif isinstance(value, int) and not isinstance(value, bool) and value == 1 and name not in runtime_only:
            signature[name] = "constexpr"
            ones[name] = 1
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TRITON_DTYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0 and name not in runtime_only:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"argument {name}: cannot derive a Triton type from {type(value).__name__}")
    for name in [*launch.constexprs, *options]:
        signature[name] = "constexpr"
    return signature, attrs, ones


def compile_offline(launch, arch: int = 90):
    """Compile ``launch`` for ``sm_<arch>`` without a GPU. Needs kernels that are not interpreted."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.experimental.gluon._runtime import GluonASTSource

    if not hasattr(launch.kernel, "cache_key"):
        raise RuntimeError("kernels are in Triton's interpreter (TRITON_INTERPRET=1): compile in a process without it")
    signature, attrs, ones = _signature(launch)
    source_type = GluonASTSource if launch.kernel.is_gluon() else ASTSource
    source = source_type(launch.kernel, signature, constexprs={**launch.constexprs, **ones}, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=dict(launch.options))


def read_cubin(cubin: bytes, kernel: str, shape: str, arch: int, num_warps: int, num_stages: int,
               shared_bytes: int) -> KernelReport:
    """Registers and stack (``cuobjdump -res-usage``) and opcode counts (``cuobjdump -sass``) of one cubin;
    ``shared_bytes`` is Triton's dynamic shared memory (the cubin's own figure counts only static use)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True, check=True)
        sass = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True)
    resources = dict(re.findall(r"(REG|STACK):(\d+)", usage.stdout))
    counts = Counter(re.findall(r"\b(" + "|".join(_OPCODES) + r")\b", sass.stdout))
    return KernelReport(
        kernel=kernel, shape=shape, arch=arch, registers=int(resources.get("REG", 0)),
        stack_bytes=int(resources.get("STACK", 0)), shared_bytes=shared_bytes,
        num_warps=num_warps, num_stages=num_stages, opcodes={op: counts.get(op, 0) for op in _OPCODES},
        loop=key_loop_mix(sass.stdout), stack_pointer_packs=len(_STACK_POINTER_PACK.findall(sass.stdout)),
        loaded_packs=loaded_packs(sass.stdout),
        named_barriers=named_barrier_uses(sass.stdout),
    )


def report_launch(launch, shape: str, arch: int = 90, compiled=None) -> KernelReport:
    """Compile (unless ``compiled`` is given, e.g. a kernel the GPU runtime built) and read one launch."""
    compiled = compiled or compile_offline(launch, arch)
    report = read_cubin(compiled.asm["cubin"], launch.kernel.__name__, shape, arch, launch.options.get("num_warps", 4),
                        launch.options.get("num_stages", 3), compiled.metadata.shared)
    return replace(report, programs=math.prod(launch.grid))


def library_launches(batch: int, heads: int, kv_heads: int, seqlen_q: int, seqlen_k: int, head_dim: int, causal: bool,
                     recipe_name: str = "e4m3", dtype: torch.dtype = torch.bfloat16):
    """The launches one :func:`fp8attn.attention` call makes for this shape, on meta tensors (on a GPU of
    132 SMs, for the split-key decision)."""
    from fp8attn.kernels.attention_fwd import forward_launches, key_split_buffers
    from fp8attn.kernels.attention_fwd_hopper import hopper_forward_launch, hopper_kernel_shape
    from fp8attn.quantize import allocate_quantized, quantize_launches
    from fp8attn.recipe import RECIPES

    recipe = RECIPES[recipe_name]
    meta = torch.device("meta")
    q = torch.empty(batch, heads, seqlen_q, head_dim, device=meta, dtype=dtype)
    k = torch.empty(batch, kv_heads, seqlen_k, head_dim, device=meta, dtype=dtype)
    splits = key_split_buffers(batch, heads, kv_heads, seqlen_q, seqlen_k, head_dim, recipe, causal, meta)
    qkv = allocate_quantized(batch, heads, kv_heads, seqlen_q, seqlen_k, head_dim, recipe, meta, extra=splits)
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, seqlen_q, device=meta, dtype=torch.float32)
    kwargs = dict(causal=causal, softmax_scale=head_dim**-0.5, p_scale=recipe.p_multiplier)
    # On sm_90 these shapes run the warp-specialized Gluon kernel (it needs a GPU to decide, so it is named here),
    # as a call without return_lse runs it.
    if not splits and hopper_kernel_shape(qkv, causal):
        forward = [hopper_forward_launch(qkv, out, lse, **kwargs, exact_lse=False)]
    else:
        forward = forward_launches(qkv, out, lse, **kwargs, exact_lse=False)
    return [*quantize_launches(q, k, k, recipe, qkv), *forward]


def shapes_for(head_dims: tuple[int, ...]) -> list[tuple[int, int, int, int, int, int, bool]]:
    """Long keys (a statistics launch, then the quantize launch), causal and not, short keys (statistics
    inside the quantize launch, as at the mission shape B=1, H=8, S=512), and decoding (one query row a head
    against 4096 keys: the keys split into ranges, a merge launch), per head dim: ``(B, Hq, Hkv, Sq, Sk, D,
    causal)``."""
    return [(4, 16, 16, 4096, 4096, d, c) for d in head_dims for c in (False, True)] + [
        (1, 8, 8, 512, 512, d, False) for d in head_dims] + [(1, 32, 8, 1, 4096, d, False) for d in head_dims]


DEFAULT_SHAPES = shapes_for((64, 128, 256))


def collect(shapes=DEFAULT_SHAPES, arch: int = 90, only: str = "", recipe: str = "e4m3") -> list[KernelReport]:
    """Reports for every launch of every shape whose kernel name contains ``only``
    (run in a process where Triton is not interpreting)."""
    reports = []
    for b, h, hkv, sq, sk, d, causal in shapes:
        label = f"{recipe} B{b} H{h}/{hkv} S{sq if sq == sk else f'{sq}/{sk}'} D{d}{' causal' if causal else ''}"
        for launch in library_launches(b, h, hkv, sq, sk, d, causal, recipe):
            if only in launch.kernel.__name__:
                reports.append(report_launch(launch, label, arch))
    return reports


def collect_in_subprocess(arch: int = 90, only: str = "", recipe: str = "e4m3",
                          head_dims: tuple[int, ...] = ()) -> list[KernelReport]:
    """:func:`collect` in a fresh Python with the interpreter off, for callers running under TRITON_INTERPRET=1."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    cmd = [sys.executable, "-m", "fp8attn.kernel_report", "--json", "--arch", str(arch), "--only", only,
           "--recipe", recipe]
    if head_dims:
        cmd += ["--head-dims", ",".join(map(str, head_dims))]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return [KernelReport(**r) for r in json.loads(done.stdout)]


def format_table(reports: list[KernelReport]) -> str:
    head = (f"{'kernel':<28} {'shape':<26} {'programs':>8} {'warps':>5} {'stages':>6} {'regs':>5} {'stack':>6} "
            f"{'smem':>7} " + " ".join(f"{op:>6}" for op in _OPCODES))
    rows = [head, "-" * len(head)]
    for r in reports:
        rows.append(f"{r.kernel:<28} {r.shape:<26} {r.programs or '–':>8} {r.num_warps:>5} {r.num_stages:>6} "
                    f"{r.registers:>5} {r.stack_bytes:>6} {r.shared_bytes:>7} "
                    + " ".join(f"{r.opcodes[op]:>6}" for op in _OPCODES))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fp8attn inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="SM architecture to compile for (default 90, Hopper)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--only", default="", help="only kernels whose name contains this, e.g. 'attention'")
    parser.add_argument("--recipe", default="e4m3", help="the recipe whose kernels to compile (default e4m3)")
    parser.add_argument("--head-dims", default="64,128,256",
                        help="comma list of multiples of 8 up to 256 (default 64,128,256)")
    parser.add_argument("--loop", action="store_true",
                        help="also print each kernel's first loop, one pass, as opcode counts")
    parser.add_argument("--ncu", action="store_true",
                        help="on a GPU: run the shapes under Nsight Compute and print tensor-pipe utilisation "
                             "and achieved occupancy per launch (fp8attn.kernel_profile)")
    args = parser.parse_args(argv)
    from triton import knobs

    head_dims = tuple(int(d) for d in args.head_dims.split(","))
    if knobs.runtime.interpret:
        reports = collect_in_subprocess(args.arch, args.only, args.recipe, head_dims)
    else:
        reports = collect(shapes_for(head_dims), arch=args.arch, only=args.only, recipe=args.recipe)
    print(json.dumps([asdict(r) for r in reports]) if args.json else format_table(reports))
    if args.loop and not args.json:
        for r in reports:
            mix = ", ".join(f"{op} {n}" for op, n in r.loop.items())
            print(f"\n{r.kernel} {r.shape}: hot loop, one pass, {sum(r.loop.values())} instructions:\n  {mix}")
    if args.ncu:
        from fp8attn import kernel_profile

        if knobs.runtime.interpret or not torch.cuda.is_available():
            parser.error("--ncu profiles the kernels on a CUDA GPU; this process has none (or runs the interpreter)")
        shapes = shapes_for(head_dims)
        print("\nNsight Compute, launches in order of the shapes: " + "; ".join(
            f"B{b} H{h}/{hkv} S{sq}/{sk} D{d}{' causal' if c else ''}" for b, h, hkv, sq, sk, d, c in shapes))
        print(kernel_profile.format_profiles(kernel_profile.profile(shapes, args.recipe)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
