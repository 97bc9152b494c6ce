"""Why split programs run slower per tile: forward alone vs with the merge, per variant; --once runs each once (for ncu)."""
import sys, os
import torch
from fp8attn.bench.timing import TimingConfig, time_cuda_graph
from fp8attn.kernels.attention_fwd import forward_launch, split_forward_launches
from fp8attn.quantize import quantize_qkv
from fp8attn.recipe import RECIPES
once = "--once" in sys.argv
recipe = RECIPES["e4m3"]
cfg = TimingConfig(calls=20, repeats=10)
for b, hq, hkv, sk in [(1, 32, 8, 16384), (8, 32, 8, 4096)]:
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, hq, 1, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(b, hkv, sk, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    qkv = quantize_qkv(q, k, v, recipe)
    kw = dict(causal=False, softmax_scale=128**-0.5, p_scale=recipe.p_multiplier)
    out = torch.empty(q.shape, device="cuda", dtype=torch.bfloat16); lse = torch.empty(q.shape[:3], device="cuda")
    variants = {"library": [forward_launch(qkv, out, lse, **kw)]}
    for n in (2, 8):
        pl = torch.empty((n, b * hq, 1), device="cuda"); po = torch.empty((n, b * hq, 1, 128), device="cuda")
        ls = split_forward_launches(qkv, out, lse, po, pl, **kw)
        variants[f"split-{n}"] = ls
        variants[f"split-{n}-fwd"] = ls[:1]
        variants[f"split-{n}-merge"] = ls[1:]
    for name, launches in variants.items():
        def call(launches=launches):
            for launch in launches:
                launch.run()
        call(); torch.cuda.synchronize()
        if once:
            continue
        t = time_cuda_graph(call, cfg)
        print(f"PDL={os.environ.get('FP8ATTN_PROGRAMMATIC_LAUNCH', '1')} B{b} Sk{sk} {name:14s} graph {1e3 * t:8.1f} us", flush=True)
