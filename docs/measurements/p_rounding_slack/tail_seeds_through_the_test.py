"""The probe's tail seeds through the test's own check (tests/test_attention_kernel.py). Usage (repository
root, TRITON_INTERPRET=1, PYTHONPATH=.): ``python tail_seeds_through_the_test.py``."""
import torch

from fp8attn.metrics import compare
from fp8attn.recipe import RECIPES
from tests.test_attention_kernel import KERNEL_VS_EMULATION, _run

for seed in (196, 2400, 2252, 0):
    run = _run("cpu", torch.Generator().manual_seed(seed), (1, 2, 2, 130, 257, 64), False, recipe=RECIPES["e4m3"])
    print(f"seed {seed}: rel-L2 {compare(run.out, run.want).rel_l2:.6f}, "
          f"beyond slack {run.distance_beyond_p_rounding():.6f} (bound {KERNEL_VS_EMULATION})")
