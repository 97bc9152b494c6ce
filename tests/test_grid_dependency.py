"""Programmatic dependent launch: where it is on, and that it changes no bit of any result.

With PDL a launch starts while the previous one drains, and its kernel waits for it before reading
what it wrote; a wait in the wrong place shows up as outputs that differ between runs with PDL on and
off (same kernels otherwise, so the results must be bit-identical), or as NaN from the poisoned buffers.
"""

from __future__ import annotations

import pytest
import torch

import fp8attn
from fp8attn.api import _PLANS
from fp8attn.fp8 import quantize_per_head
from fp8attn.kernels import grid_dependency
from fp8attn.kernels.attention_fwd import forward_launch
from fp8attn.kernels.grid_dependency import programmatic_launch
from fp8attn.quantize import allocate_quantized, quantize_launches
from fp8attn.recipe import DEFAULT_RECIPE
from tests.conftest import HAS_CUDA, INTERPRETED, make_qkv

needs_compiled_gpu = pytest.mark.skipif(not HAS_CUDA or INTERPRETED, reason="no CUDA GPU (compiled-kernel run)")


def test_programmatic_launch_is_off_on_the_cpu_and_when_the_environment_says_so(monkeypatch):
    assert not programmatic_launch(torch.device("cpu"))
    assert not programmatic_launch(torch.device("meta"))
    monkeypatch.setattr(grid_dependency, "_capability", lambda device: (9, 0))
    monkeypatch.setattr(grid_dependency.knobs.runtime, "interpret", False)
    cuda = torch.device("cuda", 0)
    assert programmatic_launch(cuda)
    monkeypatch.setenv("FP8ATTN_PROGRAMMATIC_LAUNCH", "0")
    assert not programmatic_launch(cuda)
    monkeypatch.delenv("FP8ATTN_PROGRAMMATIC_LAUNCH")
    monkeypatch.setattr(grid_dependency, "_capability", lambda device: (8, 9))  # Ada has no griddepcontrol
    assert not programmatic_launch(cuda)


@pytest.mark.parametrize("seqlen_k", [512, 1500])  # statistics inside the quantize launch / a launch of their own
def test_every_launch_that_follows_one_of_its_call_is_programmatic(monkeypatch, seqlen_k):
    """The call's first launch waits for the stream as usual (it reads the caller's inputs); the
    quantize launch after a statistics launch, and the attention launch, start early."""
    for module in ("fp8attn.quantize", "fp8attn.kernels.attention_fwd"):
        monkeypatch.setattr(f"{module}.programmatic_launch", lambda device: True)
    q = torch.empty(1, 2, 64, 64, device="meta", dtype=torch.float16)
    k = torch.empty(1, 2, seqlen_k, 64, device="meta", dtype=torch.float16)
    qkv = allocate_quantized(1, 2, 2, 64, seqlen_k, 64, DEFAULT_RECIPE, "meta")
    out, lse = torch.empty_like(q), torch.empty(1, 2, 64, device="meta")
    launches = [*quantize_launches(q, k, k, DEFAULT_RECIPE, qkv),
                forward_launch(qkv, out, lse, causal=False, softmax_scale=0.125, p_scale=DEFAULT_RECIPE.p_multiplier)]
    assert all(launch.constexprs["GRID_DEPENDENCY"] for launch in launches)
    assert [launch.options.get("launch_pdl", False) for launch in launches] == \
        ([False, True, True] if seqlen_k > 512 else [False, True])


def _calls(q, k, v, q8, k8, v8, scales):
    return {
        "attention": lambda: fp8attn.attention(q, k, v, causal=True, return_lse=True),
        "attention e4m3": lambda: fp8attn.attention(q, k, v, recipe="e4m3", return_lse=True),
        "prequantized": lambda: fp8attn.attention_prequantized(q8, k8, v8, *scales, causal=True, return_lse=True),
    }


def _inputs(gen, shape):
    q, k, v = make_qkv(gen, shape, device="cuda", kind="k_offset")
    (q8, qd), (k8, kd), (v8, vd) = (quantize_per_head(x) for x in (q, k, v))
    return q, k, v, q8, k8, v8, (qd, kd, vd)


@pytest.mark.gpu
@needs_compiled_gpu
@pytest.mark.parametrize("shape", [(1, 4, 2, 200, 700, 64), (2, 2, 2, 333, 333, 128)])  # statistics launch / inline
@pytest.mark.parametrize("call", ["attention", "attention e4m3", "prequantized"])
@pytest.mark.usefixtures("poisoned_allocations")
def test_results_are_bit_identical_with_and_without_programmatic_launch(monkeypatch, gen, shape, call):
    inputs = _inputs(gen, shape)
    results = {}
    for setting in ("0", "1"):
        monkeypatch.setenv("FP8ATTN_PROGRAMMATIC_LAUNCH", setting)
        _PLANS.clear()
        results[setting] = [_calls(*inputs)[call]() for _ in range(3)]  # record, then replays
    first_out, first_lse = results["0"][0]
    assert torch.isfinite(first_out).all() and not torch.isnan(first_lse).any()
    for out, lse in results["0"] + results["1"]:  # replays hand back the lse view of their own workspace
        assert torch.equal(out, first_out) and torch.equal(lse, first_lse)


@pytest.mark.gpu
@needs_compiled_gpu
@pytest.mark.parametrize("call", ["attention", "prequantized"])
def test_a_captured_cuda_graph_replays_the_eager_result(gen, call):
    inputs = _inputs(gen, (1, 4, 2, 200, 700, 64))
    fn = _calls(*inputs)[call]
    want_out, want_lse = fn()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture, as torch.cuda.graph asks
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = fn()
    for _ in range(3):
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
