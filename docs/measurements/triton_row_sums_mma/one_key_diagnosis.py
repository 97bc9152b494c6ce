"""Where the Triton kernel's tensor-core row sums go wrong on the GPU: the kernel alone, with exact_lse=False and
with exact_lse=True, against the emulation of the first's arithmetic (row sums of rounded P), rel-L2 over the rows
that see a key, for short key ranges, causal or not, by recipe. Each cell: ``Sq x Sk: rowsum-path/exact-path``.
Usage on a GPU machine, on the branch triton-row-sums-mma (main's ``attention_forward`` has no ``exact_lse``):
``PYTHONPATH=src:. python one_key_diagnosis.py`` (run as out/diag_int8.py; reformatted)."""
import dataclasses

import torch

from fp8attn.kernels.attention_fwd import attention_forward, forward_config
from fp8attn.metrics import compare
from fp8attn.recipe import RECIPES
from fp8attn.reference import attention_emulated, quantize_emulated

FIELDS = ("q", "k", "v_t", "q_scale", "k_scale", "v_scale", "v_mean")
torch.manual_seed(0)
for recipe in ["int8", "e4m3", "int8-hadamard-vsmooth"]:
    r = RECIPES[recipe]
    for causal in (True, False):
        row = []
        for sq, sk in [(1, 1), (1, 2), (1, 64), (1, 129), (64, 1), (64, 64), (130, 17), (200, 200)]:
            q = torch.randn(1, 4, sq, 64, dtype=torch.bfloat16)
            k = torch.randn(1, 2, sk, 64, dtype=torch.bfloat16)
            v = torch.randn(1, 2, sk, 64, dtype=torch.bfloat16)
            qkv = quantize_emulated(q, k, v, r)
            dev = dataclasses.replace(qkv, **{f: getattr(qkv, f).cuda() for f in FIELDS if getattr(qkv, f) is not None})
            kw = dict(causal=causal, scale=0.125, p_scale=r.p_multiplier)
            block_n = forward_config(64, qkv.k_block).block_n
            want = attention_emulated(qkv, row_sum_of_rounded_p=True, block_n=block_n, **kw)
            launch = dict(causal=causal, softmax_scale=0.125, p_scale=r.p_multiplier, out_dtype=torch.float32)
            o, _ = attention_forward(dev, exact_lse=False, **launch)
            o2, _ = attention_forward(dev, exact_lse=True, **launch)
            seen = want.abs().sum(-1) > 0
            row.append(f"{sq}x{sk}: {compare(o.cpu()[seen], want[seen]).rel_l2:.4f}"
                       f"/{compare(o2.cpu()[seen], want[seen]).rel_l2:.4f}")
        print(recipe, "causal" if causal else "full", "  ".join(row), flush=True)
