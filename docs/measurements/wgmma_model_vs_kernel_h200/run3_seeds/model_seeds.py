"""The body of test_hopper_kernel_accumulates_as_the_wgmma_model_says over several input seeds, printed."""
import dataclasses
import torch
from fp8attn.inputs import synthetic_qkv
from fp8attn.kernels.attention_fwd_hopper import hopper_forward_launch, hopper_softmax_keys
from fp8attn.metrics import compare
from fp8attn.quantize import quantize_qkv
from fp8attn.recipe import RECIPES
from fp8attn.reference import attention_emulated
from fp8attn.wgmma_accumulation import wgmma_pv, wgmma_qk

recipe = dataclasses.replace(RECIPES["e4m3"], smooth_v=False)
print("seed kind     D   to_exact  to_model  ratio  pass")
for seed in range(1, 9):
    for kind in ("v_mean", "randn"):
        for head_dim in (128, 256):
            gen = torch.Generator().manual_seed(seed)
            q, k, v = synthetic_qkv(kind, (1, 1, 1, 128, 4096, head_dim), gen, dtype=torch.bfloat16, device="cuda")
            qkv = quantize_qkv(q, k, v, recipe)
            out = torch.full(q.shape, float("nan"), device="cuda", dtype=torch.bfloat16)
            lse = torch.full(q.shape[:-1], float("nan"), device="cuda")
            scale = head_dim**-0.5
            launch = hopper_forward_launch(qkv, out, lse, causal=False, softmax_scale=scale,
                                           p_scale=recipe.p_multiplier, exact_lse=True)
            launch.run()
            kw = dict(causal=False, scale=scale, p_scale=recipe.p_multiplier,
                      block_n=hopper_softmax_keys(qkv.q.shape[-1], qkv.k_block))
            exact = attention_emulated(qkv, **kw)
            modelled = attention_emulated(qkv, pv_accumulate=wgmma_pv(promoted=launch.constexprs["PROMOTE"]),
                                          qk_product=wgmma_qk(), **kw)
            te = compare(out.double(), exact).rel_l2
            tm = compare(out.double(), modelled.to(torch.bfloat16).double()).rel_l2
            ok = tm <= min(0.5 * te, 0.004)
            print(f"{seed:4} {kind:8} {head_dim:3}  {te:.4f}    {tm:.4f}    {tm / te:.2f}  {ok}", flush=True)
