"""fp8attn.PrequantizedKVCache: an E4M3 KV cache kept in the kernel layout across calls."""

from __future__ import annotations

import itertools

import pytest
import torch

import fp8attn
from fp8attn.fp8 import E4M3, quantize_per_head
from fp8attn.kernels.attention_fwd import forward_config, key_count_arguments, planned_key_splits
from fp8attn.kernels.prequantized_layout import PREQUANTIZED_LAYOUT
from fp8attn.kv_cache import _key_split_step
from fp8attn.reference import prequantized_layout_emulated
from tests.conftest import HAS_CUDA, INTERPRETED, make_qkv

# (B, Hq, Hkv, D), the token counts appended one after another, the query rows, causal, V's mean subtracted.
CASES = [
    ((1, 8, 2, 128), (1000, 1, 299), 1, False, False),  # decoding: grouped heads packed, the keys split
    ((2, 4, 4, 96), (70, 60), 5, True, True),           # D padded to 128 (Q copied), V's mean added back
    ((1, 2, 1, 64), (33,), 40, True, False),             # causal with Sq > Sk: rows that see no key
]


def _filled_cache(gen, device, case):
    """The cache after each append, with the whole sequence's quantized inputs for reference calls."""
    (b, hq, hkv, d), chunks, sq, _, with_mean = case
    q, k, v = make_qkv(gen, (b, hq, hkv, sq, sum(chunks), d), device=device,
                       kind="v_mean" if with_mean else "randn")
    mean = v.float().mean(dim=2) if with_mean else None
    (q8, qd), (k8, kd), (v8, vd) = (quantize_per_head(x) for x in (q, k, v if mean is None else v - mean[:, :, None]))
    cache = fp8attn.PrequantizedKVCache(b, hkv, d, sum(chunks) + 5, kd, vd, v_mean=mean, device=device)
    start = 0
    for tokens in chunks:
        cache.append(k8[:, :, start:start + tokens], v8[:, :, start:start + tokens])
        start += tokens
        yield cache, (q8, k8[:, :, :start], v8[:, :, :start], qd, kd, vd), mean


@pytest.mark.parametrize("case", CASES, ids=str)
def test_cache_attention_is_attention_prequantized_on_the_cached_tokens(device, gen, poisoned_allocations, case):
    """After every append the cache's call writes what attention_prequantized writes on the tokens so far,
    bit for bit: the same layout values, split plan and kernel."""
    causal = case[3]
    for cache, (q8, k8, v8, qd, kd, vd), mean in _filled_cache(gen, device, case):
        out, lse = cache.attention(q8, qd, causal=causal, out_dtype=torch.float16, return_lse=True)
        want, want_lse = fp8attn.attention_prequantized(q8, k8, v8, qd, kd, vd, v_mean=mean, causal=causal,
                                                        out_dtype=torch.float16, return_lse=True)
        assert out.isfinite().all(), "NaN-poisoned elements left unwritten"
        assert torch.equal(out, want), f"after {cache.length} tokens: {(out - want).abs().max().item():.3g} apart"
        assert torch.equal(lse, want_lse)


@pytest.mark.parametrize("case", CASES[:2], ids=str)
def test_cache_holds_the_kernel_layout_of_its_tokens(device, gen, case):
    """K and Vᵀ (keys in P·V operand order) as prequantized_layout_emulated lays the same tokens out, zeros after."""
    for cache, (q8, k8, v8, qd, kd, vd), mean in _filled_cache(gen, device, case):
        layout = prequantized_layout_emulated(*(x.cpu() for x in (q8, k8, v8, qd, kd, vd)),
                                              *(() if mean is None else (mean.cpu(),)))
        keys = layout.k.shape[2]  # the tokens so far, rounded up to 128
        assert torch.equal(cache.k[:, :, :keys].cpu().view(torch.uint8), layout.k.view(torch.uint8))
        assert torch.equal(cache.v_t[..., :keys].cpu().view(torch.uint8), layout.v_t.view(torch.uint8))
        assert not cache.k[:, :, keys:].view(torch.uint8).any() and not cache.v_t[..., keys:].view(torch.uint8).any()
        assert torch.equal(cache.k_scale[..., :keys // 128].cpu(), layout.k_scale)
        assert torch.equal(cache.v_scale.cpu(), layout.v_scale)


def test_append_takes_any_strides(device, gen):
    """K and V whose channels are not contiguous (a transposed copy seen through a transpose) land as contiguous
    ones do."""
    _, k, v = make_qkv(gen, (1, 2, 2, 1, 70, 64), device=device)
    (k8, kd), (v8, vd) = quantize_per_head(k), quantize_per_head(v)
    strided = [x.transpose(2, 3).contiguous().transpose(2, 3) for x in (k8, v8)]
    assert strided[0].stride(-1) != 1
    caches = [fp8attn.PrequantizedKVCache(1, 2, 64, 80, kd, vd, device=device) for _ in range(2)]
    caches[0].append(k8, v8)
    caches[1].append(*strided)
    for name in ("k", "v_t"):
        assert torch.equal(getattr(caches[0], name).view(torch.uint8), getattr(caches[1], name).view(torch.uint8))


def test_cache_rejects_bad_input_naming_the_argument(device):
    e4m3 = torch.zeros(1, 2, 3, 64, dtype=E4M3, device=device)
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        fp8attn.PrequantizedKVCache(1, 2, 64, 0, 1.0, 1.0, device=device)
    with pytest.raises(NotImplementedError, match="head_dim must be a multiple of 8"):
        fp8attn.PrequantizedKVCache(1, 2, 60, 16, 1.0, 1.0, device=device)
    with pytest.raises(ValueError, match="device must name a CUDA device or the CPU, got 'gpu0'"):
        fp8attn.PrequantizedKVCache(1, 2, 64, 16, 1.0, 1.0, device="gpu0")
    with pytest.raises(ValueError, match="k_descale must have shape"):
        fp8attn.PrequantizedKVCache(1, 2, 64, 16, torch.ones(2, 2), 1.0, device=device)
    cache = fp8attn.PrequantizedKVCache(1, 2, 64, 4, 1.0, 1.0, device=device)
    with pytest.raises(ValueError, match="the cache is empty"):
        cache.attention(torch.zeros(1, 2, 1, 64, dtype=E4M3, device=device), 1.0)
    with pytest.raises(TypeError, match="v must have dtype"):
        cache.append(e4m3, e4m3.float())
    with pytest.raises(ValueError, match=r"k must have shape .* got \(1, 2, 3, 32\)"):
        cache.append(e4m3[..., :32], e4m3[..., :32])
    cache.append(e4m3, e4m3)
    with pytest.raises(ValueError, match="at most 1 fit"):
        cache.append(e4m3, e4m3)
    assert cache.length == 3, "a rejected append must leave the cache as it was"
    with pytest.raises(ValueError, match="multiple of the cache's 2 KV heads"):
        cache.attention(torch.zeros(1, 3, 1, 64, dtype=E4M3, device=device), 1.0)
    with pytest.raises(TypeError, match="q must have dtype"):
        cache.attention(torch.zeros(1, 2, 1, 64, device=device), 1.0)
    with pytest.raises(ValueError, match="q_descale must have shape"):
        cache.attention(torch.zeros(1, 2, 1, 64, dtype=E4M3, device=device), torch.ones(3))
    with pytest.raises(ValueError, match=f"q is on meta but the cache is on {cache.k.device}"):
        cache.attention(torch.zeros(1, 2, 1, 64, dtype=E4M3, device="meta"), 1.0)


def test_cache_rejects_a_query_descale_that_is_not_finite_and_positive(device):
    cache = fp8attn.PrequantizedKVCache(1, 2, 64, 4, 1.0, 1.0, device=device)
    cache.append(*(torch.zeros(1, 2, 3, 64, dtype=E4M3, device=device) for _ in range(2)))
    q = torch.zeros(1, 2, 1, 64, dtype=E4M3, device=device)
    for bad in (float("nan"), 0.0, -1.0):
        with pytest.raises(ValueError, match="q_descale must be finite and positive"):
            cache.attention(q, torch.tensor(bad, device=device))


def test_reset_empties_the_cache_for_a_new_sequence(device, gen):
    """After reset the cache holds nothing (zeros, length 0) and a new sequence appended to it attends as a
    fresh cache does."""
    case = ((1, 4, 2, 64), (150,), 3, False, False)
    *_, (cache, (q8, k8, v8, qd, kd, vd), _) = _filled_cache(gen, device, case)
    cache.reset()
    assert cache.length == 0 and not cache.k.view(torch.uint8).any() and not cache.v_t.view(torch.uint8).any()
    cache.append(k8[:, :, :40], v8[:, :, :40])
    fresh = fp8attn.PrequantizedKVCache(1, 2, 64, 155, kd, vd, device=device)
    fresh.append(k8[:, :, :40], v8[:, :, :40])
    assert torch.equal(cache.attention(q8, qd), fresh.attention(q8, qd))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRETED, reason="no CUDA GPU (compiled-kernel run)")
@pytest.mark.parametrize(("d", "sq", "causal", "first", "last"), [
    (128, 1, False, 1400, 1415),  # decoding across a change of split count (11 → 12 key tiles)
    (64, 4, True, 1020, 1030),  # across SHORT_KEYS: 64-key tiles up to 1024 keys at D=64 under a causal mask
])
def test_eager_calls_replay_one_plan_per_split_count_and_tiles_as_the_cache_grows(gen, poisoned_allocations, d, sq,
                                                                                   causal, first, last):
    """Decoding token by token: the calls replay the plan recorded at the first length of each split count and
    tile configuration, with the new length, and write what attention_prequantized writes bit for bit. A replay
    that kept the recorded length would leave the new tokens out; one recorded with the other tiles would
    round P at other steps."""
    b, hq, hkv = 1, 8, 2
    q, k, v = make_qkv(gen, (b, hq, hkv, sq, last, d), device="cuda")
    (q8, qd), (k8, kd), (v8, vd) = (quantize_per_head(x) for x in (q, k, v))
    cache = fp8attn.PrequantizedKVCache(b, hkv, d, last, kd, vd)
    cache.append(k8[:, :, :first], v8[:, :, :first])
    for length in range(first, last + 1):
        if length > cache.length:
            cache.append(k8[:, :, length - 1:length], v8[:, :, length - 1:length])
        out = cache.attention(q8, qd, causal=causal, validate_descales=False)
        want = fp8attn.attention_prequantized(q8, k8[:, :, :length], v8[:, :, :length], qd, kd, vd, causal=causal)
        assert torch.equal(out, want), f"at {length} tokens: {(out - want).abs().max().item():.3g} apart"
    assert len(cache._append_plans) == 2, "appends of many tokens and of one: a plan each, the one-token plan replayed"
    (plans,) = cache._plans.values()
    steps = {(planned_key_splits(b, hq, hkv, sq, length, d, PREQUANTIZED_LAYOUT, causal, q8.device),
              forward_config(d, 128, causal, seqlen_k=length)) for length in range(first, last + 1)}
    assert len(steps) > 1, "the lengths should cross a change of split count or of tiles"
    assert set(plans) == steps, "one plan per split count and tiles, replayed at every other length"


@pytest.mark.parametrize("causal", [False, True])
def test_key_split_step_is_the_planned_split_and_its_key_counts(causal):
    """The memoized step arithmetic that eager cache calls replay with is what planning each call would give,
    at lengths that split into different counts, and cannot be changed by a caller (layers share it)."""
    device = torch.device("cpu")
    for head_dim, seqlen_k in itertools.product((64, 128), (1, 130, 1000, 4096, 65536)):
        (splits, cfg), counts = _key_split_step(1, 32, 8, 1, seqlen_k, head_dim, causal, device)
        assert splits == planned_key_splits(1, 32, 8, 1, seqlen_k, head_dim, PREQUANTIZED_LAYOUT, causal, device)
        assert cfg == forward_config(head_dim, 128, causal, seqlen_k=seqlen_k)  # the tiles a fresh call runs
        assert dict(counts) == key_count_arguments(seqlen_k, splits, cfg)
        with pytest.raises(TypeError):
            counts["seqlen_k"] = 0
    assert len({_key_split_step(1, 32, 8, 1, n, 128, causal, device)[0][0] for n in (1000, 4096, 65536)}) > 1
