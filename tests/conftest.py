"""Shared fixtures: devices, fresh random inputs, poisoned allocations."""

from __future__ import annotations

import os
import random
import zlib

import torch

if not torch.cuda.is_available():
    # Triton reads this when it is first imported: before any test module imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from triton import knobs

import fp8attn  # noqa: F401

SESSION_SEED = int(os.environ.get("FP8ATTN_SEED", random.SystemRandom().randrange(2**31)))
HAS_CUDA = torch.cuda.is_available()
INTERPRETED = bool(knobs.runtime.interpret)


def pytest_report_header(config):
    mode = "Triton interpreter (CPU)" if INTERPRETED else f"GPU: {torch.cuda.get_device_name()}" if HAS_CUDA else "?"
    return [f"fp8attn tests: {mode}; inputs drawn with FP8ATTN_SEED={SESSION_SEED} (set it to replay a run)"]


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
    """Random ``q (B, Hq, Sq, D)``, ``k, v (B, Hkv, Sk, D)`` drawn on the CPU, then moved to ``device``.

    ``kind``: "randn"; "k_offset" (K + 8·N(0, 1) per head and channel, as real LLM keys have);
    "outliers" (FA3's N(0, 1) + N(0, 100)·Bernoulli(0.001)); "sharp" (Q × 3).
    """
    batch, hq, hkv, sq, sk, d = shape
    q = torch.randn(batch, hq, sq, d, generator=gen)
    k = torch.randn(batch, hkv, sk, d, generator=gen)
    v = torch.randn(batch, hkv, sk, d, generator=gen)
    if kind == "k_offset":
        k = k + 8 * torch.randn(batch, hkv, 1, d, generator=gen)
    elif kind == "outliers":
        q, k, v = (x + 10 * torch.randn(x.shape, generator=gen) * (torch.rand(x.shape, generator=gen) < 1e-3)
                   for x in (q, k, v))
    elif kind == "sharp":
        q = 3 * q
    elif kind != "randn":
        raise ValueError(kind)
    return tuple(x.to(dtype=dtype, device=device) for x in (q, k, v))


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
