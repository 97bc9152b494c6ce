import math, torch
from tests.conftest import make_qkv
from fp8attn.recipe import RECIPES
from fp8attn.reference import quantize_emulated, _repeat_kv
# the Triton kernel's exponent in fp32 vs float64, non-causal, one tile = all keys (the max is the row's)
for name in ["e4m3", "int8-hadamard-vsmooth"] if "int8-hadamard-vsmooth" in RECIPES else ["e4m3"]:
  worst = 0
  for seed in range(20):
    for kind in ["randn"]:
        g = torch.Generator().manual_seed(seed)
        shape = (1, 2, 2, 130, 257, 64)
        q, k, v = make_qkv(g, shape)
        qkv = quantize_emulated(q, k, v, RECIPES[name])
        qs = qkv.q_scale.repeat_interleave(qkv.q_block, -1)[..., :130]
        ks = qkv.k_scale.repeat_interleave(qkv.k_block, -1)[..., :257]
        scale = 64**-0.5
        raw32 = (qkv.q.float() @ qkv.k.float()[:, :, :257].transpose(-1, -2))
        raw64 = (qkv.q.double() @ qkv.k.double()[:, :, :257].transpose(-1, -2))
        c32 = (qs.float() * torch.tensor(scale * math.log2(math.e), dtype=torch.float32))[..., None] * ks.float()[..., None, :]
        s64 = raw64 * (qs.double() * scale * math.log2(math.e))[..., None] * ks.double()[..., None, :]
        m64 = s64.amax(-1, keepdim=True); m32 = (raw32 * c32).amax(-1, keepdim=True)
        L = math.log2(448.0)
        x32 = torch.addcmul(-(m32 - L), raw32, c32)   # not a true FMA, close enough for magnitude
        p32 = torch.exp2(x32).double(); p64 = torch.exp2(s64 - m64) * 448
        rel = ((p32 - p64).abs() / p64)[p64 > 1e-3]
        worst = max(worst, rel.max().item())
  print(name, "max relative P noise fp32 vs f64", worst, "=2^", math.log2(worst), "max |s|", s64.abs().max().item())
