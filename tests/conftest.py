"""Shared fixtures: devices, fresh random inputs, poisoned allocations."""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # Triton reads this when it is first imported: before any test module imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from triton import knobs

import fp8attn  # noqa: F401
from fp8attn.inputs import synthetic_qkv

ROOT = Path(__file__).resolve().parents[1]
SESSION_SEED = int(os.environ.get("FP8ATTN_SEED", random.SystemRandom().randrange(2**31)))
HAS_CUDA = torch.cuda.is_available()
INTERPRETED = bool(knobs.runtime.interpret)
_SEED_LINE = f"inputs drawn with FP8ATTN_SEED={SESSION_SEED} (set it to replay a run)"


def pytest_report_header(config):
    mode = "Triton interpreter (CPU)" if INTERPRETED else f"GPU: {torch.cuda.get_device_name()}" if HAS_CUDA else "?"
    return [f"fp8attn tests: {mode}; {_SEED_LINE}"]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The seed again at the end, where ``-q`` (which drops the header) still shows it: a failure's
    inputs can then be drawn again. Under pytest-xdist set FP8ATTN_SEED: each worker draws its own."""
    terminalreporter.write_line(_SEED_LINE)


def _device_params():
    return [
        pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRETED, reason="CPU tensors need TRITON_INTERPRET=1")),
        pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA or INTERPRETED,
                                                                          reason="no CUDA GPU (compiled-kernel run)")]),
    ]


@pytest.fixture(params=_device_params())
def device(request) -> str:
    """Every kernel test runs on the CPU through the interpreter and on the GPU where there is one."""
    return request.param


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded from the session seed and the test's id: fresh inputs every run, replayable."""
    g = torch.Generator()
    g.manual_seed(SESSION_SEED ^ zlib.crc32(request.node.nodeid.encode()))
    return g


def make_qkv(gen, shape, *, dtype=torch.float16, device="cpu", kind="randn"):
    """Random ``q (B, Hq, Sq, D)``, ``k, v (B, Hkv, Sk, D)``: see :func:`fp8attn.inputs.synthetic_qkv`."""
    return synthetic_qkv(kind, shape, gen, dtype=dtype, device=device)


@pytest.fixture
def poisoned_allocations(monkeypatch):
    """Make torch.empty/empty_like return NaN-filled tensors, so elements a kernel fails to write show up."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t: torch.Tensor) -> torch.Tensor:
        if t.dtype.is_floating_point:
            t.fill_(float("nan"))
        else:
            t.fill_(-1)
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(real_empty_like(*a, **kw)))
