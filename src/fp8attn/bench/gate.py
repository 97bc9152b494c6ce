"""The regression gate: re-run the committed fp8attn figures and fail on a slowdown of more than 10 %."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from fp8attn.bench.measure import measure_shape
from fp8attn.bench.progress import make_reporter
from fp8attn.bench.results import load_json, report
from fp8attn.bench.shapes import Record, Shape
from fp8attn.bench.timing import TimingConfig

GATE_PROVIDERS = ("fp8attn", "fp8attn-prequant")
GATE_TOLERANCE = 0.10  # a change that slows fp8attn by more than 10 % does not merge
HOST_SIDE = " — its device time (cuda_graph) held: the time went on the host side"
# Exit codes: every figure held; some figure regressed; the GPU is not the file's; every regressed figure
# is host-side (still a failure, but one the GPU machine's host produces from run to run: README, Known issues).
GATE_PASSED, GATE_REGRESSED, GATE_OTHER_GPU, GATE_REGRESSED_HOST_SIDE = 0, 1, 2, 3


def _record_key(r: Record) -> tuple:
    return r.provider, r.method, r.shape


def gate_failures(committed: Sequence[Record], fresh: Sequence[Record],
                  tolerance: float = GATE_TOLERANCE) -> list[str]:
    """One line per committed fp8attn figure that ``fresh`` misses or undercuts by more than ``tolerance``."""
    fresh_by_key = {_record_key(r): r for r in fresh}
    committed_by_key = {_record_key(r): r for r in committed}

    def regressed(key: tuple) -> bool | None:
        """Whether the figure under ``key`` is more than ``tolerance`` slower (None: not in both)."""
        old, new = committed_by_key.get(key), fresh_by_key.get(key)
        return None if old is None or new is None else new.tflops < (1 - tolerance) * old.tflops

    failures = []
    for old in committed:
        if old.provider not in GATE_PROVIDERS:
            continue
        label = f"{old.provider} {old.method} {old.label()}"
        key = _record_key(old)
        new = fresh_by_key.get(key)
        if new is None:
            failures.append(f"missing: {label} (committed {old.tflops:.1f} TFLOP/s)")
        elif regressed(key):
            line = (f"slower: {label}: {new.tflops:.1f} TFLOP/s vs committed {old.tflops:.1f} "
                    f"({new.tflops / old.tflops:.2f}×)")
            if old.method != "cuda_graph" and regressed((old.provider, "cuda_graph", old.shape)) is False:
                line += HOST_SIDE
            failures.append(line)
    return failures


def gate_exit_code(failures: Sequence[str]) -> int:
    """The gate's exit status for its failure lines (:func:`gate_failures`)."""
    if not failures:
        return GATE_PASSED
    return GATE_REGRESSED_HOST_SIDE if all(line.endswith(HOST_SIDE) for line in failures) else GATE_REGRESSED


def default_recipe_name() -> str:
    from fp8attn.recipe import DEFAULT_RECIPE

    return DEFAULT_RECIPE.name


def run_gate(path: Path, cfg: TimingConfig) -> int:
    """Re-measure fp8attn on every shape and method of a committed results file → :func:`gate_exit_code`."""
    meta, committed = load_json(path)
    if meta.get("fp8attn_recipe") != default_recipe_name():
        print(f"note: {path} measured fp8attn with recipe {meta.get('fp8attn_recipe', 'unrecorded')!r}; "
              f"the default is now {default_recipe_name()!r}: a difference may be the recipe, not a regression")
    gpu = torch.cuda.get_device_name()
    if meta.get("gpu") != gpu:
        print(f"fp8attn bench --gate: {path} was measured on {meta.get('gpu')!r}, this is {gpu!r}; "
              "compare on the same GPU kind", file=sys.stderr)
        return GATE_OTHER_GPU
    jobs: dict[tuple, set[str]] = {}
    for r in committed:
        if r.provider in GATE_PROVIDERS:
            shape = Shape(r.B, r.Hq, r.Hkv, r.Sq, r.Sk, r.D, r.causal, r.dtype, r.suite)
            jobs.setdefault(shape, set()).add(r.method)
    fresh: list[Record] = []
    with make_reporter(len(jobs) * len(GATE_PROVIDERS)) as reporter:
        for shape, methods in jobs.items():
            fresh += measure_shape(shape, sorted(methods), GATE_PROVIDERS, cfg, reporter)
    report(fresh, gpu)
    failures = gate_failures(committed, fresh)
    for line in failures:
        print(line)
    print(f"gate: {len(failures)} of the committed fp8attn figures regressed by more than {GATE_TOLERANCE:.0%}"
          if failures else f"gate: every fp8attn figure within {GATE_TOLERANCE:.0%} of {path}")
    return gate_exit_code(failures)
