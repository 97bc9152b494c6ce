"""The Gluon kernel of this tree against the same module from another tree, alternating, in one process.

Two studies run one after the other on a GPU can differ by several per cent through clocks and
temperature alone (docs/perf-notes.md, section 29); this one loads the other tree's
``fp8attn/kernels/attention_fwd_hopper.py`` as a second module (everything it imports comes from this
tree, so only that file may differ), runs both on the same quantized inputs (outputs poisoned with NaN
first) and reports their relative L2 difference, then times them in alternation, ``--rounds`` times per
shape: ``triton.testing.do_bench`` medians with L2 flushed. Prints and writes (``--out``/hopper_ab.json)
each round and the median ratio new/old.

``--before triton`` takes the library's Triton kernel instead (what runs where the Gluon kernel does
not apply; its softmax steps are half as long, so the outputs differ by rounding).

Run: ``python benchmarks/hopper_ab.py --before out/base/src`` (``git archive <commit> src | tar -x -C
out/base``), or ``BEFORE_SRC=out/base/src bash benchmarks/gpu_session.sh hopper-ab`` on the GPU machine.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import inspect
import json
import statistics
from pathlib import Path

import torch
import triton

from fp8attn.bench import attention_flops
from fp8attn.kernels import attention_fwd, attention_fwd_hopper
from fp8attn.metrics import compare
from fp8attn.quantize import quantize_qkv
from fp8attn.recipe import DEFAULT_RECIPE, RECIPES

SEQLENS = "4096,16384"


def load_module_from(src: Path):
    """``fp8attn.kernels.attention_fwd_hopper`` as found under the ``src`` directory of another tree."""
    path = src / "fp8attn" / "kernels" / "attention_fwd_hopper.py"
    spec = importlib.util.spec_from_file_location("attention_fwd_hopper_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _TritonKernel:
    """The Triton kernel with its own tile configuration, launched like the Gluon kernel's module."""

    @staticmethod
    def hopper_forward_launch(qkv, out, lse, **kwargs):
        config = attention_fwd.forward_config(qkv.q.shape[-1], qkv.k_block, kwargs["causal"],
                                              qk_int8=qkv.q.dtype == torch.int8)
        return attention_fwd.forward_launch(qkv, out, lse, config=config, **kwargs)


def _as_a_call_without_lse(module) -> dict:
    """The launch options with which a library call that does not return the LSE runs ``module``'s kernel
    (trees before the fifteenth session have no ``exact_lse``: their kernel always sums in fp32)."""
    parameters = inspect.signature(module.hopper_forward_launch).parameters
    return dict(exact_lse=False) if "exact_lse" in parameters else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="the other tree's src directory, or 'triton'")
    parser.add_argument("--seqlens", default=SEQLENS)
    parser.add_argument("--recipes", default=f"e4m3,{DEFAULT_RECIPE.name}")
    parser.add_argument("--head-dims", default="128,256")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    before = _TritonKernel if args.before == "triton" else load_module_from(Path(args.before))
    kernels = {"before": before, "after": attention_fwd_hopper}
    records = []
    for recipe in (RECIPES[name] for name in args.recipes.split(",")):
        for d in map(int, args.head_dims.split(",")):
            for s in map(int, args.seqlens.split(",")):
                for causal in (False, True):
                    b, h = 16384 // s, 2048 // d
                    g = torch.Generator(device="cuda").manual_seed(s + d)
                    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, generator=g)
                               for _ in range(3))
                    qkv = quantize_qkv(q, k + 0.5, v, recipe)
                    kwargs = dict(causal=causal, softmax_scale=d**-0.5, p_scale=recipe.p_multiplier)
                    launches, outs = {}, {}
                    for name, module in kernels.items():
                        outs[name] = torch.full_like(q, float("nan"))
                        lse = torch.empty(b, h, s, device="cuda")
                        launches[name] = module.hopper_forward_launch(qkv, outs[name], lse, **kwargs,
                                                                      **_as_a_call_without_lse(module))
                        launches[name].run()
                    diff = compare(outs["after"].double(), outs["before"].double()).rel_l2
                    times = {name: [] for name in kernels}
                    for _ in range(args.rounds):
                        for name, launch in launches.items():
                            times[name].append(triton.testing.do_bench(functools.partial(launch.run), warmup=25,
                                                                       rep=100, return_mode="median"))
                    flops = attention_flops(b, h, s, s, d, causal)
                    rec = dict(recipe=recipe.name, B=b, H=h, S=s, D=d, causal=causal, rel_l2_after_vs_before=diff,
                               ms=times, ratio=statistics.median(times["before"]) / statistics.median(times["after"]))
                    records.append(rec)
                    print(f"{recipe.name:22s} D{d:<3} S{s:<5} {'causal' if causal else 'full  '} "
                          f"before {flops / statistics.median(times['before']) / 1e9:7.1f} "
                          f"after {flops / statistics.median(times['after']) / 1e9:7.1f} TFLOP/s "
                          f"speedup {rec['ratio']:.3f} (rounds: "
                          + " ".join(f"{t0 / t1:.3f}" for t0, t1 in zip(times["before"], times["after"], strict=True))
                          + f") diff {diff:.1e}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hopper_ab.json").write_text(json.dumps(dict(gpu=torch.cuda.get_device_name(), before=args.before,
                                                             records=records),
                                                        indent=1))


if __name__ == "__main__":
    main()
