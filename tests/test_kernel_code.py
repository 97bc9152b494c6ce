"""What the compiler makes of the kernels: FP8 wgmma (QGMMA) for both matmuls, no register spills.

The offline check compiles the library's own launches for sm_90 with Triton's bundled ptxas and reads
the SASS with its bundled cuobjdump, so it runs without a GPU (in CI). On a GPU, the check reads the
cubins the runtime actually built and launched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import fp8attn
from fp8attn.kernel_report import KernelReport, collect, collect_in_subprocess, read_cubin, shapes_for
from fp8attn.kernels.attention_fwd import _fp8_attention_fwd_kernel, forward_config
from fp8attn.kernels.sizes import sm_count
from fp8attn.recipe import RECIPES
from tests.conftest import HAS_CUDA, INTERPRETED, make_qkv
from tests.test_hopper_kernel import assert_hopper_kernel_spills_as_measured


def _assert_no_spills(report) -> None:
    if report.kernel == "_fp8_attention_fwd_ws_kernel":
        assert_hopper_kernel_spills_as_measured(report)
    else:
        assert report.spills == 0 and report.stack_bytes == 0, f"register spills in {report}"


def _assert_fp8_tensor_core_kernel(report) -> None:
    assert report.opcodes["QGMMA"] > 0, f"no FP8 wgmma in {report}"
    assert report.opcodes["HGMMA"] == report.opcodes["HMMA"] == 0, f"a 16-bit matmul path in {report}"
    _assert_no_spills(report)


def _offline(recipe: str, only: str = "attention", head_dims: tuple[int, ...] = (64, 128, 256)) -> list:
    if INTERPRETED:
        return collect_in_subprocess(arch=90, only=only, recipe=recipe, head_dims=head_dims)
    return collect(shapes_for(head_dims), arch=90, only=only, recipe=recipe)


def test_attention_kernel_compiled_offline_for_sm90_uses_fp8_wgmma_without_spills():
    reports = _offline("e4m3")
    assert len(reports) == 12  # D 64/128/256: long keys causal and not, short keys, decoding (split keys)
    for report in reports:
        _assert_fp8_tensor_core_kernel(report)


_SPLIT_AND_WHOLE_KERNELS = """
import json, sys
from dataclasses import asdict
import torch
from fp8attn.kernel_report import report_launch
from fp8attn.kernels.attention_fwd import forward_launch, split_forward_launches
from fp8attn.quantize import allocate_quantized
from fp8attn.recipe import RECIPES

recipe, head_dim = RECIPES[sys.argv[1]], int(sys.argv[2])
qkv = allocate_quantized(1, 32, 8, 1, 4096, head_dim, recipe, "meta")
out = torch.empty(1, 32, 1, head_dim, device="meta", dtype=torch.bfloat16)
lse = torch.empty(1, 32, 1, device="meta")
partial_lse = torch.empty(4, 32, 1, device="meta")
partial_out = torch.empty(4, 32, 1, qkv.q.shape[-1], device="meta")
kwargs = dict(causal=False, softmax_scale=head_dim**-0.5, p_scale=recipe.p_multiplier)
launches = [forward_launch(qkv, out, lse, **kwargs), *split_forward_launches(qkv, out, lse, partial_out, partial_lse,
                                                                             **kwargs)]
print(json.dumps([asdict(report_launch(launch, "B1 H32/8 S1/4096")) for launch in launches]))
"""


@pytest.mark.parametrize("recipe", ["e4m3", "int8-hadamard-vsmooth"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_split_key_kernel_keeps_the_pipeline_of_the_whole_key_kernel(recipe, head_dim):
    """A key range starts at a runtime multiple of the tile. Without a divisibility hint for it, Vᵀ's tiles
    (contiguous along keys) lost their 16-byte loads and their place in the pipeline: 74.8 instead of 107.5 KB
    of shared memory and 746 instead of 515 instructions a pass at D=128, 2.6x slower per tile on the H200."""
    done = subprocess.run([sys.executable, "-c", _SPLIT_AND_WHOLE_KERNELS, recipe, str(head_dim)], capture_output=True,
                          text=True, check=True, env={**os.environ, "TRITON_INTERPRET": "0"})
    whole, split, merge = (KernelReport(**r) for r in json.loads(done.stdout))
    assert split.shared_bytes == whole.shared_bytes, (split, whole)
    assert sum(split.loop.values()) <= sum(whole.loop.values()) + 8, (split.loop, whole.loop)
    _assert_no_spills(split)
    _assert_no_spills(merge)


@pytest.mark.parametrize(("recipe", "qk_op", "pv_op"), [("int8-hadamard-vsmooth", "IGMMA", "QGMMA"),
                                                         ("int8-fp16pv", "IGMMA", "HGMMA")])
def test_recipes_compile_to_their_tensor_core_instructions(recipe, qk_op, pv_op):
    """INT8 Q·Kᵀ must be int8 wgmma (IGMMA), fp16 P·V fp16 wgmma (HGMMA): no fallback to mma.sync."""
    for report in _offline(recipe):
        assert report.opcodes[qk_op] > 0 and report.opcodes[pv_op] > 0, report
        assert report.opcodes["HMMA"] == report.opcodes["IMMA"] == 0, report
        _assert_no_spills(report)


@pytest.mark.parametrize("recipe", ["e4m3", "int8-hadamard-vsmooth"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_key_loop_spends_one_exp2_and_one_fma_per_score(recipe, head_dim):
    """The unmasked key loop, read from the SASS: one MUFU (exp2) per score plus the row rescales, the
    scale folded into one FFMA per score (almost no FMUL left), the matmuls inside the loop, and shuffles
    only for the row max and sum (two rows a thread, two lane steps each): P reaches the P·V wgmma
    without the 16 SHFL per tile its conversion took in natural key order (fp8attn.kernels.key_order).
    An unpromoted accumulator (``promote_every=0``: the short keys' tiles at D=128 here) is rescaled by FMUL
    before its wgmma, one per element a thread holds."""
    spec = RECIPES[recipe]
    cfg = forward_config(head_dim, spec.k_block, qk_int8=spec.qk_format == "int8", seqlen_k=512, seqlen_q=512,
                         v_smoothed=spec.smooth_v)
    scores = cfg.block_m * cfg.block_n // (32 * cfg.num_warps)  # per thread, per key tile
    rescales = cfg.block_m * head_dim // (32 * cfg.num_warps) if cfg.promote_every == 0 else 0
    (report,) = [r for r in _offline(recipe, head_dims=(head_dim,)) if "S512" in r.shape]  # the Triton kernel
    loop = report.loop
    assert scores <= loop.get("MUFU", 0) <= scores + 4, loop
    assert loop.get("FFMA", 0) >= scores and loop.get("FMUL", 0) <= 8 + rescales, loop
    assert loop.get("QGMMA", 0) > 0, loop
    assert loop.get("SHFL", 0) <= 8, loop
    if recipe.startswith("int8"):
        assert loop.get("IGMMA", 0) > 0 and loop.get("I2FP", 0) == scores, loop  # int32 scores to fp32


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_quantize_kernel_compiles_without_spills_and_fits_two_8_warp_programs_per_sm(recipe, head_dim):
    """No spills; and an 8-warp quantize program (padded D <= 128) of a launch with more programs than an
    H100 has SMs takes at most 128 registers a thread, so two run on an SM (at 136, e4m3-hadamard's D=128
    launch ran one a SM and took 1.46x the default's time). Launches of at most one program a SM (the
    mission shape's) may take more."""
    reports = _offline(recipe, only="quantize", head_dims=(head_dim,))
    assert reports
    sms = sm_count(torch.device("meta"))
    for report in reports:
        assert report.spills == 0 and report.stack_bytes == 0, f"register spills in {report}"
        if report.kernel == "_quantize_qkv_kernel" and report.num_warps == 8 and report.programs > sms:
            assert report.registers <= 128, f"one 8-warp program per SM: {report}"


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_quantize_kernel_packs_no_stack_pointer_into_fp8_words(recipe):
    """D=80 and 96 pad whole register tiles of channels. A constant head dim let LLVM fold them to zero,
    and ptxas packed those zeros as F2FP ... MERGE_C with R1: garbage in V's padding on the H100."""
    for report in _offline(recipe, only="quantize", head_dims=(80, 96)):
        assert report.stack_pointer_packs == 0, report


_PTX_AT_LENGTHS_ONE_AND_TWO = """
import sys
import torch
from fp8attn.kernel_report import compile_offline
from fp8attn.kernels.attention_fwd import forward_launch
from fp8attn.quantize import allocate_quantized
from fp8attn.recipe import RECIPES

recipe = RECIPES["e4m3"]  # one Q and one K scale block either way
for seqlen in (1, 2):
    qkv = allocate_quantized(1, 2, 2, seqlen, seqlen, 64, recipe, "meta")
    out = torch.empty(1, 2, seqlen, 64, device="meta", dtype=torch.bfloat16)
    lse = torch.empty(1, 2, seqlen, device="meta")
    launch = forward_launch(qkv, out, lse, causal=True, softmax_scale=0.125, p_scale=recipe.p_multiplier)
    sys.stdout.write(compile_offline(launch).asm["ptx"].split("\\n", 1)[1] + "\\0")
"""


def test_a_sequence_length_of_one_compiles_to_the_same_kernel_as_any_other():
    """Triton compiles an integer argument equal to 1 as a constant unless told not to: with one key the
    masks folded, P became constant zeros, and ptxas packed garbage bytes into it (perf-notes section 37).
    The attention kernel's lengths stay runtime values: its code for Sq = Sk = 1 is that for 2."""
    done = subprocess.run([sys.executable, "-c", _PTX_AT_LENGTHS_ONE_AND_TWO], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "0"}, check=True)
    one, two, _ = done.stdout.split("\0")
    assert one == two


_LENGTH_ONE_PACKS = """
import json
from fp8attn.kernel_report import collect
from fp8attn.recipe import RECIPES

shapes = [(1, 2, 2, 1, 1, d, True) for d in (64, 256)]
print(json.dumps([(r.kernel, r.shape, r.loaded_packs, r.stack_pointer_packs)
                  for name in RECIPES for r in collect(shapes, recipe=name)]))
"""


def test_kernels_at_sequence_length_one_pack_no_loaded_bytes_into_fp8_words():
    """Every launch of a one-token call (Sq = Sk = 1), every recipe: no fp8 word takes its other half from
    a register a load wrote (the attention kernel's P did, with its lengths specialized to 1: perf-notes
    section 37) or from the stack pointer (section 10)."""
    done = subprocess.run([sys.executable, "-c", _LENGTH_ONE_PACKS], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "0"}, check=True)
    reports = json.loads(done.stdout)
    assert {kernel for kernel, *_ in reports} >= {"_fp8_attention_fwd_kernel", "_quantize_qkv_kernel"}
    assert [r for r in reports if r[2] or r[3]] == []


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRETED, reason="no CUDA GPU (reads the cubins the runtime built)")
def test_kernels_the_gpu_ran_use_8bit_wgmma_without_spills(gen):
    """Every attention kernel the runtime built in this process (the default recipe's below, and any
    other recipe's an earlier test ran) uses 8-bit wgmma for Q·Kᵀ (QGMMA or IGMMA), no mma.sync
    fallback, no spills; the default recipe's kernels use FP8 wgmma (QGMMA) for P·V."""
    for d in (64, 128, 256):
        q, k, v = make_qkv(gen, (1, 2, 2, 300, 300, d), device="cuda")
        fp8attn.attention(q, k, v, causal=d == 128)
    torch.cuda.synchronize()
    compiled = list(_fp8_attention_fwd_kernel.device_caches[torch.cuda.current_device()][0].values())
    assert len(compiled) >= 3
    with_fp8_pv = 0
    for kernel in compiled:
        report = read_cubin(kernel.asm["cubin"], "_fp8_attention_fwd_kernel", "as launched", 90,
                            kernel.metadata.num_warps, kernel.metadata.num_stages, kernel.metadata.shared)
        print(report)
        assert kernel.n_spills == 0 and report.spills == 0 and report.stack_bytes == 0, report
        assert report.opcodes["QGMMA"] + report.opcodes["IGMMA"] > 0, f"no 8-bit wgmma in {report}"
        assert report.opcodes["HMMA"] == report.opcodes["IMMA"] == 0, f"an mma.sync fallback in {report}"
        with_fp8_pv += report.opcodes["QGMMA"] > 0
    assert with_fp8_pv >= 3


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRETED, reason="needs a CUDA machine without the interpreter")
def test_cpu_tensors_without_the_interpreter_raise_a_clear_error():
    q = torch.randn(1, 1, 4, 64).half()
    with pytest.raises(ValueError, match="q is on the CPU, which fp8attn runs only through Triton's interpreter"):
        fp8attn.attention(q, q, q)
