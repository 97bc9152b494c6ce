import sys, subprocess, tempfile, re, collections
import torch
sys.path.insert(0, sys.argv[1])
from fp8attn.kernel_report import compile_offline, _tool, key_loop_mix
from fp8attn.kernels.attention_fwd import forward_launch, forward_config
from fp8attn.quantize import allocate_quantized
from fp8attn.recipe import RECIPES
for rname in ("e4m3", "int8-hadamard-vsmooth"):
    recipe = RECIPES[rname]
    for d, s, c in ((64, 512, False), (64, 4096, True), (128, 512, True), (256, 1024, True)):
        qkv = allocate_quantized(2, 8, 8, s, s, d, recipe, "meta")
        out = torch.empty(2, 8, s, d, device="meta", dtype=torch.bfloat16); lse = torch.empty(2, 8, s, device="meta")
        cfg = forward_config(qkv.q.shape[-1], qkv.k_block, c, qk_int8=recipe.qk_format == "int8")
        launch = forward_launch(qkv, out, lse, causal=c, softmax_scale=d**-0.5, p_scale=recipe.p_multiplier, config=cfg)
        k = compile_offline(launch)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"]); f.flush()
            sass = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout
        loop = key_loop_mix(sass)
        print(rname, d, s, c, "loop", sum(loop.values()), "smem", k.metadata.shared, "regs", k.n_regs if hasattr(k, "n_regs") else "")
