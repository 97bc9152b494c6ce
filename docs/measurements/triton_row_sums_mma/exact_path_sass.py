"""The Triton kernel's exact-LSE path (exact_lse=True) compiled offline for sm_90 from the tree at argv[1] (a
src directory): registers and one key-loop pass, which the row-sum change must leave as they were.
Usage: ``TRITON_INTERPRET=0 python exact_path_sass.py <src>``."""
import sys

sys.path.insert(0, sys.argv[1])
import torch

from fp8attn.kernel_report import compile_offline, report_launch
from fp8attn.kernels.attention_fwd import forward_launch
from fp8attn.quantize import allocate_quantized
from fp8attn.recipe import RECIPES

for name in ["e4m3", "int8-hadamard-vsmooth", "int8-fp16pv"]:
    for head_dim in (64, 128, 256):
        recipe = RECIPES[name]
        qkv = allocate_quantized(1, 8, 8, 512, 512, head_dim, recipe, "meta")
        out = torch.empty(1, 8, 512, head_dim, device="meta", dtype=torch.bfloat16)
        lse = torch.empty(1, 8, 512, device="meta")
        launch = forward_launch(qkv, out, lse, causal=False, softmax_scale=head_dim**-0.5,
                                p_scale=recipe.p_multiplier, exact_lse=True)
        report = report_launch(launch, f"{name} D{head_dim}", compiled=compile_offline(launch))
        print(f"{name} D{head_dim}: {report.registers} registers, {sum(report.loop.values())} instructions a pass",
              flush=True)
