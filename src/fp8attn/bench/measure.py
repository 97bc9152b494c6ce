"""Measuring one shape: build every provider, check its output against SDPA, time it by each method."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Sequence
from dataclasses import asdict

import torch

from fp8attn.bench.progress import Reporter
from fp8attn.bench.providers import BUILDERS, Inputs, Runner, Skip, describe_error, make_inputs, reference_output
from fp8attn.bench.shapes import Record, Shape
from fp8attn.bench.timing import TIMERS, TimingConfig

REL_L2_WARN = 0.1


def free_memory() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def check_output(runner: Runner, ref: torch.Tensor | None) -> tuple[bool, float | None]:
    """Run once: is the output finite, and its relative L2 error against the reference (float32, on the GPU)."""
    out = runner.output(runner.fn())
    torch.cuda.synchronize()
    finite = bool(torch.isfinite(out).all())
    if ref is None or not finite:
        return finite, None
    return finite, float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def measure_provider(provider: str, x: Inputs, ref: torch.Tensor | None, methods: Sequence[str],
                     cfg: TimingConfig, log: Callable[[str], None]) -> list[Record]:
    """Build, check and time one provider on one shape; a failure logs its reason and records nothing."""
    s = x.shape
    tag = f"{provider:>16} | {s.label()}"
    try:
        runner = BUILDERS[provider](x)
    except Skip as e:
        log(f"skip {tag}: {e}")
        return []
    except Exception as e:
        log(f"FAIL {tag}: build: {describe_error(e)}")
        return []
    records = []
    try:
        with runner.context():
            finite, rel_l2 = check_output(runner, ref)
            if not finite:
                log(f"WARN {tag}: output is not finite")
            elif rel_l2 is not None and rel_l2 > REL_L2_WARN:
                log(f"WARN {tag}: rel-L2 {rel_l2:.4f} vs sdpa-default exceeds {REL_L2_WARN}")
            for method in methods:
                try:
                    ms = TIMERS[method](runner.fn, cfg)
                except Exception as e:
                    log(f"FAIL {tag}: {method}: {describe_error(e)}")
                    with contextlib.suppress(Exception):
                        torch.cuda.synchronize()
                    continue
                records.append(Record(**asdict(s), provider=provider, method=method, median_ms=ms,
                                      tflops=s.flops / (ms * 1e-3) / 1e12, rel_l2=rel_l2, finite=finite))
    except Exception as e:
        log(f"FAIL {tag}: {describe_error(e)}")
    finally:
        del runner
        free_memory()
    return records


def measure_shape(shape: Shape, methods: Sequence[str], providers: Sequence[str], cfg: TimingConfig,
                  reporter: Reporter) -> list[Record]:
    """All providers on one shape, on shared inputs; memory is freed afterwards."""
    x = ref = None
    records: list[Record] = []
    try:
        x = make_inputs(shape)
        try:
            ref = reference_output(x)
        except Exception as e:
            reporter.log(f"note {shape.label()}: no sdpa-default reference ({describe_error(e)}); accuracy not checked")
        for provider in providers:
            reporter.step(f"{shape.label()} · {provider}")
            records += measure_provider(provider, x, ref, methods, cfg, reporter.log)
    except Exception as e:
        reporter.log(f"FAIL {shape.label()}: inputs: {describe_error(e)}")
    finally:
        del x, ref
        free_memory()
    return records
