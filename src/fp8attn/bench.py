"""Throughput and latency benchmark of fp8attn against its peers: the engine of ``fp8attn bench``.

Run ``python -m fp8attn.bench --help``. What it measures:

* **Providers** (one zero-argument callable each, built per shape; an unavailable one is skipped
  with a printed reason): ``fp8attn`` (fp16/bf16 in, quantization included), ``fp8attn-prequant``
  (E4M3 in, quantized once outside the timed region with per-(B, H) descales), PyTorch SDPA pinned
  to one backend (``sdpa-flash``, ``sdpa-cudnn``, ``sdpa-efficient``) or left to choose
  (``sdpa-default``), cuDNN's FP8 SDPA graph through nvidia-cudnn-frontend (``cudnn-fp8``:
  pre-quantized per-tensor E4M3 in, E4M3 out, as Hopper requires) and SageAttention 1
  (``sage1``: INT8 Q·Kᵀ, fp16 P·V).
* **Shapes**: the FlashAttention-3 paper's sweep (16k tokens per batch, hidden 2048, so
  ``B = 16384 // S`` and ``H = 2048 // D``), the mission shape (B=1, H=8, S=512, D=64, fp16) and
  shapes given with ``--shape B,Hq,Hkv,Sq,Sk,D``.
* **Timing methods**:

  - ``do_bench``: ``triton.testing.do_bench(..., return_mode="median")``. It flushes the L2 cache
    before every timed call (it zeroes a 256 MB buffer between runs), so each call reads its
    inputs from HBM; the time is the median of per-call CUDA-event times.
  - ``cuda_graph``: N calls captured in one ``torch.cuda.CUDAGraph`` after a warm-up; the graph is
    replayed several times and the device time per call is the median replay time / N (CUDA events).
    No L2 flush: back-to-back calls, as in a model's forward pass; host launch overhead excluded.
  - ``eager``: a host loop of N calls with one synchronize at the end; wall-clock time per call
    (``time.perf_counter``), median of several repeats. No L2 flush; host overhead included.

  Sweep and ``--shape`` shapes use ``do_bench``; the mission shape, which is latency-bound, uses all three.
* **FLOPs**: ``4·B·Hq·D`` times the number of (query, key) pairs a query sees; for causal attention
  that is the exact count under fp8attn's bottom-right alignment. TFLOP/s = FLOPs / median time.

Every provider runs once before timing: its output must be finite, and its relative L2 error
against ``sdpa-default``'s output is printed and recorded (a warning row above 0.1). Results go to
``<out>/<name>.json`` (rewritten after every shape) and ``<out>/<name>.png``; ``--plot-only JSON``
redraws the table and the plot from a saved JSON without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import glob
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fp8attn.fp8 import E4M3, E4M3_MAX, scale_from_amax, to_e4m3

PROVIDERS = (
    "fp8attn", "fp8attn-prequant", "cudnn-fp8",
    "sdpa-cudnn", "sdpa-flash", "sdpa-efficient", "sdpa-default", "sage1",
)
METHODS = ("do_bench", "cuda_graph", "eager")
SWEEP_HEAD_DIMS = (64, 128, 256)
SWEEP_SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
QUICK_HEAD_DIMS = (64, 128)
QUICK_SEQLENS = (1024, 8192)
SWEEP_TOKENS = 16384
SWEEP_HIDDEN = 2048
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
REL_L2_WARN = 0.1
RATIOS = (("fp8attn-prequant", "cudnn-fp8", "prequant/cuDNN-FP8"), ("fp8attn", "sdpa-cudnn", "fp8attn/SDPA-cuDNN"))


# --------------------------------------------------------------------------------------------------
# Shapes and records.


@dataclass(frozen=True)
class Shape:
    """One attention problem: ``q (B, Hq, Sq, D)``, ``k, v (B, Hkv, Sk, D)``."""

    B: int
    Hq: int
    Hkv: int
    Sq: int
    Sk: int
    D: int
    causal: bool
    dtype: str  # a key of DTYPES
    suite: str = "custom"  # "sweep", "mission" or "custom"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def flops(self) -> int:
        return attention_flops(self.B, self.Hq, self.Sq, self.Sk, self.D, self.causal)

    def label(self) -> str:
        heads = f"H{self.Hq}" if self.Hq == self.Hkv else f"H{self.Hq}/{self.Hkv}"
        seqs = f"S{_short(self.Sq)}" if self.Sq == self.Sk else f"S{_short(self.Sq)}/{_short(self.Sk)}"
        return f"B{self.B} {heads} {seqs} D{self.D} {'C' if self.causal else 'N'} {self.dtype}"


@dataclass
class Record:
    """One timing: a provider on a shape by a method. The JSON file holds a list of these."""

    provider: str
    method: str
    B: int
    Hq: int
    Hkv: int
    Sq: int
    Sk: int
    D: int
    causal: bool
    dtype: str
    median_ms: float
    tflops: float
    suite: str = "custom"
    rel_l2: float | None = None  # vs sdpa-default's output; None when no reference could be computed
    finite: bool = True

    @property
    def shape(self) -> Shape:
        return Shape(self.B, self.Hq, self.Hkv, self.Sq, self.Sk, self.D, self.causal, self.dtype, self.suite)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def attention_flops(batch: int, heads: int, seqlen_q: int, seqlen_k: int, head_dim: int, causal: bool) -> int:
    """``4·B·H·D`` per visible (query, key) pair; causal counts pairs under bottom-right alignment exactly."""
    if causal:
        pairs = sum(min(seqlen_k, max(0, i + seqlen_k - seqlen_q + 1)) for i in range(seqlen_q))
    else:
        pairs = seqlen_q * seqlen_k
    return 4 * batch * heads * head_dim * pairs


def _short(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def sweep_shapes(head_dims: Sequence[int], seqlens: Sequence[int], causals: Sequence[bool], dtype: str) -> list[Shape]:
    """The FA3 paper's sweep: 16k tokens per batch (``B = 16384 // S``), hidden 2048 (``H = 2048 // D``)."""
    return [
        Shape(max(1, SWEEP_TOKENS // s), SWEEP_HIDDEN // d, SWEEP_HIDDEN // d, s, s, d, c, dtype, "sweep")
        for d in head_dims for c in causals for s in seqlens
    ]


def mission_shape() -> Shape:
    """The latency-bound shape fp8attn is tuned for: B=1, H=8, S=512, D=64, fp16, non-causal."""
    return Shape(1, 8, 8, 512, 512, 64, False, "fp16", "mission")


def parse_shape(text: str) -> tuple[int, int, int, int, int, int]:
    """``"B,Hq,Hkv,Sq,Sk,D"`` → six positive ints (argparse type)."""
    parts = text.replace(" ", "").split(",")
    if len(parts) != 6 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"--shape wants six positive integers B,Hq,Hkv,Sq,Sk,D, got {text!r}")
    b, hq, hkv, sq, sk, d = (int(p) for p in parts)
    if hq % hkv:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: Hq ({hq}) must be a multiple of Hkv ({hkv})")
    return b, hq, hkv, sq, sk, d


def _int_list(text: str) -> list[int]:
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [p.strip() for p in text.split(",") if p.strip()]
        unknown = [v for v in values if v not in choices]
        if unknown or not values:
            bad = ", ".join(unknown) or repr(text)
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
        return values
    return parse


# --------------------------------------------------------------------------------------------------
# Providers.


class Skip(Exception):
    """A provider cannot run this shape (a documented limitation, not a failure)."""


@dataclass
class Inputs:
    """Fresh random inputs of one shape on the GPU."""

    shape: Shape
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.shape.D)


@dataclass
class Runner:
    """A built provider: ``fn`` is what gets timed; ``output`` turns its result into a float tensor
    comparable with the reference; ``context`` wraps both the check and the timing."""

    fn: Callable[[], Any]
    output: Callable[[Any], torch.Tensor] = lambda out: out.float()
    context: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
    keep: list[Any] = field(default_factory=list)  # objects that must outlive fn (buffers, graphs)


def make_inputs(shape: Shape, seed: int = 0) -> Inputs:
    """``torch.randn`` inputs (never zeros) in the shape's dtype on the current CUDA device."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    def randn(h: int, s: int) -> torch.Tensor:
        return torch.randn((shape.B, h, s, shape.D), generator=gen, device="cuda", dtype=shape.torch_dtype)
    return Inputs(shape, randn(shape.Hq, shape.Sq), randn(shape.Hkv, shape.Sk), randn(shape.Hkv, shape.Sk))


def reference_output(x: Inputs) -> torch.Tensor:
    """``sdpa-default``'s output in float32; for causal Sq ≠ Sk with an explicit bottom-right mask
    (rows that see no key are zero, as in fp8attn)."""
    s = x.shape
    kwargs: dict[str, Any] = {"scale": x.scale}
    if s.Hq != s.Hkv:
        kwargs["enable_gqa"] = True
    if s.causal and s.Sq != s.Sk:
        i = torch.arange(s.Sq, device=x.q.device)[:, None]
        j = torch.arange(s.Sk, device=x.q.device)[None, :]
        out = F.scaled_dot_product_attention(x.q, x.k, x.v, attn_mask=j <= i + (s.Sk - s.Sq), **kwargs)
        return torch.nan_to_num(out.float(), nan=0.0)
    return F.scaled_dot_product_attention(x.q, x.k, x.v, is_causal=s.causal, **kwargs).float()


def _quantize_per_head(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 copy of ``t (B, H, S, D)`` and its float32 ``(B, H)`` descales (amax / 448, 1.0 where amax is 0)."""
    descale = scale_from_amax(t.abs().amax(dim=(2, 3)))
    return to_e4m3(t.float() / descale[:, :, None, None]), descale


def _quantize_per_tensor(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 copy of ``t`` and its float32 ``(1, 1, 1, 1)`` descale (amax / 448, 1.0 where amax is 0)."""
    descale = scale_from_amax(t.abs().amax()).reshape(1, 1, 1, 1)
    return to_e4m3(t.float() / descale), descale


def build_fp8attn(x: Inputs) -> Runner:
    """fp8attn on fp16/bf16 inputs: quantization and attention both timed."""
    import fp8attn

    causal = x.shape.causal
    return Runner(lambda: fp8attn.attention(x.q, x.k, x.v, causal=causal))


def build_fp8attn_prequant(x: Inputs) -> Runner:
    """fp8attn on E4M3 inputs quantized once here, outside the timed region, with per-(B, H) descales."""
    import fp8attn

    (q8, qd), (k8, kd), (v8, vd) = (_quantize_per_head(t) for t in (x.q, x.k, x.v))
    causal, out_dtype = x.shape.causal, x.q.dtype
    return Runner(lambda: fp8attn.attention_prequantized(q8, k8, v8, qd, kd, vd, causal=causal, out_dtype=out_dtype,
                                                         validate_descales=False))


@contextlib.contextmanager
def _sdpa_context(backend_name: str | None) -> Iterator[None]:
    """Pin SDPA to one backend (none: PyTorch chooses) and silence its per-backend "not used because"
    warnings: a backend that cannot run raises "No available kernel", which is reported instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if backend_name is None:
            yield
            return
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(getattr(SDPBackend, backend_name)):
            yield


def _sdpa_builder(backend_name: str | None) -> Callable[[Inputs], Runner]:
    """SDPA pinned to ``SDPBackend.<backend_name>`` (the whole check and timing run inside
    ``sdpa_kernel``), or PyTorch's own choice when None."""

    def build(x: Inputs) -> Runner:
        s = x.shape
        if s.causal and s.Sq != s.Sk:
            raise Skip("SDPA's causal mask is top-left aligned, fp8attn's bottom-right: compared only when Sq == Sk")
        kwargs: dict[str, Any] = {"is_causal": s.causal, "scale": x.scale}
        if s.Hq != s.Hkv:
            kwargs["enable_gqa"] = True
        return Runner(lambda: F.scaled_dot_product_attention(x.q, x.k, x.v, **kwargs),
                      context=lambda: _sdpa_context(backend_name))

    return build


def build_sage1(x: Inputs) -> Runner:
    """SageAttention 1 (``sageattn``, HND layout).

    ``sageattn`` subtracts K's mean from its K argument in place, so it gets a private copy of K made
    once here; repeated calls subtract an already-zero mean again (a few cheap kernels, no change).
    """
    from sageattention import sageattn

    s = x.shape
    if s.D not in (64, 96, 128):
        raise Skip(f"SageAttention 1 supports head dims 64, 96 and 128, not {s.D}")
    if s.causal and s.Sq != s.Sk:
        raise Skip("SageAttention 1's causal mask assumes Sq == Sk")
    if not s.causal and s.Sk % 64:
        raise Skip(f"SageAttention 1.0.6 does not mask keys past Sk when Sk % 64 != 0 (Sk = {s.Sk})")
    k_own = x.k.clone()
    return Runner(lambda: sageattn(x.q, k_own, x.v, tensor_layout="HND", is_causal=s.causal), keep=[k_own])


# cuDNN frontend ----------------------------------------------------------------------------------

_CUDNN_HANDLE: list[int] = []


def _preload_cudnn_libraries() -> None:
    """Load the ``nvidia.cudnn`` wheel's libraries by full path (RTLD_GLOBAL) when their folder is
    not on ``LD_LIBRARY_PATH``, so that cuDNN's own ``dlopen`` of its sub-libraries by soname finds
    them; setting ``LD_LIBRARY_PATH`` before starting Python does the same."""
    spec = importlib.util.find_spec("nvidia.cudnn") if importlib.util.find_spec("nvidia") else None
    if spec is None or not spec.submodule_search_locations:
        return
    lib_dir = os.path.join(next(iter(spec.submodule_search_locations)), "lib")
    if not os.path.isdir(lib_dir) or lib_dir in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        return
    first = ("libcudnn_graph.so.9", "libcudnn.so.9")
    paths = [os.path.join(lib_dir, n) for n in first] + sorted(glob.glob(os.path.join(lib_dir, "libcudnn*.so.9")))
    for path in dict.fromkeys(paths):
        with contextlib.suppress(OSError):
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def _import_cudnn() -> Any:
    """``import cudnn`` (nvidia-cudnn-frontend), after making the cuDNN libraries findable."""
    torch.backends.cudnn.version()  # let PyTorch load its cuDNN first
    _preload_cudnn_libraries()
    import cudnn

    return cudnn


def build_cudnn_fp8(x: Inputs) -> Runner:
    """cuDNN's FP8 SDPA graph (nvidia-cudnn-frontend ``pygraph.sdpa_fp8``), E4M3 in and out.

    Q, K and V are quantized here with per-tensor descales (cuDNN takes ``(1, 1, 1, 1)`` scales); P is
    scaled by 448 (``scale_s``, ``descale_s = 1/448``); ``scale_o`` is calibrated from the graph's
    ``amax_o`` output on a first run. The graph is built once per shape; each timed call is one
    ``graph.execute`` on PyTorch's current stream.
    """
    cudnn = _import_cudnn()
    s = x.shape
    (q8, qd), (k8, kd), (v8, vd) = (_quantize_per_tensor(t) for t in (x.q, x.k, x.v))
    dev = x.q.device
    scalar = lambda value: torch.full((1, 1, 1, 1), value, dtype=torch.float32, device=dev)  # noqa: E731
    descale_s, scale_s, scale_o = scalar(1.0 / E4M3_MAX), scalar(E4M3_MAX), scalar(1.0)
    o8 = torch.empty((s.B, s.Hq, s.Sq, s.D), dtype=E4M3, device=dev)
    amax_s, amax_o = scalar(0.0), scalar(0.0)

    if not _CUDNN_HANDLE:
        _CUDNN_HANDLE.append(cudnn.create_handle())
    handle = _CUDNN_HANDLE[0]
    graph = cudnn.pygraph(
        io_data_type=cudnn.data_type.FP8_E4M3, intermediate_data_type=cudnn.data_type.FLOAT,
        compute_data_type=cudnn.data_type.FLOAT, handle=handle,
    )

    def tensor(name: str, t: torch.Tensor, dtype: Any) -> Any:
        return graph.tensor(name=name, dim=list(t.shape), stride=list(t.stride()), data_type=dtype)

    fp8, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    g_in = {name: tensor(name, t, fp8) for name, t in (("q", q8), ("k", k8), ("v", v8))}
    g_sc = {name: tensor(name, t, f32) for name, t in (
        ("descale_q", qd), ("descale_k", kd), ("descale_v", vd),
        ("descale_s", descale_s), ("scale_s", scale_s), ("scale_o", scale_o))}
    args = dict(**g_in, **g_sc, is_inference=True, attn_scale=x.scale)
    if s.causal:
        top_left = s.Sq == s.Sk  # cuDNN's bottom-right alignment is fp8attn's; top-left is the same when Sq == Sk
        align = cudnn.diagonal_alignment.TOP_LEFT if top_left else cudnn.diagonal_alignment.BOTTOM_RIGHT
        try:
            o, _stats, g_amax_s, g_amax_o = graph.sdpa_fp8(**args, diagonal_alignment=align, right_bound=0)
        except TypeError:  # frontends before diagonal_alignment / right_bound
            key = "use_causal_mask" if top_left else "use_causal_mask_bottom_right"
            o, _stats, g_amax_s, g_amax_o = graph.sdpa_fp8(**args, **{key: True})
    else:
        o, _stats, g_amax_s, g_amax_o = graph.sdpa_fp8(**args)
    o.set_output(True).set_dim(list(o8.shape)).set_stride(list(o8.stride())).set_data_type(fp8)  # Hopper: FP8 out
    for t in (g_amax_s, g_amax_o):
        t.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(f32)

    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    workspace = torch.empty(graph.get_workspace_size(), dtype=torch.uint8, device=dev)
    pack = {g_in["q"]: q8, g_in["k"]: k8, g_in["v"]: v8, o: o8, g_amax_s: amax_s, g_amax_o: amax_o,
            g_sc["descale_q"]: qd, g_sc["descale_k"]: kd, g_sc["descale_v"]: vd,
            g_sc["descale_s"]: descale_s, g_sc["scale_s"]: scale_s, g_sc["scale_o"]: scale_o}
    bound_stream = [None]

    def run() -> torch.Tensor:
        stream = torch.cuda.current_stream().cuda_stream  # follow PyTorch's stream (CUDA-graph capture uses a side one)
        if stream != bound_stream[0]:
            cudnn.set_stream(handle=handle, stream=stream)
            bound_stream[0] = stream
        graph.execute(pack, workspace, handle=handle)
        return o8

    run()  # calibrate scale_o: with scale_o = 1, amax_o is |O|'s maximum either way
    amax = float(amax_o.item())
    if math.isfinite(amax) and amax > 0:
        scale_o.fill_(E4M3_MAX / amax)
    return Runner(run, output=lambda out: out.float() / scale_o, keep=[graph, workspace, pack])


BUILDERS: dict[str, Callable[[Inputs], Runner]] = {
    "fp8attn": build_fp8attn,
    "fp8attn-prequant": build_fp8attn_prequant,
    "cudnn-fp8": build_cudnn_fp8,
    "sdpa-cudnn": _sdpa_builder("CUDNN_ATTENTION"),
    "sdpa-flash": _sdpa_builder("FLASH_ATTENTION"),
    "sdpa-efficient": _sdpa_builder("EFFICIENT_ATTENTION"),
    "sdpa-default": _sdpa_builder(None),
    "sage1": build_sage1,
}


def unavailable_reason(provider: str) -> str | None:
    """Why a provider cannot run at all on this machine, or None."""
    try:
        if provider.startswith("sdpa-") and provider != "sdpa-default":
            from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: F401

            backend = {"sdpa-cudnn": "CUDNN_ATTENTION", "sdpa-flash": "FLASH_ATTENTION",
                       "sdpa-efficient": "EFFICIENT_ATTENTION"}[provider]
            if not hasattr(SDPBackend, backend):
                return f"this PyTorch has no SDPBackend.{backend}"
        elif provider == "cudnn-fp8":
            _import_cudnn()
        elif provider == "sage1":
            import sageattention  # noqa: F401
    except Exception as e:
        hint = " (pip install nvidia-cudnn-frontend; LD_LIBRARY_PATH may need nvidia/cudnn/lib)" \
            if provider == "cudnn-fp8" else " (pip install sageattention==1.0.6)" if provider == "sage1" else ""
        return f"{_reason(e)}{hint}"
    return None


# --------------------------------------------------------------------------------------------------
# Timing methods. Each returns the median time of one call in milliseconds.


@dataclass(frozen=True)
class TimingConfig:
    rep_ms: int = 100  # do_bench's repetition budget
    calls: int = 20  # calls per CUDA graph / per eager loop
    repeats: int = 10  # graph replays / eager loops whose median is taken


def time_do_bench(fn: Callable[[], Any], cfg: TimingConfig) -> float:
    """Triton's do_bench median; it clears L2 (zeroes a 256 MB buffer) before every timed call."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=cfg.rep_ms, return_mode="median"))


def time_cuda_graph(fn: Callable[[], Any], cfg: TimingConfig) -> float:
    """Device time per call: ``cfg.calls`` calls captured in one CUDA graph, median replay time / calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream, as PyTorch's CUDA-graph notes ask
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(cfg.calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(cfg.repeats):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / cfg.calls)
    del graph
    return statistics.median(times)


def time_eager(fn: Callable[[], Any], cfg: TimingConfig) -> float:
    """Wall-clock time per call of a host loop of ``cfg.calls`` calls synchronized once at the end."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(cfg.repeats):
        t0 = time.perf_counter()
        for _ in range(cfg.calls):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3 / cfg.calls)
    return statistics.median(times)


TIMERS: dict[str, Callable[[Callable[[], Any], TimingConfig], float]] = {
    "do_bench": time_do_bench, "cuda_graph": time_cuda_graph, "eager": time_eager,
}


# --------------------------------------------------------------------------------------------------
# Progress and logging: rich if importable, else tqdm, else plain prints.


class Reporter:
    """Plain progress: one line per step."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def step(self, description: str) -> None:
        self.done += 1
        print(f"[{self.done}/{self.total}] {description}", flush=True)

    def log(self, message: str) -> None:
        print(message, flush=True)


class RichReporter(Reporter):
    def __enter__(self) -> Reporter:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn())
        self.progress.__enter__()
        self.task = self.progress.add_task("bench", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def step(self, description: str) -> None:
        self.progress.update(self.task, advance=1, description=description)

    def log(self, message: str) -> None:
        self.progress.console.print(message, markup=False, highlight=False)


class TqdmReporter(Reporter):
    def __enter__(self) -> Reporter:
        from tqdm import tqdm

        self.bar = tqdm(total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def step(self, description: str) -> None:
        self.bar.set_description(description)
        self.bar.update(1)

    def log(self, message: str) -> None:
        self.bar.write(message)


def make_reporter(total: int) -> Reporter:
    for module, cls in (("rich", RichReporter), ("tqdm", TqdmReporter)):
        if importlib.util.find_spec(module) is not None:
            return cls(total)
    return Reporter(total)


def _reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 240 else text[:237] + "..."


# --------------------------------------------------------------------------------------------------
# Measuring.


def free_memory() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def check_output(runner: Runner, ref: torch.Tensor | None) -> tuple[bool, float | None]:
    """Run once: is the output finite, and its relative L2 error against the reference (float32, on the GPU)."""
    out = runner.output(runner.fn())
    torch.cuda.synchronize()
    finite = bool(torch.isfinite(out).all())
    if ref is None or not finite:
        return finite, None
    return finite, float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def measure_provider(provider: str, x: Inputs, ref: torch.Tensor | None, methods: Sequence[str],
                     cfg: TimingConfig, log: Callable[[str], None]) -> list[Record]:
    """Build, check and time one provider on one shape; a failure logs its reason and records nothing."""
    s = x.shape
    tag = f"{provider:>16} | {s.label()}"
    try:
        runner = BUILDERS[provider](x)
    except Skip as e:
        log(f"skip {tag}: {e}")
        return []
    except Exception as e:
        log(f"FAIL {tag}: build: {_reason(e)}")
        return []
    records = []
    try:
        with runner.context():
            finite, rel_l2 = check_output(runner, ref)
            if not finite:
                log(f"WARN {tag}: output is not finite")
            elif rel_l2 is not None and rel_l2 > REL_L2_WARN:
                log(f"WARN {tag}: rel-L2 {rel_l2:.4f} vs sdpa-default exceeds {REL_L2_WARN}")
            for method in methods:
                try:
                    ms = TIMERS[method](runner.fn, cfg)
                except Exception as e:
                    log(f"FAIL {tag}: {method}: {_reason(e)}")
                    with contextlib.suppress(Exception):
                        torch.cuda.synchronize()
                    continue
                records.append(Record(provider, method, s.B, s.Hq, s.Hkv, s.Sq, s.Sk, s.D, s.causal, s.dtype,
                                      ms, s.flops / (ms * 1e-3) / 1e12, s.suite, rel_l2, finite))
    except Exception as e:
        log(f"FAIL {tag}: {_reason(e)}")
    finally:
        del runner
        free_memory()
    return records


def measure_shape(shape: Shape, methods: Sequence[str], providers: Sequence[str], cfg: TimingConfig,
                  reporter: Reporter) -> list[Record]:
    """All providers on one shape, on shared inputs; memory is freed afterwards."""
    x = ref = None
    records: list[Record] = []
    try:
        x = make_inputs(shape)
        try:
            ref = reference_output(x)
        except Exception as e:
            reporter.log(f"note {shape.label()}: no sdpa-default reference ({_reason(e)}); accuracy not checked")
        for provider in providers:
            reporter.step(f"{shape.label()} · {provider}")
            records += measure_provider(provider, x, ref, methods, cfg, reporter.log)
    except Exception as e:
        reporter.log(f"FAIL {shape.label()}: inputs: {_reason(e)}")
    finally:
        del x, ref
        free_memory()
    return records


# --------------------------------------------------------------------------------------------------
# Results: JSON, table and plot.


def versions() -> dict[str, str | None]:
    """Versions of everything measured (None for what is not installed)."""
    import triton

    import fp8attn

    def dist(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    cudnn_version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "cudnn": str(cudnn_version) if cudnn_version else None, "fp8attn": fp8attn.__version__,
        "cudnn_frontend": dist("nvidia-cudnn-frontend"), "sageattention": dist("sageattention"),
    }


def write_json(path: Path, meta: dict[str, Any], records: Sequence[Record]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**meta, "records": [asdict(r) for r in records]}, indent=1) + "\n")
    tmp.replace(path)


def load_json(path: Path) -> tuple[dict[str, Any], list[Record]]:
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if k != "records"}, [Record.from_dict(r) for r in data["records"]]


def is_sweep(r: Record) -> bool:
    """A record of the FA3 sweep (by its suite, or by its shape in JSON files without one)."""
    if r.suite != "custom":
        return r.suite == "sweep"
    return (r.Sq == r.Sk and r.Hq == r.Hkv and r.Hq * r.D == SWEEP_HIDDEN
            and r.B == max(1, SWEEP_TOKENS // r.Sq))


def _ratio(cells: dict[str, Record], num: str, den: str) -> float | None:
    """Speed of ``num`` over ``den`` (> 1: ``num`` is faster), or None if either is missing."""
    if num in cells and den in cells and cells[num].median_ms > 0:
        return cells[den].median_ms / cells[num].median_ms
    return None


def table_rows(records: Sequence[Record], unit: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per (shape, method), a column per provider in ``unit`` ("TFLOP/s" or "µs"),
    then the speed ratios fp8attn-prequant/cudnn-fp8 and fp8attn/sdpa-cudnn."""
    groups: dict[tuple[Shape, str], dict[str, Record]] = {}
    for r in records:
        groups.setdefault((r.shape, r.method), {})[r.provider] = r
    present = [p for p in PROVIDERS if any(r.provider == p for r in records)]
    present += sorted({r.provider for r in records} - set(present))
    header = ["shape", "method", *present, *(label for _, _, label in RATIOS)]
    rows = []
    for (shape, method), cells in groups.items():
        row = [shape.label(), method]
        for p in present:
            r = cells.get(p)
            if r is None:
                row.append("–")
            else:
                value = f"{r.tflops:.1f}" if unit == "TFLOP/s" else f"{r.median_ms * 1e3:.1f}"
                warn = not r.finite or (r.rel_l2 is not None and r.rel_l2 > REL_L2_WARN)
                row.append(value + ("!" if warn else ""))
        for num, den, _ in RATIOS:
            ratio = _ratio(cells, num, den)
            row.append("–" if ratio is None else f"{ratio:.2f}×")
        rows.append(row)
    return header, rows


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    if not rows:
        return
    if importlib.util.find_spec("rich") is not None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_lines=False)
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i < 2 else "right", no_wrap=i == 0)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    def line(cells: Sequence[str]) -> str:
        padded = (c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded)
    print(f"\n{title}\n{line(header)}\n{'  '.join('-' * w for w in widths)}")
    for row in rows:
        print(line(row))


def report(records: Sequence[Record], gpu: str) -> None:
    """The TFLOP/s table of all records, and a µs table of the shapes timed by more than one method."""
    header, rows = table_rows(records, "TFLOP/s")
    print_table(f"fp8attn bench on {gpu}: TFLOP/s (! = output check warning; ratios: > 1 means fp8attn faster)",
                header, rows)
    methods_per_shape: dict[Shape, set[str]] = {}
    for r in records:
        methods_per_shape.setdefault(r.shape, set()).add(r.method)
    multi = [r for r in records if len(methods_per_shape[r.shape]) > 1]
    if multi:
        header, rows = table_rows(multi, "µs")
        print_table("latency, µs per call (do_bench: L2 flushed; cuda_graph: device time; eager: host loop)",
                    header, rows)


def plot(records: Sequence[Record], path: Path, title: str) -> Path | None:
    """TFLOP/s against S, a panel per (D, causal), a line per provider; do_bench records of the sweep only."""
    sweep = [r for r in records if r.method == "do_bench" and is_sweep(r)]
    if not sweep:
        print("plot: no do_bench records of sweep shapes; nothing to plot")
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"plot: skipped, matplotlib is not importable ({e}); pip install matplotlib")
        return None
    head_dims = sorted({r.D for r in sweep})
    causals = sorted({r.causal for r in sweep})
    dtypes = sorted({r.dtype for r in sweep})
    fig, axes = plt.subplots(len(head_dims), len(causals), figsize=(5.2 * len(causals), 3.6 * len(head_dims)),
                             squeeze=False, sharex=True)
    order = {p: i for i, p in enumerate(PROVIDERS)}
    lines: dict[str, Any] = {}
    for row, d in enumerate(head_dims):
        for col, causal in enumerate(causals):
            ax = axes[row][col]
            panel = [r for r in sweep if r.D == d and r.causal == causal]
            keys = sorted({(r.provider, r.dtype) for r in panel}, key=lambda k: (order.get(k[0], 99), k))
            for provider, dtype in keys:
                pts = sorted((r.Sq, r.tflops) for r in panel if r.provider == provider and r.dtype == dtype)
                label = provider if len(dtypes) == 1 else f"{provider} ({dtype})"
                style = "-" if provider.startswith("fp8attn") else "--"
                (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=label)
                lines.setdefault(label, line)
            ax.set_xscale("log", base=2)
            seqlens = sorted({r.Sq for r in panel})
            ax.set_xticks(seqlens, [_short(s) for s in seqlens])
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.set_title(f"D = {d}, {'causal' if causal else 'non-causal'}", fontsize=10)
            if col == 0:
                ax.set_ylabel("TFLOP/s")
            if row == len(head_dims) - 1:
                ax.set_xlabel("sequence length (16k tokens per batch)")
    fig.suptitle(title, fontsize=11)
    fig.legend(list(lines.values()), list(lines.keys()), loc="lower center", ncol=min(4, len(lines)), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * math.ceil(len(lines) / 4), 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# Command line.


def gpu_slug(name: str) -> str:
    """A file stem from a GPU name: "NVIDIA H100 80GB HBM3" → "h100"."""
    tokens = re.findall(r"[a-z0-9]+", name.lower().replace("nvidia", ""))
    for tok in tokens:
        if re.fullmatch(r"[a-z]+\d+[a-z]*", tok):
            return tok
    return "-".join(tokens) or "gpu"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fp8attn bench", description="Benchmark fp8attn against SDPA, cuDNN FP8 and SageAttention.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Timing: do_bench flushes L2 before every call (Triton zeroes a 256 MB buffer); cuda_graph is "
               "device time per call of N captured calls; eager is host wall-clock of N calls.\n"
               "Default shapes: the FA3 sweep (do_bench) and the mission shape (all methods); with --shape, only "
               "the given shapes unless --suite says otherwise.")
    p.add_argument("--providers", type=_choice_list(PROVIDERS), help=f"comma list from: {', '.join(PROVIDERS)}")
    p.add_argument("--methods", type=_choice_list(METHODS),
                   help=f"comma list from: {', '.join(METHODS)} (default: do_bench; all three for the mission shape)")
    p.add_argument("--shape", action="append", type=parse_shape, default=[], metavar="B,Hq,Hkv,Sq,Sk,D",
                   help="an extra shape (repeatable); run for each --causal value, in --dtype")
    p.add_argument("--suite", type=_choice_list(("sweep", "mission", "custom")),
                   help="comma list of sweep, mission, custom (default: sweep,mission; custom alone with --shape)")
    p.add_argument("--d", type=_int_list, help="sweep head dims (default 64,128,256)")
    p.add_argument("--seqlens", type=_int_list, help="sweep sequence lengths (default 512,...,16384)")
    p.add_argument("--causal", choices=("0", "1", "both"), default="both",
                   help="sweep and --shape masks (the mission shape is non-causal)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16",
                   help="dtype of sweep and --shape inputs (default bf16; the mission shape is fp16)")
    p.add_argument("--quick", action="store_true",
                   help=f"reduced sweep: D {','.join(map(str, QUICK_HEAD_DIMS))}, "
                        f"S {','.join(map(str, QUICK_SEQLENS))}")
    p.add_argument("--rep-ms", type=int, default=100, help="do_bench repetition time in ms (default 100)")
    p.add_argument("--calls", type=int, default=20, help="calls per CUDA graph / eager loop (default 20)")
    p.add_argument("--repeats", type=int, default=10, help="graph replays / eager loops per median (default 10)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    p.add_argument("--name", help="file stem of the JSON and PNG (default: from the GPU name, e.g. h100)")
    p.add_argument("--plot-only", type=Path, metavar="JSON",
                   help="redraw the table and the plot (next to the JSON) from a saved JSON; no GPU needed")
    p.add_argument("--gate", type=Path, metavar="JSON",
                   help="regression gate: re-run fp8attn on the shapes and methods of a committed results file "
                        "(same GPU kind) and exit 1 if any figure is more than 10%% below it")
    return p


def plan(args: argparse.Namespace) -> list[tuple[Shape, tuple[str, ...]]]:
    """The shapes to measure, each with its timing methods."""
    suites = args.suite or (["custom"] if args.shape else ["sweep", "mission"])
    causals = {"0": [False], "1": [True], "both": [False, True]}[args.causal]
    jobs: list[tuple[Shape, tuple[str, ...]]] = []
    default = tuple(args.methods or ("do_bench",))
    if "sweep" in suites:
        head_dims = args.d or (QUICK_HEAD_DIMS if args.quick else SWEEP_HEAD_DIMS)
        seqlens = args.seqlens or (QUICK_SEQLENS if args.quick else SWEEP_SEQLENS)
        jobs += [(s, default) for s in sweep_shapes(head_dims, seqlens, causals, args.dtype)]
    if "mission" in suites and args.causal != "1":
        jobs.append((mission_shape(), tuple(args.methods or METHODS)))
    if "custom" in suites:
        jobs += [(Shape(*dims, c, args.dtype, "custom"), default) for dims in args.shape for c in causals]
    return jobs


GATE_PROVIDERS = ("fp8attn", "fp8attn-prequant")
GATE_TOLERANCE = 0.10  # a change that slows fp8attn by more than 10 % does not merge


def _record_key(r: Record) -> tuple:
    return (r.provider, r.method, r.B, r.Hq, r.Hkv, r.Sq, r.Sk, r.D, r.causal, r.dtype)


def gate_failures(committed: Sequence[Record], fresh: Sequence[Record],
                  tolerance: float = GATE_TOLERANCE) -> list[str]:
    """One line per committed fp8attn figure that ``fresh`` misses or undercuts by more than ``tolerance``."""
    fresh_by_key = {_record_key(r): r for r in fresh}
    failures = []
    for old in committed:
        if old.provider not in GATE_PROVIDERS:
            continue
        label = f"{old.provider} {old.method} {Shape(*_record_key(old)[2:], suite=old.suite).label()}"
        new = fresh_by_key.get(_record_key(old))
        if new is None:
            failures.append(f"missing: {label} (committed {old.tflops:.1f} TFLOP/s)")
        elif new.tflops < (1 - tolerance) * old.tflops:
            failures.append(f"slower: {label}: {new.tflops:.1f} TFLOP/s vs committed {old.tflops:.1f} "
                            f"({new.tflops / old.tflops:.2f}×)")
    return failures


def _default_recipe() -> str:
    from fp8attn.recipe import DEFAULT_RECIPE

    return DEFAULT_RECIPE.name


def run_gate(path: Path, cfg: TimingConfig) -> int:
    """Re-measure fp8attn on every shape and method of a committed results file; 1 if any figure regressed."""
    meta, committed = load_json(path)
    if meta.get("fp8attn_recipe") != _default_recipe():
        print(f"note: {path} measured fp8attn with recipe {meta.get('fp8attn_recipe', 'unrecorded')!r}; "
              f"the default is now {_default_recipe()!r}: a difference may be the recipe, not a regression")
    gpu = torch.cuda.get_device_name()
    if meta.get("gpu") != gpu:
        print(f"fp8attn bench --gate: {path} was measured on {meta.get('gpu')!r}, this is {gpu!r}; "
              "compare on the same GPU kind", file=sys.stderr)
        return 2
    jobs: dict[tuple, set[str]] = {}
    for r in committed:
        if r.provider in GATE_PROVIDERS:
            shape = Shape(r.B, r.Hq, r.Hkv, r.Sq, r.Sk, r.D, r.causal, r.dtype, r.suite)
            jobs.setdefault(shape, set()).add(r.method)
    fresh: list[Record] = []
    with make_reporter(len(jobs) * len(GATE_PROVIDERS)) as reporter:
        for shape, methods in jobs.items():
            fresh += measure_shape(shape, sorted(methods), GATE_PROVIDERS, cfg, reporter)
    report(fresh, gpu)
    failures = gate_failures(committed, fresh)
    for line in failures:
        print(line)
    print(f"gate: {len(failures)} of the committed fp8attn figures regressed by more than {GATE_TOLERANCE:.0%}"
          if failures else f"gate: every fp8attn figure within {GATE_TOLERANCE:.0%} of {path}")
    return 1 if failures else 0


def run_plot_only(path: Path) -> int:
    if not path.is_file():
        print(f"fp8attn bench: --plot-only: no such file {path}", file=sys.stderr)
        return 2
    meta, records = load_json(path)
    gpu = meta.get("gpu", "?")
    report(records, gpu)
    png = plot(records, path.with_suffix(".png"), f"{gpu} · {meta.get('date', '')}")
    if png:
        print(f"plot: {png}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.plot_only is not None:
        return run_plot_only(args.plot_only)
    if not torch.cuda.is_available():
        print("fp8attn bench: CUDA is not available; the benchmark needs an NVIDIA GPU "
              "(only --plot-only works without one)", file=sys.stderr)
        return 2
    if args.gate is not None:
        return run_gate(args.gate, TimingConfig(rep_ms=args.rep_ms, calls=args.calls, repeats=args.repeats))

    gpu = torch.cuda.get_device_name()
    stem = args.name or gpu_slug(gpu)
    json_path, png_path = args.out / f"{stem}.json", args.out / f"{stem}.png"
    providers = []
    for p in args.providers or PROVIDERS:
        why = unavailable_reason(p)
        if why:
            print(f"skip {p}: unavailable: {why}")
        else:
            providers.append(p)
    jobs = plan(args)
    if not providers or not jobs:
        print("fp8attn bench: nothing to run (no available provider or no shape left after the filters)",
              file=sys.stderr)
        return 2
    meta = {"gpu": gpu, "versions": versions(), "command": " ".join(sys.argv),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "fp8attn_recipe": _default_recipe()}
    print(f"{gpu}: {len(jobs)} shapes × {len(providers)} providers → {json_path}")
    cfg = TimingConfig(rep_ms=args.rep_ms, calls=args.calls, repeats=args.repeats)
    records: list[Record] = []
    with make_reporter(len(jobs) * len(providers)) as reporter:
        for shape, methods in jobs:
            records += measure_shape(shape, methods, providers, cfg, reporter)
            write_json(json_path, meta, records)
    report(records, gpu)
    png = plot(records, png_path, f"{gpu} · {meta['date']}")
    print(f"results: {json_path}" + (f", plot: {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
