"""fp8attn inside Hugging Face ``transformers`` models (``AttentionInterface``), and Q/K/V capture for measurement.

Use fp8attn as a model's attention::

    from fp8attn.integrations import transformers as fp8hf

    name = fp8hf.register()                      # "fp8attn", default recipe
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=name)
    # or, on a loaded model: model.set_attn_implementation(name)

Record every layer's attention inputs while the model runs as usual (on SDPA)::

    with fp8hf.capture_qkv(model) as calls:
        model(input_ids)
    calls[3].q, calls[3].k, calls[3].v, calls[3].causal, calls[3].scale

What is supported. The attention function follows the contract of transformers'
``sdpa_attention_forward`` (checked against transformers 5.23): ``query (B, Hq, Sq, D)``,
``key, value (B, Hkv, Sk, D)`` (not repeated for grouped-query attention: fp8attn reads them as they
are), and it returns ``(attn_output (B, Sq, Hq, D), None)``. Each registered name also gets
transformers' SDPA mask function, so a model hands over ``attention_mask=None`` whenever the mask is
plain causal or full, exactly as it does for SDPA. Masks are handled like this:

* ``None``: causal when the module (or the ``is_causal`` argument) says so and ``Sq > 1``, else full.
* a boolean 4-D mask equal to the full or to the bottom-right causal pattern (chunked prefill with a
  cache): run as that pattern.
* anything else (padding, sliding windows, packed sequences, static-cache slots): **raises**
  ``NotImplementedError``. Silently falling back to SDPA would make a model look FP8 when it is not;
  run padded batches one sequence at a time, or keep such a model on ``"sdpa"``.

Dropout, ``softcap``, ``sliding_window``, attention sinks (``s_aux``), ``position_bias`` and paged caches
raise ``NotImplementedError`` too. fp8attn takes fp16/bf16 inputs: a float32 model's Q/K/V are cast to
bfloat16 before quantization and the output is cast back (the bf16 rounding is far below the FP8
rounding that follows it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, AttentionMaskInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

import fp8attn
from fp8attn.recipe import Recipe, resolve_recipe
from fp8attn.reference import visible_keys

AttentionImpl = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool, float], torch.Tensor]
"""``impl(q (B, Hq, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, D), causal, scale) -> out (B, Hq, Sq, D)``,
causal bottom-right aligned as in :func:`fp8attn.attention`."""

AttentionForward = Callable[..., tuple[torch.Tensor, None]]
"""A function with transformers' attention-interface signature (see :func:`attention_forward_for`)."""

CAPTURE_NAME = "fp8attn-capture"
_BUILTIN = frozenset(AttentionInterface._global_mapping) | {"eager"}
_UNSUPPORTED_KWARGS = ("softcap", "sliding_window", "s_aux", "position_bias", "cache")


# --------------------------------------------------------------------------------------------------
# Masks and arguments.


def _mask_as_causal(mask: object, seqlen_q: int, seqlen_k: int) -> bool | None:
    """True/False when ``mask`` is the bottom-right causal/full pattern; None when it is anything else."""
    if not (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.dim() == 4):
        return None
    if mask.shape[1] != 1 or tuple(mask.shape[2:]) != (seqlen_q, seqlen_k):
        return None
    if bool(mask.all()):
        return False
    if torch.equal(mask, visible_keys(seqlen_q, seqlen_k, True, mask.device).expand_as(mask)):
        return True
    return None


def _resolve_mask(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, is_causal: bool | None,
) -> tuple[torch.Tensor, torch.Tensor, bool | None]:
    """``(key, value, causal)`` as SDPA would see them; ``causal`` is None when the mask has no fp8attn form.

    Mirrors ``sdpa_attention_forward``: without a mask, causality comes from ``is_causal`` or the module
    and only applies for ``Sq > 1``; a causal call without a mask and with ``Sk > Sq`` is a prefill into
    an empty static cache, whose unused trailing slots are cut off (then top-left = bottom-right).
    """
    seqlen_q, seqlen_k = query.shape[2], key.shape[2]
    if attention_mask is not None:
        return key, value, _mask_as_causal(attention_mask, seqlen_q, seqlen_k)
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True)) and seqlen_q > 1
    if causal and seqlen_k > seqlen_q:
        key, value = key[:, :, :seqlen_q], value[:, :, :seqlen_q]
    return key, value, causal


def _check_kwargs(module: torch.nn.Module, dropout: float, kwargs: dict[str, object]) -> None:
    where = type(module).__name__
    if dropout:
        raise NotImplementedError(f"fp8attn has no attention dropout ({where} asked for {dropout}); call model.eval()")
    for name in _UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"fp8attn does not support `{name}` (passed by {where}); use attn 'sdpa'")


# --------------------------------------------------------------------------------------------------
# Registration.


def attention_forward_for(impl: AttentionImpl) -> AttentionForward:
    """Wrap ``impl`` into transformers' attention-function contract.

    The returned ``forward(module, query (B, Hq, Sq, D), key (B, Hkv, Sk, D), value (B, Hkv, Sk, D),
    attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs)`` returns
    ``(attn_output (B, Sq, Hq, D) contiguous, None)``; ``scaling`` None means ``1 / sqrt(D)``.
    Masks it cannot express raise ``NotImplementedError`` (see the module docstring).
    """

    def forward(
        module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
        is_causal: bool | None = None, **kwargs: object,
    ) -> tuple[torch.Tensor, None]:
        _check_kwargs(module, dropout, kwargs)
        key, value, causal = _resolve_mask(module, query, key, value, attention_mask, is_causal)
        if causal is None:
            raise NotImplementedError(
                f"fp8attn runs causal or full attention only; {type(module).__name__} got an attention mask of "
                f"shape {tuple(getattr(attention_mask, 'shape', ()))} with another pattern (padding?). Run sequences "
                "one at a time without padding, or use attn_implementation='sdpa' for this model"
            )
        scale = query.shape[-1] ** -0.5 if scaling is None else float(scaling)
        out = impl(query, key, value, causal, scale)
        return out.transpose(1, 2).contiguous(), None

    return forward


def register_impl(name: str, impl: AttentionImpl) -> str:
    """Register ``impl`` (see :data:`AttentionImpl`) under ``name`` with its SDPA-style mask; returns ``name``.

    Use this for stand-ins with fp8attn's numerics, e.g. ``reference.emulate`` on the CPU. Names that
    transformers ships (``"sdpa"``, ``"eager"``, ...) are refused.
    """
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is one of transformers' own attention implementations; choose another name")
    AttentionInterface.register(name, attention_forward_for(impl))
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def _fp8attn_impl(recipe: Recipe) -> AttentionImpl:
    def impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
        dtype = q.dtype
        if dtype not in (torch.float16, torch.bfloat16):
            q, k, v = (x.to(torch.bfloat16) for x in (q, k, v))
        return fp8attn.attention(q, k, v, causal=causal, scale=scale, recipe=recipe).to(dtype)

    return impl


def register(name: str = "fp8attn", recipe: str | Recipe | None = None) -> str:
    """Register :func:`fp8attn.attention` with ``recipe`` (default ``"e4m3"``) as attention ``name``; returns ``name``.

    Pass the name as ``attn_implementation=`` to ``from_pretrained`` or to ``model.set_attn_implementation``.
    Registering again under the same name replaces the recipe for every model that uses the name.
    """
    return register_impl(name, _fp8attn_impl(resolve_recipe(recipe)))


# --------------------------------------------------------------------------------------------------
# Capture.


@dataclass(frozen=True)
class CapturedAttention:
    """One attention call's inputs, detached CPU copies in the model's dtype.

    Attributes:
        layer: the module's ``layer_idx`` (None if it has none).
        q: ``(B, Hq, Sq, D)``.
        k, v: ``(B, Hkv, Sk, D)``, not repeated for grouped-query attention.
        causal: bottom-right causal or full, as :func:`fp8attn.attention` takes it; None when the mask
            was another pattern (then ``mask`` holds it).
        scale: the softmax scale the model used.
        mask: the boolean ``(B, 1, Sq, Sk)`` mask when the model passed one, else None.
    """

    layer: int | None
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    causal: bool | None
    scale: float
    mask: torch.Tensor | None


_recorders: list[list[CapturedAttention]] = []


def _cpu(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", copy=True)


def _capture_forward(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
    is_causal: bool | None = None, **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Record the call into the innermost :func:`capture_qkv`, then run transformers' SDPA attention."""
    if _recorders:
        k, v, causal = _resolve_mask(module, query, key, value, attention_mask, is_causal)
        mask = _cpu(attention_mask) if isinstance(attention_mask, torch.Tensor) else None
        scale = query.shape[-1] ** -0.5 if scaling is None else float(scaling)
        _recorders[-1].append(CapturedAttention(getattr(module, "layer_idx", None), _cpu(query), _cpu(k), _cpu(v),
                                                causal, scale, mask))
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


@contextlib.contextmanager
def capture_qkv(model: PreTrainedModel) -> Iterator[list[CapturedAttention]]:
    """Within the block, ``model`` runs on SDPA and every attention call appends a :class:`CapturedAttention`
    (in call order: one per layer per forward) to the yielded list. The model's attention implementation
    is restored on exit. Captures hold CPU copies: keep sequences short or layers few on big models.
    """
    AttentionInterface.register(CAPTURE_NAME, _capture_forward)
    AttentionMaskInterface.register(CAPTURE_NAME, sdpa_mask)
    previous = model.config._attn_implementation
    records: list[CapturedAttention] = []
    model.set_attn_implementation(CAPTURE_NAME)
    _recorders.append(records)
    try:
        yield records
    finally:
        del _recorders[next(i for i, r in enumerate(_recorders) if r is records)]
        model.set_attn_implementation(previous)
