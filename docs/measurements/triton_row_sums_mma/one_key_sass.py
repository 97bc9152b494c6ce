"""SASS of the Triton kernel for Sq = Sk = 1 (D=64, int8 recipe, causal): the specialized variant Triton 3.6
compiled before do_not_specialize, and the runtime-length one it compiles now: counts of F2FP instructions and
of those with MERGE_C (whose fourth operand supplies the other half of the packed word), the first of these
and the last writes of the registers they merge from. Usage: ``TRITON_INTERPRET=0 python one_key_sass.py``."""
import re
import subprocess
import tempfile

import torch

from fp8attn import kernel_report
from fp8attn.kernels.attention_fwd import forward_launch
from fp8attn.quantize import allocate_quantized
from fp8attn.recipe import RECIPES

r = RECIPES["int8"]
qkv = allocate_quantized(1, 2, 2, 1, 1, 64, r, "meta")
out = torch.empty(1, 2, 1, 64, device="meta", dtype=torch.bfloat16)
lse = torch.empty(1, 2, 1, device="meta")
launch = forward_launch(qkv, out, lse, causal=True, softmax_scale=0.125, p_scale=r.p_multiplier)
for label, params in [("runtime lengths", None), ("seqlen_q, seqlen_k as the constant 1", [])]:
    if params is not None:
        for p in launch.kernel.params:
            if p.name in ("seqlen_q", "seqlen_k"):
                p.do_not_specialize = False
    c = kernel_report.compile_offline(launch)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(c.asm["cubin"])
        f.flush()
        dump = subprocess.run([kernel_report._tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True)
    sass = dump.stdout
    f2fp = [line for line in sass.splitlines() if "F2FP" in line]
    merge = [line for line in f2fp if "MERGE_C" in line]
    print(f"{label}: {len(sass.splitlines())} SASS lines, F2FP {len(f2fp)}, with MERGE_C {len(merge)}")
    lines = sass.splitlines()
    for line in merge[:4]:
        print("   ", re.sub(r"/\\* 0x[0-9a-f]+ \\*/", "", line).strip())
        merged_from = line.split(",")[-1].strip(" ;").split()[0].split(".")[0]
        if merged_from != "RZ":
            at = lines.index(line)
            writes = [w for w in lines[:at] if re.search(rf"^\s*/\*[0-9a-f]+\*/\s+(@\S+\s+)?\S+\s+{merged_from}\b", w)]
            print("        last write of", merged_from, ":", re.sub(r"/\\* 0x[0-9a-f]+ \\*/", "", writes[-1]).strip()
                  if writes else "none before it")
