"""Bad input gets a clear exception naming the argument, what was expected and what came."""

from __future__ import annotations

import pytest
import torch

import fp8attn
from fp8attn.fp8 import E4M3
from tests.conftest import INTERPRETED

DEVICE = "cpu" if INTERPRETED else "cuda"  # where valid inputs would run: errors must come from the argument


def _qkv(shape_q=(1, 2, 8, 64), shape_kv=(1, 2, 8, 64), dtype=torch.float16):
    return tuple(torch.randn(s).to(device=DEVICE, dtype=dtype) for s in (shape_q, shape_kv, shape_kv))


CASES = [
    # (description, call, exception, message pattern)
    ("q not a tensor", lambda q, k, v: fp8attn.attention(q.tolist(), k, v), TypeError,
     "q must be a torch.Tensor, got list"),
    ("float32 q", lambda q, k, v: fp8attn.attention(q.float(), k, v), TypeError,
     r"q must have dtype torch.float16 or torch.bfloat16, got torch.float32"),
    ("mixed dtypes", lambda q, k, v: fp8attn.attention(q, k.bfloat16(), v), TypeError,
     "q, k and v must share one dtype, got torch.float16, torch.bfloat16 and torch.float16"),
    ("rank 3 k", lambda q, k, v: fp8attn.attention(q, k[0], v), ValueError,
     r"k must have 4 dimensions \(batch, heads, seqlen, head_dim\), got shape \(2, 8, 64\)"),
    ("k and v shapes differ", lambda q, k, v: fp8attn.attention(q, k, v[:, :, :5]), ValueError,
     r"k and v must have the same shape, got k \(1, 2, 8, 64\) and v \(1, 2, 5, 64\)"),
    ("batch mismatch", lambda q, k, v: fp8attn.attention(q.expand(2, -1, -1, -1), k, v), ValueError,
     "q and k must have the same batch size, got q 2 and k 1"),
    ("head dim mismatch", lambda q, k, v: fp8attn.attention(q[..., :32], k, v), ValueError,
     "q and k must have the same head_dim, got q 32 and k 64"),
    ("Hq not a multiple of Hkv", lambda q, k, v: fp8attn.attention(q[:, :1].expand(1, 3, 8, 64), k, v), ValueError,
     "q's head count must be a multiple of k's .* got 3 and 2"),
    ("empty sequence", lambda q, k, v: fp8attn.attention(q, k[:, :, :0], v[:, :, :0]), ValueError,
     "k seqlen must be at least 1, got 0"),
    ("head dim 300", lambda q, k, v: fp8attn.attention(*_qkv((1, 1, 4, 300), (1, 1, 4, 300))),
     NotImplementedError, "head_dim must be a multiple of 8 from 8 to 256, got 300"),
    ("head dim 20", lambda q, k, v: fp8attn.attention(*_qkv((1, 1, 4, 20), (1, 1, 4, 20))),
     NotImplementedError, "head_dim must be a multiple of 8 from 8 to 256, got 20"),
    ("nan scale", lambda q, k, v: fp8attn.attention(q, k, v, scale=float("nan")), ValueError,
     "scale must be finite, got nan"),
    ("inf scale", lambda q, k, v: fp8attn.attention(q, k, v, scale=float("inf")), ValueError,
     "scale must be finite, got inf"),
    ("zero scale", lambda q, k, v: fp8attn.attention(q, k, v, scale=0.0), ValueError,
     "scale must be positive .* got 0.0"),
    ("negative scale", lambda q, k, v: fp8attn.attention_prequantized(
        q.to(E4M3), k.to(E4M3), v.to(E4M3), 1.0, 1.0, 1.0, scale=-0.1), ValueError,
     "scale must be positive .* got -0.1"),
    ("string scale", lambda q, k, v: fp8attn.attention(q, k, v, scale="0.1"), TypeError,
     "scale must be a real number or None, got str"),
    ("causal not bool", lambda q, k, v: fp8attn.attention(q, k, v, causal=1), TypeError,
     "causal must be a bool, got int"),
    ("unknown recipe", lambda q, k, v: fp8attn.attention(q, k, v, recipe="int4"), ValueError,
     r"recipe must be one of \['e4m3', .*'int8'.*\] or a fp8attn.Recipe, got 'int4'"),
    ("padded layout past 32-bit indexing", lambda q, k, v: fp8attn.attention(
        *(torch.zeros(1, 1, 1, 136, device=DEVICE, dtype=torch.float16).expand(1, 8, 1_900_000, 136),) * 3),
     NotImplementedError, r"q padded to the kernel layout has 3891200000 elements; fp8attn indexes with 32 bits"),
    ("recipe of the wrong type", lambda q, k, v: fp8attn.attention(q, k, v, recipe=3), TypeError,
     r"recipe must be a name \(str\), a fp8attn.Recipe or None, got int"),
    ("meta device", lambda q, k, v: fp8attn.attention(q.to("meta"), k.to("meta"), v.to("meta")), ValueError,
     "q is on meta; fp8attn runs on CUDA GPUs"),
    ("devices differ", lambda q, k, v: fp8attn.attention(q, k.to("meta"), v), ValueError,
     f"k is on meta but q is on {DEVICE}"),
    ("prequantized given fp16", lambda q, k, v: fp8attn.attention_prequantized(q, k, v, 1.0, 1.0, 1.0), TypeError,
     "q must have dtype torch.float8_e4m3fn, got torch.float16"),
    ("negative descale", lambda q, k, v: fp8attn.attention_prequantized(
        *(x.to(torch.float8_e4m3fn) for x in (q, k, v)), 1.0, -1.0, 1.0), ValueError,
     r"k_descale must be finite and positive, got -1.0"),
    ("descale of the wrong shape", lambda q, k, v: fp8attn.attention_prequantized(
        *(x.to(torch.float8_e4m3fn) for x in (q, k, v)), torch.ones(3), 1.0, 1.0), ValueError,
     r"q_descale must have shape \(\), \(1,\) or \(batch, heads\) = \(1, 2\), got \(3,\)"),
    ("float64 descale", lambda q, k, v: fp8attn.attention_prequantized(
        *(x.to(torch.float8_e4m3fn) for x in (q, k, v)), torch.ones((), dtype=torch.float64), 1.0, 1.0), TypeError,
     "q_descale must be float32, got torch.float64"),
    ("nan descale tensor", lambda q, k, v: fp8attn.attention_prequantized(
        *(x.to(torch.float8_e4m3fn) for x in (q, k, v)), 1.0, 1.0, torch.full((1, 2), float("nan"), device=DEVICE)),
     ValueError, r"v_descale must be finite and positive, got \[nan, nan\]"),
    ("v_mean of the wrong shape", lambda q, k, v: fp8attn.attention_prequantized(
        *(x.to(torch.float8_e4m3fn) for x in (q, k, v)), 1.0, 1.0, 1.0, v_mean=torch.zeros(1, 2, 8, device=DEVICE)),
     ValueError, r"v_mean must have shape \(batch, kv_heads, head_dim\) = \(1, 2, 64\), got \(1, 2, 8\)"),
    ("bf16 v_mean", lambda q, k, v: fp8attn.attention_prequantized(
        *(x.to(torch.float8_e4m3fn) for x in (q, k, v)), 1.0, 1.0, 1.0,
        v_mean=torch.zeros(1, 2, 64, device=DEVICE, dtype=torch.bfloat16)),
     TypeError, "v_mean must be float32, got torch.bfloat16"),
    ("v_mean as a list", lambda q, k, v: fp8attn.attention_prequantized(
        *(x.to(torch.float8_e4m3fn) for x in (q, k, v)), 1.0, 1.0, 1.0, v_mean=[0.0] * 64),
     TypeError, "v_mean must be a float32 tensor or None, got list"),
    ("v_mean on another device", lambda q, k, v: fp8attn.attention_prequantized(
        *(x.to(torch.float8_e4m3fn) for x in (q, k, v)), 1.0, 1.0, 1.0, v_mean=torch.zeros(1, 2, 64, device="meta")),
     ValueError, f"v_mean must be on q's device {DEVICE}(:0)?, got meta"),
    ("float32 out_dtype", lambda q, k, v: fp8attn.attention_prequantized(
        *(x.to(torch.float8_e4m3fn) for x in (q, k, v)), 1.0, 1.0, 1.0, out_dtype=torch.float32), TypeError,
     "out_dtype must be torch.float16 or torch.bfloat16, got torch.float32"),
]


@pytest.mark.parametrize(("call", "exc", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(call, exc, pattern):
    q, k, v = _qkv()
    with pytest.raises(exc, match=pattern):
        call(q, k, v)


def test_bad_recipe_fields_are_rejected():
    with pytest.raises(ValueError, match=r"Recipe\.k_block must be a power of two >= 16, got 100"):
        fp8attn.Recipe(name="x", k_block=100)
    with pytest.raises(ValueError, match=r"Recipe\.q_block must be a power of two from 1 to 128, got 256"):
        fp8attn.Recipe(name="x", q_block=256)
    with pytest.raises(ValueError, match=r"Recipe\.qk_format must be one of \('e4m3', 'int8'\), got 'int4'"):
        fp8attn.Recipe(name="x", qk_format="int4")
    with pytest.raises(ValueError, match=r"Recipe\.pv_format must be one of \('e4m3', 'fp16'\), got 'bf16'"):
        fp8attn.Recipe(name="x", pv_format="bf16")
    with pytest.raises(ValueError, match=r"Recipe.p_scale must lie in \(0, 448.0\], got 500"):
        fp8attn.Recipe(name="x", p_scale=500)
