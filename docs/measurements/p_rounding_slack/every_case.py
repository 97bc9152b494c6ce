"""Every case of test_kernel_matches_emulation_on_the_same_quantized_inputs over seeds [first, last): the
interpreted kernel's rel-L2 from its emulation, the P-rounding slack's rel-L2, and what is left of the
kernel's error once each element's slack is taken off. One JSON line per run. Usage (repository root,
TRITON_INTERPRET=1, PYTHONPATH=.): ``python every_case.py <first> <last> [recipe,recipe,...]``."""
import json
import sys

import torch

from fp8attn.metrics import compare
from fp8attn.recipe import RECIPES
from tests.test_attention_kernel import _run

seeds = range(int(sys.argv[1]), int(sys.argv[2]))
names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(RECIPES)
for shape in [(1, 2, 2, 130, 257, 64), (1, 2, 1, 257, 130, 128), (1, 1, 1, 64, 64, 256)]:
    for causal in (False, True):
        for name in names:
            for seed in seeds:
                run = _run("cpu", torch.Generator().manual_seed(seed), shape, causal, recipe=RECIPES[name])
                print(json.dumps(dict(shape=shape, causal=causal, recipe=name, seed=seed,
                                      rel_l2=compare(run.out, run.want).rel_l2,
                                      slack=(run.slack.norm() / run.want.norm()).item(),
                                      beyond=run.distance_beyond_p_rounding())), flush=True)
