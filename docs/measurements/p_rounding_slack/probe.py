"""Per seed: kernel-vs-emulation rel-L2 and the number of P entries near an E4M3 rounding midpoint."""
import sys, time, math
import torch
from tests.test_attention_kernel import _run
from fp8attn.recipe import RECIPES
from fp8attn.metrics import compare

shape = eval(sys.argv[1]); causal = sys.argv[2] == "True"; recipe = sys.argv[3]
n = int(sys.argv[4]); start = int(sys.argv[5]) if len(sys.argv) > 5 else 0
t0 = time.time()
for seed in range(start, start + n):
    g = torch.Generator().manual_seed(seed)
    out, lse, want, want_lse, _ = _run("cpu", g, shape, causal, recipe=RECIPES[recipe])
    r = compare(out, want).rel_l2
    print(f"{seed} {r:.6f}", flush=True)
print("time/run", (time.time() - t0) / n, file=sys.stderr)
