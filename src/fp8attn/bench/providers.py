"""The providers ``fp8attn bench`` times: each builds, per shape, a zero-argument callable (:class:`Runner`)."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.metadata
import importlib.util
import math
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from fp8attn.bench.shapes import Shape
from fp8attn.fp8 import E4M3, E4M3_MAX, quantize_per_head, scale_from_amax, to_e4m3

PROVIDERS = (
    "fp8attn", "fp8attn-prequant", "fp8attn-cache", "cudnn-fp8",
    "sdpa-cudnn", "sdpa-flash", "sdpa-efficient", "sdpa-default", "sage1",
)


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

    (q8, qd), (k8, kd), (v8, vd) = (quantize_per_head(t) for t in (x.q, x.k, x.v))
    causal, out_dtype = x.shape.causal, x.q.dtype
    return Runner(lambda: fp8attn.attention_prequantized(q8, k8, v8, qd, kd, vd, causal=causal, out_dtype=out_dtype,
                                                         validate_descales=False))


def build_fp8attn_cache(x: Inputs) -> Runner:
    """fp8attn on E4M3 keys and values held in a :class:`fp8attn.PrequantizedKVCache`, filled here outside the
    timed region (as a decoding loop's cache is by earlier steps): a call lays out only Q."""
    import fp8attn

    (q8, qd), (k8, kd), (v8, vd) = (quantize_per_head(t) for t in (x.q, x.k, x.v))
    cache = fp8attn.PrequantizedKVCache(*k8.shape[:2], k8.shape[3], k8.shape[2], kd, vd, device=k8.device)
    cache.append(k8, v8)
    causal, out_dtype = x.shape.causal, x.q.dtype
    return Runner(lambda: cache.attention(q8, qd, causal=causal, out_dtype=out_dtype, validate_descales=False),
                  keep=[cache])


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
    "fp8attn-cache": build_fp8attn_cache,
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
        return f"{describe_error(e)}{hint}"
    return None


def describe_error(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 240 else text[:237] + "..."
