"""Public entry points: argument checks, torch custom ops and their fake (meta) functions.

Two ways in:

* :func:`attention`: fp16/bf16 ``q, k, v``; fp8attn quantizes them by a recipe, then runs the FP8 kernel.
* :func:`attention_prequantized`: E4M3 ``q, k, v`` from the caller (FP8 linear layers, an FP8 KV
  cache) plus fp32 descales; one launch lays them out for the kernel (V transposed), then the FP8
  kernel runs.

Both are registered as torch custom ops (``torch.ops.fp8attn.*``) with fake functions, so they trace
under ``torch.compile``. There is no backward yet: calling ``backward`` through them raises.
"""

from __future__ import annotations

import collections
import functools
import math
import numbers

import torch
from triton import knobs

from fp8attn.fp8 import E4M3
from fp8attn.kernels.attention_fwd import forward_launches, key_split_buffers
from fp8attn.kernels.launch import Launch, LaunchPlan
from fp8attn.kernels.prequantized_layout import PREQUANTIZED_LAYOUT, prequantized_layout
from fp8attn.kernels.sizes import cdiv
from fp8attn.kernels.unsmoothed_lse import unsmoothed_lse_launch
from fp8attn.quantize import allocate_quantized, padded_head_dim, quantize_launches
from fp8attn.recipe import Recipe, resolve_recipe

MAX_HEAD_DIM = 256
_INPUT_DTYPES = (torch.float16, torch.bfloat16)
_INT32_LIMIT = 2**31 - 1


# --------------------------------------------------------------------------------------------------
# Argument checks: each error names the argument, what was expected and what came.


def _check_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have 4 dimensions (batch, heads, seqlen, head_dim), got shape {tuple(x.shape)}")
    if x.numel() > _INT32_LIMIT:
        raise NotImplementedError(f"{name} has {x.numel()} elements; fp8attn indexes with 32 bits (at most 2**31 - 1)")
    return x


@functools.cache
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _check_device(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, x in (("k", k), ("v", v)):
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}; all inputs must share one device")
    if q.device.type == "cpu":
        if not knobs.runtime.interpret:
            raise ValueError(
                "q is on the CPU, which fp8attn runs only through Triton's interpreter: "
                "set TRITON_INTERPRET=1 before anything imports triton, or move the tensors to a CUDA GPU"
            )
    elif q.device.type == "cuda":
        major, minor = _capability(q.device)
        if (major, minor) < (8, 9) and not knobs.runtime.interpret:
            raise NotImplementedError(
                f"q is on a GPU of compute capability {major}.{minor}; FP8 tensor cores need 8.9 (Ada) or 9.0 (Hopper)"
            )
    else:
        raise ValueError(f"q is on {q.device}; fp8attn runs on CUDA GPUs (or the CPU through Triton's interpreter)")


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must have the same batch size, got q {q.shape[0]} and k {k.shape[0]}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must have the same head_dim, got q {q.shape[3]} and k {k.shape[3]}")
    for name, size in (("batch", q.shape[0]), ("q heads", q.shape[1]), ("k heads", k.shape[1]),
                       ("q seqlen", q.shape[2]), ("k seqlen", k.shape[2])):
        if size < 1:
            raise ValueError(f"{name} must be at least 1, got {size}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(
            f"q's head count must be a multiple of k's (grouped-query attention), got {q.shape[1]} and {k.shape[1]}"
        )
    head_dim = q.shape[3]
    if head_dim % 8 or not 8 <= head_dim <= MAX_HEAD_DIM:
        raise NotImplementedError(
            f"head_dim must be a multiple of 8 from 8 to {MAX_HEAD_DIM}, got {head_dim} "
            "(powers of two run without padding)"
        )


def _check_padded_sizes(q: torch.Tensor, k: torch.Tensor, k_block: int) -> None:
    """The kernels index the padded layout (D to a power of two, keys to a multiple of ``k_block``)
    with 32 bits: up to 1.9x the inputs' own element counts (D=136 pads to 256)."""
    dp, skp = padded_head_dim(q.shape[3]), cdiv(k.shape[2], k_block) * k_block
    for name, x, seqlen in (("q", q, q.shape[2]), ("k", k, skp)):
        padded = x.shape[0] * x.shape[1] * seqlen * dp
        if padded > _INT32_LIMIT:
            raise NotImplementedError(f"{name} padded to the kernel layout has {padded} elements; fp8attn indexes "
                                      "with 32 bits (at most 2**31 - 1)")


def _check_flags(causal: object, scale: object, head_dim: int) -> float:
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if scale <= 0:
        raise ValueError(f"scale must be positive (the kernel takes row maxima on unscaled scores), got {scale}")
    return float(scale)


def _check_inputs(q: object, k: object, v: object, causal: object, scale: object,
                  dtypes: tuple[torch.dtype, ...]) -> float:
    q, k, v = (_check_tensor(n, x) for n, x in (("q", q), ("k", k), ("v", v)))
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dtype not in dtypes:
            raise TypeError(f"{name} must have dtype {' or '.join(map(str, dtypes))}, got {x.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    _check_shapes(q, k, v)
    _check_device(q, k, v)
    return _check_flags(causal, scale, q.shape[3])


def _check_descale(name: str, x: object, batch: int, heads: int, device: torch.device) -> torch.Tensor:
    """Shape and dtype of one descale; returns it as a ``(batch, heads)`` float32 view on ``device``."""
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        if not (math.isfinite(x) and x > 0):
            raise ValueError(f"{name} must be finite and positive, got {x}")
        x = torch.full((), float(x), dtype=torch.float32, device=device)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a float32 tensor or a number, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype}")
    if x.shape not in ((), (1,), (batch, heads)):
        raise ValueError(
            f"{name} must have shape (), (1,) or (batch, heads) = ({batch}, {heads}), got {tuple(x.shape)}"
        )
    x = x.to(device=device)
    return x.reshape(()).expand(batch, heads) if x.dim() < 2 else x


def _check_v_mean(x: object, batch: int, num_kv_heads: int, head_dim: int, device: torch.device) -> None:
    """The caller's per-channel V mean: None, or a float32 ``(batch, kv_heads, head_dim)`` tensor on q's device."""
    if x is None:
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"v_mean must be a float32 tensor or None, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"v_mean must be float32, got {x.dtype}")
    if x.shape != (batch, num_kv_heads, head_dim):
        raise ValueError(f"v_mean must have shape (batch, kv_heads, head_dim) = ({batch}, {num_kv_heads}, "
                         f"{head_dim}), got {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"v_mean must be on q's device {device}, got {x.device}")


def _check_descale_values(descales: dict[str, torch.Tensor]) -> None:
    """Finite and positive: one host sync for all descales, skipped while a CUDA graph is being captured."""
    first = next(iter(descales.values()))
    if first.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    ok = torch.stack([((x > 0) & x.isfinite()).all() for x in descales.values()])
    if not bool(ok.all()):
        name, x = next((n, x) for (n, x), good in zip(descales.items(), ok.tolist(), strict=True) if not good)
        raise ValueError(f"{name} must be finite and positive, got {x.flatten()[:8].cpu().tolist()}")


# --------------------------------------------------------------------------------------------------
# Custom ops.


def _attention_launches(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float, recipe: Recipe, return_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor, list[Launch], torch.Tensor]:
    """Allocate ``out`` and the quantized workspace, with ``lse`` carved from the workspace (one allocation
    fewer a call); return them with the launches that fill them. Only with ``return_lse`` is ``lse`` the
    caller's: exact (the forward kernel sums P's rows in fp32) and, where K was smoothed, shifted back to
    the scores the caller asked for (:mod:`fp8attn.kernels.unsmoothed_lse`)."""
    batch, num_q_heads, seqlen_q, head_dim = q.shape
    splits = key_split_buffers(batch, num_q_heads, k.shape[1], seqlen_q, k.shape[2], head_dim, recipe, causal, q.device)
    qkv = allocate_quantized(batch, num_q_heads, k.shape[1], seqlen_q, k.shape[2], head_dim, recipe, q.device,
                             extra={"lse": (q.shape[:3], torch.float32), **splits})
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    lse = qkv.extra["lse"]
    launches = [*quantize_launches(q, k, v, recipe, qkv),
                *forward_launches(qkv, out, lse, causal=causal, softmax_scale=scale, p_scale=recipe.p_multiplier,
                                  exact_lse=return_lse)]
    if return_lse and recipe.smooth_k:
        launches.append(unsmoothed_lse_launch(q, qkv, lse, softmax_scale=scale, rotated=recipe.hadamard))
    return out, lse, launches, qkv.workspace


def _attention_impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
    qk_format: str, pv_format: str, q_block: int, k_block: int, smooth_k: bool, smooth_v: bool, hadamard: bool,
    p_scale: float, return_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    recipe = Recipe(name="custom-op", qk_format=qk_format, pv_format=pv_format, q_block=q_block, k_block=k_block,
                    smooth_k=smooth_k, smooth_v=smooth_v, hadamard=hadamard, p_scale=p_scale)
    out, lse, launches, _ = _attention_launches(q, k, v, causal, scale, recipe, return_lse)
    for launch in launches:
        launch.run()
    return out, lse


_attention_op = torch.library.custom_op("fp8attn::attention", _attention_impl, mutates_args=())


@_attention_op.register_fake
def _(q, k, v, causal, scale, qk_format, pv_format, q_block, k_block, smooth_k, smooth_v, hadamard, p_scale,
      return_lse):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


def _prequantized_launches(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    q_descale: torch.Tensor, k_descale: torch.Tensor, v_descale: torch.Tensor, v_mean: torch.Tensor | None,
    causal: bool, scale: float, out_dtype: torch.dtype, return_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor, list[Launch], tuple[torch.Tensor, ...]]:
    """Allocate ``out`` and the kernel layout (``lse`` carved from its workspace); return them with the
    layout and forward launches (the last item: the layout's workspace, which holds the copies of Q and K
    where they are needed). ``lse`` is exact with ``return_lse`` (as in :func:`_attention_launches`)."""
    batch, num_q_heads, seqlen_q, head_dim = q.shape
    splits = key_split_buffers(batch, num_q_heads, k.shape[1], seqlen_q, k.shape[2], head_dim,
                               PREQUANTIZED_LAYOUT, causal, q.device, v_smoothed=v_mean is not None)
    qkv, layout_launch = prequantized_layout(q, k, v, q_descale, k_descale, v_descale, v_mean,
                                             extra={"lse": (q.shape[:3], torch.float32), **splits})
    out = torch.empty(q.shape, device=q.device, dtype=out_dtype)
    lse = qkv.extra["lse"]
    forward = forward_launches(qkv, out, lse, causal=causal, softmax_scale=scale,
                               p_scale=PREQUANTIZED_LAYOUT.p_multiplier, exact_lse=return_lse)
    return out, lse, [layout_launch, *forward], (qkv.workspace,)


def _attention_prequantized_impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    q_descale: torch.Tensor, k_descale: torch.Tensor, v_descale: torch.Tensor, v_mean: torch.Tensor | None,
    causal: bool, scale: float, out_dtype: torch.dtype, return_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse, launches, _ = _prequantized_launches(q, k, v, q_descale, k_descale, v_descale, v_mean, causal, scale,
                                                   out_dtype, return_lse)
    for launch in launches:
        launch.run()
    return out, lse


_attention_prequantized_op = torch.library.custom_op(
    "fp8attn::attention_prequantized", _attention_prequantized_impl, mutates_args=()
)


@_attention_prequantized_op.register_fake
def _(q, k, v, q_descale, k_descale, v_descale, v_mean, causal, scale, out_dtype, return_lse):
    return q.new_empty(q.shape, dtype=out_dtype), q.new_empty(q.shape[:3], dtype=torch.float32)


_NO_BACKWARD = "fp8attn has no backward pass yet: use it for inference (forward only)"


def _no_backward(ctx, *grads):
    raise NotImplementedError(_NO_BACKWARD)


for _op in (_attention_op, _attention_prequantized_op):
    _op.register_autograd(_no_backward, setup_context=lambda ctx, inputs, output: None)


class _ForwardOnly(torch.autograd.Function):
    """Eager-mode stand-in for the ops' autograd registration: joins the graph, raises in backward."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        return out

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(_NO_BACKWARD)


def _dispatch(op, impl, inputs: tuple[torch.Tensor, ...], *args) -> tuple[torch.Tensor, torch.Tensor]:
    """Run through the custom op while torch.compile traces; otherwise call the implementation directly,
    which saves the op dispatcher's host time on every eager call."""
    if torch.compiler.is_compiling():
        return op(*inputs, *args)
    out, lse = impl(*inputs, *args)
    if torch.is_grad_enabled() and any(x.requires_grad for x in inputs):
        out = _ForwardOnly.apply(out, *inputs)
    return out, lse


# --------------------------------------------------------------------------------------------------
# Eager replays: a call whose signature ran before skips the checks and Triton's launch path.


class _PlanCache(collections.OrderedDict):
    """The most recently used launch plans, one per call signature."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def get(self, key):
        plan = super().get(key)
        if plan is not None:
            self.move_to_end(key)
        return plan

    def __setitem__(self, key, plan) -> None:
        super().__setitem__(key, plan)
        if len(self) > self.capacity:
            self.popitem(last=False)


_PLANS = _PlanCache(capacity=256)


def _replay_key(tensors: tuple[object, ...], *flags: object) -> tuple | None:
    """The signature under which an eager call can replay a recorded plan, or None.

    ``tensors`` are the q, k, v arguments; ``flags`` every other argument (tensors among them, such as
    descales, are read by the launches too). For each tensor the key holds everything Triton specializes
    on besides its address (shape, strides, dtype, device, 16-byte alignment); other flags are held with
    their types, so a call matches a plan only if a call with the same arguments passed every check
    before (see LaunchPlan for what it must pin). It also holds which tensor arguments are one and the
    same object: a plan records each launch argument as "input j", so one recorded with ``q is k`` must
    not serve separate q and k.
    None while torch.compile traces, when autograd must see the call, or where replays cannot run.
    This runs on every eager call: it is written for host time (one pass, no helper calls per argument).
    """
    if torch.compiler.is_compiling():
        return None
    grad = torch.is_grad_enabled()
    key = []
    read = list(tensors)
    for f in flags:
        if isinstance(f, torch.Tensor):
            read.append(f)
            key.append(_TENSOR_FLAG)  # its signature follows with the inputs'
        else:
            key.append((type(f), f))
    ids = []
    for t in read:
        if type(t) is not torch.Tensor or (grad and t.requires_grad):  # bad input, nn.Parameter, autograd
            return None
        key.append((t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16))
        ids.append(id(t))
    if not LaunchPlan.usable(key[len(flags)][3]):  # q's device
        return None
    key.append(tuple(map(ids.index, ids)))  # each tensor's first occurrence
    key = tuple(key)
    try:
        hash(key)
    except TypeError:  # an unhashable argument: the checks will name it
        return None
    return key


_TENSOR_FLAG = (torch.Tensor,)  # a tensor flag's place in the key (its signature is with the inputs')


# --------------------------------------------------------------------------------------------------
# Public functions.


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    recipe: str | Recipe | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention with FP8 (E4M3) tensor-core matmuls.

    Args:
        q: ``(B, Hq, Sq, D)`` float16 or bfloat16, any strides.
        k: ``(B, Hkv, Sk, D)``, same dtype and device; ``Hq`` must be a multiple of ``Hkv``
            (grouped-query / multi-query attention without repeating K and V).
        v: ``(B, Hkv, Sk, D)``.
        causal: mask keys after each query, aligned to the bottom-right corner as in
            FlashAttention: query ``i`` sees keys ``j <= i + Sk - Sq``. A query that sees no key
            (possible when ``Sq > Sk``) gets an output of zeros and a log-sum-exp of ``-inf``.
        scale: softmax scale, positive; ``1 / sqrt(D)`` when None.
        recipe: how q, k, v and P are quantized: a name from :func:`fp8attn.recipes` or a
            :class:`fp8attn.Recipe`; the default is ``"int8-hadamard-vsmooth"`` (INT8 Q·Kᵀ with
            per-token Q scales, Hadamard-rotated and smoothed K, smoothed E4M3 V, E4M3 P).
        return_lse: also return the log-sum-exp of each row's scaled scores ``scale·q·kᵀ`` (a view of
            the call's workspace: while it lives, so do the call's 8-bit copies of q, k and v). On
            Hopper a call without it may sum P's rows on the tensor cores, which is faster and leaves
            the workspace's LSE inexact; with it the rows are summed in fp32.

    Returns:
        ``out (B, Hq, Sq, D)`` in q's dtype, and with ``return_lse`` also ``lse (B, Hq, Sq)`` float32
        (natural log).

    D is any multiple of 8 up to 256 (powers of two from 32 on run without padding). CUDA tensors
    run on the GPU (compute capability 8.9 or 9.0); CPU tensors through Triton's interpreter.
    Where the query blocks alone would leave SMs idle (decoding: a few query rows against many keys),
    the keys are split into ranges that run in parallel and are merged by their log-sum-exp
    (``fp8attn.kernels.attention_fwd.key_splits``).
    """
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    key = _replay_key((q, k, v), causal, scale, recipe, return_lse)
    plan = _PLANS.get(key) if key is not None else None
    if plan is not None:
        buffers = plan.run((q, k, v), views=return_lse)
        return (buffers[0], buffers[-1]) if return_lse else buffers[0]
    checked_scale = _check_inputs(q, k, v, causal, scale, _INPUT_DTYPES)
    r = resolve_recipe(recipe)
    _check_padded_sizes(q, k, r.k_block)
    if key is None:
        out, lse = _dispatch(_attention_op, _attention_impl, (q, k, v), causal, checked_scale, r.qk_format,
                             r.pv_format, r.q_block, r.k_block, r.smooth_k, r.smooth_v, r.hadamard, r.p_multiplier,
                             return_lse)
    else:
        out, lse, launches, workspace = _attention_launches(q, k, v, causal, checked_scale, r, return_lse)
        for launch in launches:
            launch.run()
        _PLANS[key] = LaunchPlan(launches, inputs=(q, k, v), allocated=(out, workspace), views=(lse,))
    return (out, lse) if return_lse else out


def attention_prequantized(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_descale: torch.Tensor | float,
    k_descale: torch.Tensor | float,
    v_descale: torch.Tensor | float,
    *,
    v_mean: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    return_lse: bool = False,
    validate_descales: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention on inputs that are already E4M3, for callers with FP8 activations or KV caches.

    The real values are ``q.float() * q_descale`` (likewise k, v): a descale is what the caller
    divided by when quantizing, as in FlashAttention-3's ``descale_q/k/v``. With ``v_mean`` the real V
    is ``v.float() * v_descale + v_mean[:, :, None, :]``: subtracting V's per-channel mean before
    quantizing (and passing it here, where it is added to the output) makes V's scale finer and keeps
    P·V's products from sharing one sign, which at D=256 the FP8 tensor cores' accumulation needs
    (README, Known issues)::

        v_mean = v.float().mean(dim=2)                      # (B, Hkv, D)
        v8, v_descale = fp8attn.fp8.quantize_per_head(v - v_mean[:, :, None, :])

    Args:
        q: ``(B, Hq, Sq, D)`` ``torch.float8_e4m3fn``.
        k, v: ``(B, Hkv, Sk, D)`` ``torch.float8_e4m3fn``.
        q_descale: float32 of shape ``()``/``(1,)`` (per tensor) or ``(B, Hq)`` (per head), or a number.
        k_descale, v_descale: float32 of shape ``()``/``(1,)`` or ``(B, Hkv)``, or a number.
        causal, scale, return_lse: as in :func:`attention`.
        out_dtype: ``torch.bfloat16`` or ``torch.float16``.
        v_mean: ``(B, Hkv, D)`` float32 on q's device, or None (V as given).
        validate_descales: check that descale tensors are finite and positive. This costs one host
            sync per call (skipped during CUDA-graph capture); pass False on a hot path.

    Returns:
        ``out (B, Hq, Sq, D)`` in ``out_dtype`` (and ``lse (B, Hq, Sq)`` float32 with ``return_lse``).
    """
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    # A number descale reaches the kernels as a tensor made per call: the plan holds for any value.
    descale_keys = [d if isinstance(d, torch.Tensor) else type(d) for d in (q_descale, k_descale, v_descale)]
    key = _replay_key((q, k, v), *descale_keys, v_mean, causal, scale, out_dtype, return_lse)
    plan = _PLANS.get(key) if key is not None else None
    raw_descales = (q_descale, k_descale, v_descale)
    v_means = () if v_mean is None else (v_mean,)  # a launch input only where given
    if plan is not None and all(isinstance(d, torch.Tensor) and d.device == q.device for d in raw_descales):
        # The key pinned each descale's (and v_mean's) shape, strides and dtype as they passed the checks;
        # the (batch, heads) view those made has the tensor's own address, which is all a replay reads.
        if validate_descales:
            _check_descale_values(dict(zip(("q_descale", "k_descale", "v_descale"), raw_descales, strict=True)))
        buffers = plan.run((q, k, v, *raw_descales, *v_means), views=return_lse)
        return (buffers[0], buffers[-1]) if return_lse else buffers[0]
    if plan is None:
        checked_scale = _check_inputs(q, k, v, causal, scale, (E4M3,))
        _check_padded_sizes(q, k, PREQUANTIZED_LAYOUT.k_block)
        if out_dtype not in _INPUT_DTYPES:
            raise TypeError(f"out_dtype must be torch.float16 or torch.bfloat16, got {out_dtype}")
    batch, num_q_heads, num_kv_heads = q.shape[0], q.shape[1], k.shape[1]
    descales = {
        "q_descale": _check_descale("q_descale", q_descale, batch, num_q_heads, q.device),
        "k_descale": _check_descale("k_descale", k_descale, batch, num_kv_heads, q.device),
        "v_descale": _check_descale("v_descale", v_descale, batch, num_kv_heads, q.device),
    }
    if plan is None:
        _check_v_mean(v_mean, batch, num_kv_heads, q.shape[3], q.device)
    if validate_descales:
        _check_descale_values(descales)
    inputs = (q, k, v, *descales.values())
    if plan is not None:  # a number descale (made a tensor above) or one on another device (copied above)
        buffers = plan.run((*inputs, *v_means), views=return_lse)
        out, lse = buffers[0], buffers[-1]
    elif key is None:
        out, lse = _dispatch(_attention_prequantized_op, _attention_prequantized_impl, inputs, v_mean, causal,
                             checked_scale, out_dtype, return_lse)
    else:
        out, lse, launches, buffers = _prequantized_launches(*inputs, v_mean, causal, checked_scale, out_dtype,
                                                             return_lse)
        for launch in launches:
            launch.run()
        _PLANS[key] = LaunchPlan(launches, inputs=(*inputs, *v_means), allocated=(out, *buffers), views=(lse,))
    return (out, lse) if return_lse else out
