"""One forward launch on Vᵀ, then the same on V's rows (B1 H32/8 Sq1 Sk16k D128, e4m3 per head), for Nsight Compute."""
import sys

import torch

sys.path.insert(0, "benchmarks")
from v_rows_study import reading_v_rows  # noqa: E402

from fp8attn.api import _prequantized_launches  # noqa: E402
from fp8attn.fp8 import quantize_per_head  # noqa: E402

g = torch.Generator(device="cuda").manual_seed(0)
q = torch.randn(1, 32, 1, 128, device="cuda", dtype=torch.bfloat16, generator=g)
k, v = (torch.randn(1, 8, 16384, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
(q8, qd), (k8, kd), (v8, vd) = (quantize_per_head(x) for x in (q, k, v))
_, _, (layout, forward, merge), _ = _prequantized_launches(q8, k8, v8, qd, kd, vd, None, False, 128**-0.5,
                                                           torch.bfloat16, False)
layout.run()
forward.run()
reading_v_rows(forward, v8).run()
torch.cuda.synchronize()
print("ran")
