"""The float→E4M3 cast inside kernels matches torch's (round to nearest even, saturate at ±448), and so
does the fp32→bf16 cast of the kernels' outputs (round to nearest even).

On the CPU this pins fp8attn's fix of Triton's interpreter; on a GPU it pins the hardware cast
against the same definition (fp8attn.fp8.to_e4m3, torch's bf16 cast) the emulation uses.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import given, settings
from hypothesis import strategies as st

from fp8attn.fp8 import E4M3, E4M3_MAX, to_e4m3
from tests.conftest import INTERPRETED


@triton.jit
def _cast_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(out_ptr + offs, x.to(tl.float8e4nv), mask=offs < n)


def _kernel_cast(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=E4M3, device=x.device)
    _cast_kernel[(triton.cdiv(x.numel(), 1024),)](x, out, x.numel(), BLOCK=1024)
    return out


def _all_codes() -> torch.Tensor:
    """The 254 non-NaN E4M3 values as float64."""
    values = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(E4M3).double()
    return values[~values.isnan()]


def _boundary_inputs(dtype: torch.dtype) -> torch.Tensor:
    """Every E4M3 value, every midpoint between neighbours (ties), the source type's neighbours of each
    midpoint, values past ±448 and the infinities: all representable in ``dtype``."""
    codes = _all_codes().unique()
    mids = (codes[1:] + codes[:-1]) / 2
    mids_src = mids.to(dtype)
    assert torch.equal(mids_src.double(), mids), "every E4M3 midpoint is representable in fp16/bf16/fp32"
    up = torch.nextafter(mids_src.float(), torch.tensor(float("inf"))).to(dtype)
    down = torch.nextafter(mids_src.float(), torch.tensor(float("-inf"))).to(dtype)
    if dtype != torch.float32:  # nextafter in fp32 rounds back to the midpoint in 16-bit types: step their own ulp
        ulp = (mids_src.abs().float() * torch.finfo(dtype).eps).clamp_min(torch.finfo(dtype).smallest_normal)
        up, down = (mids_src.float() + ulp / 2).to(dtype), (mids_src.float() - ulp / 2).to(dtype)
    beyond = torch.tensor([449.0, 463.0, 464.0, 465.0, 480.0, 1e4, 6e4, float("inf"), -125.66, 125.66])
    extra = torch.cat([beyond, -beyond])
    return torch.cat([codes.to(dtype), mids_src, up, down, extra.to(dtype)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernel_cast_matches_torch_on_every_boundary(device, dtype):
    x = _boundary_inputs(dtype).to(device)
    got = _kernel_cast(x).cpu()
    want = to_e4m3(x.cpu())
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), (
        f"mismatches at inputs {x.cpu()[got.view(torch.uint8) != want.view(torch.uint8)].tolist()[:8]}"
    )


def test_kernel_cast_maps_each_code_to_itself_and_nan_to_nan(device):
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(E4M3)
    got = _kernel_cast(codes.float().to(device)).cpu()
    nan = codes.float().isnan()
    assert torch.equal(got.view(torch.uint8)[~nan], codes.view(torch.uint8)[~nan])
    assert got.float()[nan].isnan().all()


def test_saturation_reaches_exactly_448(device):
    x = torch.tensor([448.0, 1e30, float("inf")], device=device)
    got = _kernel_cast(torch.cat([x, -x])).cpu().float()
    assert got.tolist() == [E4M3_MAX] * 3 + [-E4M3_MAX] * 3


@pytest.mark.skipif(not INTERPRETED, reason="documents the Triton interpreter's own cast, which only the CPU uses")
def test_triton_interpreter_cast_is_wrong_without_the_fix():
    """If this starts failing, Triton fixed its interpreter (triton-lang/triton#8322) and the patch can go."""
    import numpy as np

    from fp8attn import _interpreter

    bits = _interpreter._triton_convert_float(np.array([-125.66], dtype=np.float32), tl.float32, tl.float8e4nv,
                                               _interpreter.interpreter._ir.ROUNDING_MODE.RTNE)
    assert torch.from_numpy(bits.astype(np.uint8)).view(E4M3).float().item() == -64.0


@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=256))
@settings(max_examples=40, deadline=None)
def test_kernel_cast_matches_torch_on_arbitrary_floats(values):
    device = "cpu" if INTERPRETED else "cuda"
    x = torch.tensor(values, dtype=torch.float32, device=device)
    assert torch.equal(_kernel_cast(x).cpu().view(torch.uint8), to_e4m3(x.cpu()).view(torch.uint8))


@triton.jit
def _bf16_cast_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(out_ptr + offs, x.to(tl.bfloat16), mask=offs < n)


def test_kernel_bf16_cast_rounds_to_nearest_even(device, gen):
    """Random fp32 values, every bf16 midpoint (ties: to even) and its fp32 neighbours: as torch rounds."""
    x = torch.randn(4096, generator=gen) * 10
    codes = torch.randn(512, generator=gen).to(torch.bfloat16)
    above = torch.nextafter(codes, torch.tensor(float("inf"), dtype=torch.bfloat16))
    mids = (codes.float() + above.float()) / 2
    inf, zero = torch.tensor(float("inf")), torch.tensor(0.0)
    x = torch.cat([x, mids, torch.nextafter(mids, inf), torch.nextafter(mids, zero)])
    out = torch.empty(x.shape, dtype=torch.bfloat16, device=device)
    _bf16_cast_kernel[(triton.cdiv(x.numel(), 1024),)](x.to(device), out, x.numel(), BLOCK=1024)
    assert torch.equal(out.cpu(), x.to(torch.bfloat16))


@pytest.mark.skipif(not INTERPRETED, reason="documents the Triton interpreter's own cast, which only the CPU uses")
def test_triton_interpreter_bf16_cast_truncates_without_the_fix():
    """If this starts failing, Triton's interpreter rounds fp32→bf16 itself and that part of the patch can go."""
    import numpy as np

    from fp8attn import _interpreter

    x = np.array([1.0 + 3 * 2.0**-9], dtype=np.float32)  # 1 + 0.75 ulp: nearest bf16 1 + 2**-7, truncated 1.0
    bits = _interpreter._triton_convert_float(x, tl.float32, tl.bfloat16, None)
    assert torch.from_numpy(bits.astype(np.int16)).view(torch.bfloat16).float().item() == 1.0
