"""The benchmark's pure parts: FLOP counting and the regression gate's comparison (no GPU needed)."""

from __future__ import annotations

import dataclasses

import pytest

from fp8attn.bench import Record, attention_flops, gate_exit_code, gate_failures, load_json
from tests.conftest import ROOT


def test_causal_flops_count_only_visible_pairs():
    assert attention_flops(1, 1, 4, 4, 8, causal=False) == 4 * 16 * 8
    assert attention_flops(1, 1, 4, 4, 8, causal=True) == 4 * (1 + 2 + 3 + 4) * 8
    # bottom-right: with Sq < Sk the first query already sees Sk - Sq + 1 keys
    assert attention_flops(1, 1, 2, 5, 8, causal=True) == 4 * (4 + 5) * 8


def _record(provider: str, tflops: float, **kw) -> Record:
    base = dict(provider=provider, method="do_bench", B=2, Hq=16, Hkv=16, Sq=8192, Sk=8192, D=128, causal=False,
                dtype="bf16", median_ms=1.0, tflops=tflops, suite="sweep")
    return Record(**{**base, **kw})


def test_gate_flags_fp8attn_figures_more_than_10_percent_below_the_committed_ones():
    committed = [_record("fp8attn", 500.0), _record("fp8attn-prequant", 520.0, D=64), _record("cudnn-fp8", 900.0)]
    fresh = [_record("fp8attn", 455.0), _record("fp8attn-prequant", 460.0, D=64)]  # 0.91× passes, 0.88× fails
    failures = gate_failures(committed, fresh)
    assert len(failures) == 1 and failures[0].startswith("slower: fp8attn-prequant do_bench B2 H16 S8k D64")
    assert gate_failures(committed, fresh[1:]) [0].startswith("missing: fp8attn do_bench")


def test_gate_says_when_a_slower_host_bound_figure_kept_its_device_time():
    """At the mission shape do_bench and eager include the host's time per call; a failure there whose
    CUDA-graph figure held is still a failure, labelled as host-side."""
    mission = dict(B=1, Hq=8, Hkv=8, Sq=512, Sk=512, D=64, dtype="fp16", suite="mission")
    committed = [_record("fp8attn", 40.0, method="cuda_graph", **mission), _record("fp8attn", 30.0, **mission),
                 _record("fp8attn", 500.0)]
    fresh = [_record("fp8attn", 39.0, method="cuda_graph", **mission), _record("fp8attn", 10.0, **mission),
             _record("fp8attn", 400.0)]
    failures = gate_failures(committed, fresh)
    assert len(failures) == 2
    assert failures[0].startswith("slower: fp8attn do_bench B1 H8 S512 D64") and failures[0].endswith("host side")
    assert failures[1].startswith("slower: fp8attn do_bench B2 H16 S8k D128") and "host" not in failures[1]
    fresh[0] = _record("fp8attn", 30.0, method="cuda_graph", **mission)  # device time slower too: no such label
    assert all("host" not in line for line in gate_failures(committed, fresh))


def test_gate_exits_3_only_when_every_regressed_figure_is_host_side():
    """Non-zero either way (a failure is a failure); 3 tells a script that only the host-bound figures moved."""
    mission = dict(B=1, Hq=8, Hkv=8, Sq=512, Sk=512, D=64, dtype="fp16", suite="mission")
    committed = [_record("fp8attn", 40.0, method="cuda_graph", **mission), _record("fp8attn", 30.0, **mission),
                 _record("fp8attn", 500.0)]
    host_only = [_record("fp8attn", 39.0, method="cuda_graph", **mission), _record("fp8attn", 10.0, **mission),
                 _record("fp8attn", 500.0)]
    assert gate_exit_code(gate_failures(committed, host_only)) == 3
    kernel_too = [*host_only[:2], _record("fp8attn", 400.0)]
    assert gate_exit_code(gate_failures(committed, kernel_too)) == 1
    assert gate_exit_code(gate_failures(committed, committed)) == 0
    assert gate_exit_code(gate_failures(committed, host_only[1:])) == 1  # a missing figure is not host-side


def test_gate_passes_the_committed_results_against_themselves():
    for gpu in ("h100", "h200"):
        _, records = load_json(ROOT / "benchmarks" / "results" / f"{gpu}.json")
        assert any(r.provider == "fp8attn" for r in records)
        assert gate_failures(records, [dataclasses.replace(r) for r in records]) == []


def test_decode_suite_plans_one_query_row_against_each_cache_length_with_device_time():
    from fp8attn.bench.cli import build_parser, plan

    jobs = plan(build_parser().parse_args(["--suite", "decode"]))
    assert [s.Sk for s, _ in jobs] == [1024, 4096, 16384, 65536]
    for shape, methods in jobs:
        assert (shape.B, shape.Hq, shape.Hkv, shape.Sq, shape.D, shape.causal, shape.suite) == \
            (1, 32, 8, 1, 128, False, "decode")
        assert methods == ("do_bench", "cuda_graph")


def test_plot_draws_the_decode_suite_beside_the_sweep(tmp_path):
    pytest.importorskip("matplotlib")
    from fp8attn.bench.results import plot
    from fp8attn.bench.shapes import decode_shapes

    decode = [Record(**dataclasses.asdict(shape), provider=provider, method=method, median_ms=ms, tflops=0.0)
              for shape in decode_shapes("bf16") for provider, ms in (("fp8attn-prequant", 0.04), ("sdpa-cudnn", 0.03))
              for method in ("do_bench", "cuda_graph")]
    pngs = plot([_record("fp8attn", 500.0), *decode], tmp_path / "gpu.png", "test")
    assert pngs == [tmp_path / "gpu.png", tmp_path / "gpu_decode.png"]
    assert all(p.stat().st_size > 10_000 for p in pngs)
    assert plot(decode, tmp_path / "only.png", "test") == [tmp_path / "only_decode.png"]
