"""The problems ``fp8attn bench`` measures (:class:`Shape`) and what it records (:class:`Record`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

SWEEP_HEAD_DIMS = (64, 128, 256)
SWEEP_SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
QUICK_HEAD_DIMS = (64, 128)
QUICK_SEQLENS = (1024, 8192)
DECODE_SEQLENS = (1024, 4096, 16384, 65536)
SWEEP_TOKENS = 16384
SWEEP_HIDDEN = 2048
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    suite: str = "custom"  # "sweep", "mission", "decode" or "custom"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def flops(self) -> int:
        return attention_flops(self.B, self.Hq, self.Sq, self.Sk, self.D, self.causal)

    def label(self) -> str:
        heads = f"H{self.Hq}" if self.Hq == self.Hkv else f"H{self.Hq}/{self.Hkv}"
        seqs = f"S{short_count(self.Sq)}" if self.Sq == self.Sk else f"S{short_count(self.Sq)}/{short_count(self.Sk)}"
        return f"B{self.B} {heads} {seqs} D{self.D} {'C' if self.causal else 'N'} {self.dtype}"


@dataclass(frozen=True, kw_only=True)
class Record(Shape):
    """One timing: a provider on a shape by a method. The shape's fields are the record's own, so the
    JSON file holds a flat list of these."""

    provider: str
    method: str
    median_ms: float
    tflops: float
    rel_l2: float | None = None  # vs sdpa-default's output; None when no reference could be computed
    finite: bool = True

    @property
    def shape(self) -> Shape:
        return Shape(**{f.name: getattr(self, f.name) for f in fields(Shape)})

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


def short_count(n: int) -> str:
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


def decode_shapes(dtype: str) -> list[Shape]:
    """Decoding with a KV cache: one query row for each of 32 query heads sharing 8 KV heads (GQA), D=128,
    against ``DECODE_SEQLENS`` keys, non-causal (the row sees the whole cache)."""
    return [Shape(1, 32, 8, 1, sk, 128, False, dtype, "decode") for sk in DECODE_SEQLENS]


def parse_shape(text: str) -> tuple[int, int, int, int, int, int]:
    """``"B,Hq,Hkv,Sq,Sk,D"`` → six positive ints (argparse type)."""
    parts = text.replace(" ", "").split(",")
    if len(parts) != 6 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"--shape wants six positive integers B,Hq,Hkv,Sq,Sk,D, got {text!r}")
    b, hq, hkv, sq, sk, d = (int(p) for p in parts)
    if hq % hkv:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: Hq ({hq}) must be a multiple of Hkv ({hkv})")
    return b, hq, hkv, sq, sk, d
