"""How far P in fp32 lies from float64: the Triton kernel's exponent ``qk·c - (m - log2 448)`` recomputed
with PyTorch in fp32 (an addcmul, not the kernel's fused FMA) against float64, one tile holding all keys,
20 seeds of N(0, 1) inputs at the shape (1, 2, 2, 130, 257, 64). Usage: ``PYTHONPATH=. python p_noise.py``."""
import math

import torch

from fp8attn.recipe import RECIPES
from fp8attn.reference import quantize_emulated
from tests.conftest import make_qkv

LOG2_E = math.log2(math.e)
for name in ["e4m3", "int8-hadamard-vsmooth"]:
    worst = largest_score = 0.0
    for seed in range(20):
        q, k, v = make_qkv(torch.Generator().manual_seed(seed), (1, 2, 2, 130, 257, 64))
        qkv = quantize_emulated(q, k, v, RECIPES[name])
        q_scale = qkv.q_scale.repeat_interleave(qkv.q_block, -1)[..., :130]
        k_scale = qkv.k_scale.repeat_interleave(qkv.k_block, -1)[..., :257]
        scale = 64**-0.5
        raw32 = qkv.q.float() @ qkv.k.float()[:, :, :257].transpose(-1, -2)
        raw64 = qkv.q.double() @ qkv.k.double()[:, :, :257].transpose(-1, -2)
        row_factor = q_scale.float() * torch.tensor(scale * LOG2_E, dtype=torch.float32)
        c32 = row_factor[..., None] * k_scale.float()[..., None, :]
        s64 = raw64 * (q_scale.double() * scale * LOG2_E)[..., None] * k_scale.double()[..., None, :]
        m32 = (raw32 * c32).amax(-1, keepdim=True)
        p32 = torch.exp2(torch.addcmul(-(m32 - math.log2(448.0)), raw32, c32)).double()
        p64 = torch.exp2(s64 - s64.amax(-1, keepdim=True)) * 448
        worst = max(worst, ((p32 - p64).abs() / p64)[p64 > 1e-3].max().item())
        largest_score = max(largest_score, s64.abs().max().item())
    print(f"{name}: P in fp32 at most {worst:.3g} (2^{math.log2(worst):.1f}) from float64, relative; "
          f"largest |s| {largest_score:.2f}")
