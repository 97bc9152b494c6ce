"""The Triton attention kernel with K/V loaded through TMA descriptors against the library's, same inputs."""
import importlib.util, sys
import torch, triton
from fp8attn.kernels import attention_fwd as lib
from fp8attn.quantize import quantize_qkv
from fp8attn.recipe import RECIPES

spec = importlib.util.spec_from_file_location("attention_fwd_tma", "out/tma/attention_fwd_tma.py")
tma = importlib.util.module_from_spec(spec); sys.modules["attention_fwd_tma"] = tma; spec.loader.exec_module(tma)
device = "cuda" if torch.cuda.is_available() else "cpu"
shapes = [(1, 2, 200, 64), (1, 2, 300, 128)] if device == "cpu" else \
    [(32, 32, 512, 64), (4, 32, 4096, 64), (1, 32, 16384, 64), (32, 16, 512, 128), (4, 16, 4096, 128), (1, 16, 16384, 128)]
recipes = sys.argv[1].split(",") if len(sys.argv) > 1 else ["int8-hadamard-vsmooth", "e4m3"]
for name in recipes:
    recipe = RECIPES[name]
    for b, h, s, d in shapes:
        for causal in (False, True):
            q, k, v = (torch.randn(b, h, s, d, device=device, dtype=torch.bfloat16) for _ in range(3))
            qkv = quantize_qkv(q, k, v, recipe)
            cfg = lib.forward_config(d, qkv.k_block, causal, pv_fp16=qkv.v_t.dtype == torch.float16,
                                     qk_int8=qkv.q.dtype == torch.int8)
            outs, times = [], []
            for mod in (lib, tma):
                out = torch.full((b, h, s, d), float("nan"), device=device, dtype=torch.bfloat16)
                lse = torch.full((b, h, s), float("nan"), device=device)
                launch = mod.forward_launch(qkv, out, lse, causal=causal, softmax_scale=d ** -0.5,
                                            p_scale=recipe.p_multiplier, config=cfg)
                launch.run()
                outs.append((out.clone(), lse.clone()))
                if device == "cuda":
                    times.append(triton.testing.do_bench(launch.run, warmup=25, rep=200, return_mode="median"))
            same = torch.equal(outs[0][0].view(torch.int16), outs[1][0].view(torch.int16)) and torch.equal(outs[0][1], outs[1][1])
            flops = 4 * b * h * s * s * d / (2 if causal else 1)
            t = " ".join(f"{x * 1e3:8.1f} us ({flops / x / 1e9:5.0f} TF)" for x in times)
            print(f"{name:22s} B{b} H{h} S{s} D{d} {'causal' if causal else 'full  '} same={same} pointer/tma: {t}"
                  + (f"  speedup {times[0] / times[1]:.3f}" if times else ""), flush=True)
