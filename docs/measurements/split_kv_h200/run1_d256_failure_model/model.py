"""Split-KV run 1's one failing case replayed on the CPU: how far the wgmma accumulation model (Q·Kᵀ in 13-bit-cut
instructions of 32 channels; P·V unpromoted at D=256, into the running accumulator) puts its emulation from the
exact one, beyond the P-rounding slack, beside the kernel's measured 0.0127. The inputs are drawn as the test drew
them (tests/conftest.py's ``gen``). Usage: ``PYTHONPATH=. python model.py``."""
import zlib

import torch

from fp8attn.kernels.attention_fwd import forward_config, split_keys
from fp8attn.recipe import RECIPES
from fp8attn.reference import attention_emulated, p_rounding_slack, quantize_emulated
from fp8attn.wgmma_accumulation import wgmma_pv, wgmma_qk
from tests.conftest import make_qkv

SEED = 2114735561  # docs/measurements/split_kv_h200/run1_without_hint/seed.txt
SHAPE, CAUSAL, SPLITS = (1, 2, 1, 5, 300, 256), False, 5
for recipe_name, kernel in [("e4m3-hadamard", 0.0127), ("e4m3", None), ("int8-hadamard-vsmooth", None)]:
    nodeid = ("tests/test_attention_kernel.py::test_split_keys_match_the_emulation_of_their_ranges"
              f"[cuda-{SHAPE}-{CAUSAL}-{SPLITS}-{recipe_name}]")
    g = torch.Generator()
    g.manual_seed(SEED ^ zlib.crc32(nodeid.encode()))
    q, k, v = make_qkv(g, SHAPE, dtype=torch.float16)
    recipe = RECIPES[recipe_name]
    qkv = quantize_emulated(q, k, v, recipe)
    block_n = forward_config(qkv.q.shape[-1], qkv.k_block).block_n
    kwargs = dict(causal=CAUSAL, scale=SHAPE[-1] ** -0.5, p_scale=recipe.p_multiplier, block_n=block_n,
                  key_split=split_keys(qkv.seqlen_k, block_n, SPLITS))
    exact_emulation = attention_emulated(qkv, **kwargs)
    slack = p_rounding_slack(qkv, **kwargs)
    qk = None if recipe.qk_format == "int8" else wgmma_qk()  # INT8 Q·Kᵀ accumulates exactly in int32
    model = attention_emulated(qkv, qk_product=qk, pv_accumulate=wgmma_pv(promoted=False), **kwargs)
    beyond = ((model - exact_emulation).abs() - slack).clamp_min(0).norm() / exact_emulation.norm()
    measured = f"kernel (GPU) {kernel:.4f}" if kernel is not None else "kernel passed"
    print(f"{recipe_name}: model vs exact emulation, beyond the P-rounding slack {beyond.item():.4f}; {measured}")
