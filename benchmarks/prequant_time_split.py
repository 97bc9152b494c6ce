"""Where ``fp8attn.attention_prequantized``'s time goes: the layout launch against the attention kernel.

Prints ``triton.testing.do_bench`` medians (µs, L2 flushed) of the whole call, of the layout launch
alone (V transposed, padding, scales) and of the forward kernel alone, for FA3-sweep shapes.

Run on a GPU: ``python benchmarks/prequant_time_split.py``.
"""

from __future__ import annotations

import functools

import torch
import triton

import fp8attn
from fp8attn.fp8 import quantize_per_head
from fp8attn.kernels.attention_fwd import attention_forward
from fp8attn.kernels.prequantized_layout import PREQUANTIZED_LAYOUT, prequantized_layout

SHAPES = [(32, 16, 512, 128, False), (32, 16, 512, 128, True), (32, 32, 512, 64, False), (32, 8, 512, 256, True),
          (4, 16, 4096, 128, False), (1, 16, 16384, 128, False)]  # B, H, S, D, causal


def main() -> None:
    for b, h, s, d, causal in SHAPES:
        (q8, qd), (k8, kd), (v8, vd) = (
            quantize_per_head(torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16)) for _ in range(3))
        qkv, layout = prequantized_layout(q8, k8, v8, qd, kd, vd)
        layout.run()

        def forward(qkv=qkv, causal=causal, d=d):
            return attention_forward(qkv, causal=causal, softmax_scale=d**-0.5,
                                     p_scale=PREQUANTIZED_LAYOUT.p_multiplier, out_dtype=torch.bfloat16)

        whole = functools.partial(fp8attn.attention_prequantized, q8, k8, v8, qd, kd, vd, causal=causal,
                                  validate_descales=False)

        times = [triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median") * 1e3
                 for fn in (whole, layout.run, forward)]
        flops = 4 * b * h * s * s * d * (0.5 if causal else 1.0)
        print(f"B{b} H{h} S{s} D{d}{' causal' if causal else ''}: call {times[0]:7.1f} µs = layout {times[1]:6.1f}"
              f" + kernel {times[2]:7.1f}; kernel {flops / times[2] / 1e6:4.0f} TFLOP/s, call "
              f"{flops / times[0] / 1e6:4.0f}", flush=True)


if __name__ == "__main__":
    main()
