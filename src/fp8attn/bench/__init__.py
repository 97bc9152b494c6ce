"""Throughput and latency benchmark of fp8attn against its peers: the engine of ``fp8attn bench``.

Run ``python -m fp8attn.bench --help``. What it measures:

* **Providers** (one zero-argument callable each, built per shape; an unavailable one is skipped
  with a printed reason): ``fp8attn`` (fp16/bf16 in, quantization included), ``fp8attn-prequant``
  (E4M3 in, quantized once outside the timed region with per-(B, H) descales), ``fp8attn-cache`` (the
  same E4M3 K and V held in a :class:`fp8attn.PrequantizedKVCache`, filled outside the timed region, so a
  call lays out only Q), PyTorch SDPA pinned
  to one backend (``sdpa-flash``, ``sdpa-cudnn``, ``sdpa-efficient``) or left to choose
  (``sdpa-default``), cuDNN's FP8 SDPA graph through nvidia-cudnn-frontend (``cudnn-fp8``:
  pre-quantized per-tensor E4M3 in, E4M3 out, as Hopper requires) and SageAttention 1
  (``sage1``: INT8 Q·Kᵀ, fp16 P·V).
* **Shapes**: the FlashAttention-3 paper's sweep (16k tokens per batch, hidden 2048, so
  ``B = 16384 // S`` and ``H = 2048 // D``), the mission shape (B=1, H=8, S=512, D=64, fp16) and
  shapes given with ``--shape B,Hq,Hkv,Sq,Sk,D``.
* **Timing methods**:

  - ``do_bench``: ``triton.testing.do_bench(..., return_mode="median")``. It flushes the L2 cache
    before every timed call (it zeroes a 256 MB buffer between runs), so each call reads its
    inputs from HBM; the time is the median of per-call CUDA-event times.
  - ``cuda_graph``: N calls captured in one ``torch.cuda.CUDAGraph`` after a warm-up; the graph is
    replayed several times and the device time per call is the median replay time / N (CUDA events).
    No L2 flush: back-to-back calls, as in a model's forward pass; host launch overhead excluded.
  - ``eager``: a host loop of N calls with one synchronize at the end; wall-clock time per call
    (``time.perf_counter``), median of several repeats. No L2 flush; host overhead included.

  Sweep and ``--shape`` shapes use ``do_bench``; the mission shape, which is latency-bound, uses all three.
* **FLOPs**: ``4·B·Hq·D`` times the number of (query, key) pairs a query sees; for causal attention
  that is the exact count under fp8attn's bottom-right alignment. TFLOP/s = FLOPs / median time.

Every provider runs once before timing: its output must be finite, and its relative L2 error
against ``sdpa-default``'s output is printed and recorded (a warning row above 0.1). Results go to
``<out>/<name>.json`` (rewritten after every shape) and ``<out>/<name>.png``; ``--plot-only JSON``
redraws the table and the plot from a saved JSON without a GPU.
"""

from fp8attn.bench.cli import main
from fp8attn.bench.gate import gate_exit_code, gate_failures
from fp8attn.bench.providers import BUILDERS, Inputs, Runner, unavailable_reason
from fp8attn.bench.results import load_json
from fp8attn.bench.shapes import Record, Shape, attention_flops

__all__ = ["BUILDERS", "Inputs", "Record", "Runner", "Shape", "attention_flops", "gate_exit_code", "gate_failures",
           "load_json", "main", "unavailable_reason"]
