"""Faithful float→fp8 and float→bf16 casts under Triton's CPU interpreter.

Triton 3.6's interpreter converts floats to fp8 with its own bit manipulation, which drops the carry
when rounding overflows the mantissa (-125.66 becomes -64 instead of -128), rounds ties away from zero
and does not saturate (triton-lang/triton#8322). The GPU rounds to nearest-even and saturates to the
largest finite value. The same code makes ``x.to(tl.bfloat16)`` from fp32 truncate (it passes no rounding
mode), where the GPU rounds to nearest-even: a bf16 output one ulp low about half the time.
:func:`install` swaps the interpreter's conversion for one that goes through PyTorch's float8 and
bfloat16 types (with explicit saturation for fp8), so kernels run under ``TRITON_INTERPRET=1`` give the
numbers the GPU gives. Other conversions, and bf16 ones that ask to round toward zero, keep Triton's code.

It also makes scalar tensors usable as loop bounds under NumPy >= 2.4: the interpreter holds a
scalar such as ``tl.program_id(0) * C`` as a one-element array, and NumPy 2.4 no longer converts
those to ``int`` (``range(start, end)`` in a kernel then fails).
"""

from __future__ import annotations

import numpy as np
import torch
import triton.language as tl
import triton.runtime.interpreter as interpreter

_TORCH_FP8 = {
    tl.float8e4nv: torch.float8_e4m3fn,
    tl.float8e5: torch.float8_e5m2,
}
_TORCH_FLOAT = {tl.float16: torch.float16, tl.bfloat16: torch.bfloat16, tl.float32: torch.float32}
_UINT_VIEW = {8: torch.uint8, 16: torch.int16, 32: torch.int32}


def _as_torch(bits: np.ndarray, dtype: tl.dtype) -> torch.Tensor:
    width = dtype.primitive_bitwidth
    signed = f"int{width}" if width > 8 else "uint8"  # torch has no uint16/uint32 views to reinterpret
    raw = torch.from_numpy(np.ascontiguousarray(bits).view(f"uint{width}").view(signed))
    return raw.view(_TORCH_FP8.get(dtype) or _TORCH_FLOAT[dtype])


def _rounds_to_bf16_as_the_gpu_does(src: tl.dtype, dst: tl.dtype, rounding_mode) -> bool:
    """A float→bf16 downcast that rounds to nearest-even on the GPU (no mode given, or RTNE)."""
    return dst == tl.bfloat16 and src == tl.float32 and rounding_mode != interpreter._ir.ROUNDING_MODE.RTZ


def _convert_float(data: np.ndarray, src: tl.dtype, dst: tl.dtype, rounding_mode):
    if src not in _TORCH_FP8 and dst not in _TORCH_FP8 and not _rounds_to_bf16_as_the_gpu_does(src, dst, rounding_mode):
        return _triton_convert_float(data, src, dst, rounding_mode)
    if (src not in _TORCH_FP8 and src not in _TORCH_FLOAT) or (dst not in _TORCH_FP8 and dst not in _TORCH_FLOAT):
        return _triton_convert_float(data, src, dst, rounding_mode)
    value = _as_torch(data, src)
    if dst in _TORCH_FP8:
        limit = float(torch.finfo(_TORCH_FP8[dst]).max)
        value = value.float().clamp(-limit, limit)
    out = value.to(_TORCH_FP8.get(dst) or _TORCH_FLOAT[dst])
    width = dst.primitive_bitwidth
    out_bits = out.view(_UINT_VIEW[width]).numpy().view(f"uint{width}")
    return out_bits.reshape(data.shape)


def _scalar_index(self) -> int:
    data = self.handle.data
    if data.size != 1:
        raise TypeError(f"only a scalar can be used as an index, got a block of shape {data.shape}")
    return int(data.reshape(-1)[0])


def _patch_lang_tensor(tensor, scope) -> None:
    _triton_patch_lang_tensor(tensor, scope)
    scope.set_attr(tensor, "__index__", _scalar_index)


_triton_convert_float = interpreter._convert_float
_triton_patch_lang_tensor = interpreter._patch_lang_tensor


def install() -> None:
    """Patch the interpreter for this process (idempotent)."""
    interpreter._convert_float = _convert_float
    interpreter._patch_lang_tensor = _patch_lang_tensor
