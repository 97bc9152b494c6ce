"""Nsight Compute figures of fp8attn's kernels on the GPU: tensor-pipe utilisation and achieved occupancy.

``fp8attn inspect --ncu`` runs one :func:`fp8attn.attention` call per shape under ``ncu`` (clocks left
as they are: ``--clock-control none``) and prints, per kernel launch, the share of cycles the tensor
pipe was busy (wgmma and mma together), the achieved occupancy and the number of wgmma warp
instructions. The metric names are those of Nsight Compute 2025 on sm_90; other versions may name
them differently, and ``ncu --query-metrics`` lists what a version has.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from dataclasses import dataclass

# Metric name -> column title.
METRICS = {
    "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active": "tensor pipe %",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "achieved occupancy %",
    "sm__inst_executed_pipe_tensor_op_gmma.sum": "wgmma instructions",
}
KERNELS = ("_v_stats_kernel", "_quantize_qkv_kernel", "_fp8_attention_fwd_kernel")


@dataclass(frozen=True)
class KernelProfile:
    """One profiled launch: the kernel's name, its launch ID in the run and the metrics that came back."""

    kernel: str
    launch: int
    metrics: dict[str, float]


def ncu_command(ncu: str, target: list[str]) -> list[str]:
    """The ncu command line that profiles fp8attn's kernels launched by ``target``, as CSV."""
    return [
        ncu, "--clock-control", "none", "--csv", "--page", "raw", "--print-units", "base",
        "--metrics", ",".join(METRICS),
        "--kernel-name", "regex:" + "|".join(KERNELS),
        *target,
    ]


def parse_ncu_csv(text: str) -> list[KernelProfile]:
    """Profiles from ``ncu --csv --page raw --print-units base`` output: one row per launch, one column
    per metric, after a header row of names and a row of units (lines before the header, such as
    ``==PROF==`` notes or the target's own output, are skipped; values that are not numbers are left out)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        raise ValueError("no CSV table in ncu's output (was any fp8attn kernel launched?)")
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))
    profiles = []
    for row in rows:
        if not row.get("ID", "").strip().isdigit():  # the units row
            continue
        values = {}
        for name in METRICS:
            raw = row.get(name, "").replace(",", "").strip()
            try:
                values[name] = float(raw)
            except ValueError:  # absent, or "n/a": left out of the row
                continue
        profiles.append(KernelProfile(kernel=row["Kernel Name"].split("(")[0], launch=int(row["ID"]), metrics=values))
    return profiles


def format_profiles(profiles: list[KernelProfile]) -> str:
    head = f"{'launch':>6}  {'kernel':<28} " + " ".join(f"{title:>22}" for title in METRICS.values())
    rows = [head, "-" * len(head)]
    for p in profiles:
        cells = " ".join(f"{p.metrics[name]:>22,.1f}" if name in p.metrics else f"{'–':>22}" for name in METRICS)
        rows.append(f"{p.launch:>6}  {p.kernel:<28} {cells}")
    return "\n".join(rows)


def run_target(shapes: list[tuple[int, int, int, int, int, int, bool]], recipe: str) -> None:
    """What ncu profiles: one fp8attn.attention call per shape ``(B, Hq, Hkv, Sq, Sk, D, causal)``, bf16 randn."""
    import torch

    import fp8attn

    for b, hq, hkv, sq, sk, d, causal in shapes:
        q = torch.randn(b, hq, sq, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(b, hkv, sk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        fp8attn.attention(q, k, v, causal=causal, recipe=recipe)
    torch.cuda.synchronize()


def profile(shapes: list[tuple[int, int, int, int, int, int, bool]], recipe: str) -> list[KernelProfile]:
    """Run :func:`run_target` under ncu in a child process and return its kernels' profiles."""
    ncu = shutil.which("ncu")
    if ncu is None:
        raise FileNotFoundError("ncu (Nsight Compute) is not on PATH")
    spec = ";".join(",".join(str(int(x)) for x in shape) for shape in shapes)
    target = [sys.executable, "-m", "fp8attn.kernel_profile", spec, recipe]
    done = subprocess.run(ncu_command(ncu, target), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ncu failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return parse_ncu_csv(done.stdout)


if __name__ == "__main__":  # the profiled child: python -m fp8attn.kernel_profile "B,Hq,Hkv,Sq,Sk,D,causal;..." recipe
    parsed = [tuple(int(x) for x in shape.split(",")) for shape in sys.argv[1].split(";")]
    run_target([(*shape[:6], bool(shape[6])) for shape in parsed], sys.argv[2])
