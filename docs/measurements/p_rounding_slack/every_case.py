"""Every case of test_kernel_matches_emulation_on_the_same_quantized_inputs over seeds: the kernel's
rel-L2 from the emulation, the P-rounding slack's, and the kernel's error beyond the slack."""
import json, sys
import torch
from tests.test_attention_kernel import _run
from tests.conftest import make_qkv
from fp8attn.recipe import RECIPES
from fp8attn.metrics import compare
from fp8attn.reference import quantize_emulated, p_rounding_slack
from fp8attn.kernels.attention_fwd import forward_config

seeds = range(int(sys.argv[1]), int(sys.argv[2]))
names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(RECIPES)
for shape in [(1, 2, 2, 130, 257, 64), (1, 2, 1, 257, 130, 128), (1, 1, 1, 64, 64, 256)]:
    for causal in (False, True):
        for name in names:
            recipe = RECIPES[name]
            for seed in seeds:
                g = torch.Generator().manual_seed(seed)
                out, _, want, _, _ = _run("cpu", g, shape, causal, recipe=recipe)
                g = torch.Generator().manual_seed(seed)
                q, k, v = make_qkv(g, shape)
                qkv = quantize_emulated(q, k, v, recipe)
                slack = p_rounding_slack(qkv, causal=causal, scale=shape[-1] ** -0.5, p_scale=recipe.p_multiplier,
                                         block_n=forward_config(qkv.q.shape[-1], qkv.k_block).block_n)
                err = out.double() - want
                print(json.dumps(dict(shape=shape, causal=causal, recipe=name, seed=seed,
                                      rel_l2=compare(out, want).rel_l2,
                                      slack=(slack.norm() / want.norm()).item(),
                                      beyond=((err.abs() - slack).clamp_min(0).norm() / want.norm()).item())),
                      flush=True)
