"""Per seed: the interpreted Triton kernel's rel-L2 from its emulation on one case of
tests/test_attention_kernel.py. Usage (from the repository root, TRITON_INTERPRET=1, PYTHONPATH=.):

    python probe.py "(1,2,2,130,257,64)" False e4m3 <seeds> <first seed>
"""
import ast
import sys
import time

import torch

from fp8attn.metrics import compare
from fp8attn.recipe import RECIPES
from tests.test_attention_kernel import _run

shape = ast.literal_eval(sys.argv[1])
causal = sys.argv[2] == "True"
recipe = RECIPES[sys.argv[3]]
count, first = int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 0
start = time.time()
for seed in range(first, first + count):
    run = _run("cpu", torch.Generator().manual_seed(seed), shape, causal, recipe=recipe)
    print(f"{seed} {compare(run.out, run.want).rel_l2:.6f}", flush=True)
print("seconds per run", (time.time() - start) / count, file=sys.stderr)
