"""Results: the JSON file, the tables and the plot."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from fp8attn.bench.measure import REL_L2_WARN
from fp8attn.bench.providers import PROVIDERS
from fp8attn.bench.shapes import SWEEP_HIDDEN, SWEEP_TOKENS, Record, Shape, short_count

RATIOS = (("fp8attn-prequant", "cudnn-fp8", "prequant/cuDNN-FP8"), ("fp8attn", "sdpa-cudnn", "fp8attn/SDPA-cuDNN"))


def versions() -> dict[str, str | None]:
    """Versions of everything measured (None for what is not installed)."""
    import triton

    import fp8attn

    def dist(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    cudnn_version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "cudnn": str(cudnn_version) if cudnn_version else None, "fp8attn": fp8attn.__version__,
        "cudnn_frontend": dist("nvidia-cudnn-frontend"), "sageattention": dist("sageattention"),
    }


def write_json(path: Path, meta: dict[str, Any], records: Sequence[Record]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**meta, "records": [asdict(r) for r in records]}, indent=1) + "\n")
    tmp.replace(path)


def load_json(path: Path) -> tuple[dict[str, Any], list[Record]]:
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if k != "records"}, [Record.from_dict(r) for r in data["records"]]


def is_sweep(r: Record) -> bool:
    """A record of the FA3 sweep (by its suite, or by its shape in JSON files without one)."""
    if r.suite != "custom":
        return r.suite == "sweep"
    return (r.Sq == r.Sk and r.Hq == r.Hkv and r.Hq * r.D == SWEEP_HIDDEN
            and r.B == max(1, SWEEP_TOKENS // r.Sq))


def _ratio(cells: dict[str, Record], num: str, den: str) -> float | None:
    """Speed of ``num`` over ``den`` (> 1: ``num`` is faster), or None if either is missing."""
    if num in cells and den in cells and cells[num].median_ms > 0:
        return cells[den].median_ms / cells[num].median_ms
    return None


def table_rows(records: Sequence[Record], unit: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per (shape, method), a column per provider in ``unit`` ("TFLOP/s" or "µs"),
    then the speed ratios fp8attn-prequant/cudnn-fp8 and fp8attn/sdpa-cudnn."""
    groups: dict[tuple[Shape, str], dict[str, Record]] = {}
    for r in records:
        groups.setdefault((r.shape, r.method), {})[r.provider] = r
    present = [p for p in PROVIDERS if any(r.provider == p for r in records)]
    present += sorted({r.provider for r in records} - set(present))
    header = ["shape", "method", *present, *(label for _, _, label in RATIOS)]
    rows = []
    for (shape, method), cells in groups.items():
        row = [shape.label(), method]
        for p in present:
            r = cells.get(p)
            if r is None:
                row.append("–")
            else:
                value = f"{r.tflops:.1f}" if unit == "TFLOP/s" else f"{r.median_ms * 1e3:.1f}"
                warn = not r.finite or (r.rel_l2 is not None and r.rel_l2 > REL_L2_WARN)
                row.append(value + ("!" if warn else ""))
        for num, den, _ in RATIOS:
            ratio = _ratio(cells, num, den)
            row.append("–" if ratio is None else f"{ratio:.2f}×")
        rows.append(row)
    return header, rows


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    if not rows:
        return
    if importlib.util.find_spec("rich") is not None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_lines=False)
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i < 2 else "right", no_wrap=i == 0)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    def line(cells: Sequence[str]) -> str:
        padded = (c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded)
    print(f"\n{title}\n{line(header)}\n{'  '.join('-' * w for w in widths)}")
    for row in rows:
        print(line(row))


def report(records: Sequence[Record], gpu: str) -> None:
    """The TFLOP/s table of all records, and a µs table of the shapes timed by more than one method."""
    header, rows = table_rows(records, "TFLOP/s")
    print_table(f"fp8attn bench on {gpu}: TFLOP/s (! = output check warning; ratios: > 1 means fp8attn faster)",
                header, rows)
    methods_per_shape: dict[Shape, set[str]] = {}
    for r in records:
        methods_per_shape.setdefault(r.shape, set()).add(r.method)
    multi = [r for r in records if len(methods_per_shape[r.shape]) > 1]
    if multi:
        header, rows = table_rows(multi, "µs")
        print_table("latency, µs per call (do_bench: L2 flushed; cuda_graph: device time; eager: host loop)",
                    header, rows)


def plot(records: Sequence[Record], path: Path, title: str) -> list[Path]:
    """The plots of ``records`` that have something to show: the sweep's (:func:`plot_sweep`, at ``path``) and
    the decoding suite's (:func:`plot_decode`, beside it with ``_decode`` added to the name)."""
    plt = _pyplot()
    if plt is None:
        return []
    written = [plot_sweep(plt, records, path, title),
               plot_decode(plt, records, path.with_name(f"{path.stem}_decode{path.suffix}"), title)]
    if written == [None, None]:
        print("plot: no do_bench records of sweep shapes and no decode-suite records; nothing to plot")
    return [p for p in written if p is not None]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"plot: skipped, matplotlib is not importable ({e}); pip install matplotlib")
        return None
    return plt


def plot_decode(plt: Any, records: Sequence[Record], path: Path, title: str) -> Path | None:
    """µs per call against the number of keys for the decode suite's records, a panel per timing method, a
    line per provider (None where there are none)."""
    decode = [r for r in records if r.suite == "decode"]
    if not decode:
        return None
    methods = [m for m in ("cuda_graph", "do_bench", "eager") if any(r.method == m for r in decode)]
    fig, axes = plt.subplots(1, len(methods), figsize=(5.2 * len(methods), 3.8), squeeze=False)
    order = {p: i for i, p in enumerate(PROVIDERS)}
    lines: dict[str, Any] = {}
    for ax, method in zip(axes[0], methods, strict=True):
        panel = [r for r in decode if r.method == method]
        for provider in sorted({r.provider for r in panel}, key=lambda p: (order.get(p, 99), p)):
            pts = sorted((r.Sk, r.median_ms * 1e3) for r in panel if r.provider == provider)
            style = "-" if provider.startswith("fp8attn") else "--"
            (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=provider)
            lines.setdefault(provider, line)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        keys = sorted({r.Sk for r in panel})
        ax.set_xticks(keys, [short_count(k) for k in keys])
        ax.grid(alpha=0.3, which="both")
        ax.set_title(f"{method}", fontsize=10)
        ax.set_xlabel("keys (KV cache length)")
        ax.set_ylabel("µs per call")
    shape = decode[0]
    title = f"decoding, B{shape.B} H{shape.Hq}/{shape.Hkv} Sq{shape.Sq} D{shape.D} · {title}"
    return _save_figure(plt, fig, lines, title, path, legend_row=0.04, top=0.95)


def plot_sweep(plt: Any, records: Sequence[Record], path: Path, title: str) -> Path | None:
    """TFLOP/s against S, a panel per (D, causal), a line per provider; do_bench records of the sweep only
    (None where there are none)."""
    sweep = [r for r in records if r.method == "do_bench" and is_sweep(r)]
    if not sweep:
        return None
    head_dims = sorted({r.D for r in sweep})
    causals = sorted({r.causal for r in sweep})
    dtypes = sorted({r.dtype for r in sweep})
    fig, axes = plt.subplots(len(head_dims), len(causals), figsize=(5.2 * len(causals), 3.6 * len(head_dims)),
                             squeeze=False, sharex=True)
    order = {p: i for i, p in enumerate(PROVIDERS)}
    lines: dict[str, Any] = {}
    for row, d in enumerate(head_dims):
        for col, causal in enumerate(causals):
            ax = axes[row][col]
            panel = [r for r in sweep if r.D == d and r.causal == causal]
            keys = sorted({(r.provider, r.dtype) for r in panel}, key=lambda k: (order.get(k[0], 99), k))
            for provider, dtype in keys:
                pts = sorted((r.Sq, r.tflops) for r in panel if r.provider == provider and r.dtype == dtype)
                label = provider if len(dtypes) == 1 else f"{provider} ({dtype})"
                style = "-" if provider.startswith("fp8attn") else "--"
                (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=label)
                lines.setdefault(label, line)
            ax.set_xscale("log", base=2)
            seqlens = sorted({r.Sq for r in panel})
            ax.set_xticks(seqlens, [short_count(s) for s in seqlens])
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.set_title(f"D = {d}, {'causal' if causal else 'non-causal'}", fontsize=10)
            if col == 0:
                ax.set_ylabel("TFLOP/s")
            if row == len(head_dims) - 1:
                ax.set_xlabel("sequence length (16k tokens per batch)")
    return _save_figure(plt, fig, lines, title, path, legend_row=0.025, top=0.97)


def _save_figure(plt: Any, fig: Any, lines: dict[str, Any], title: str, path: Path, legend_row: float,
                 top: float) -> Path:
    """Title, one legend of ``lines`` below the panels (four a row, ``legend_row`` of the height each), save."""
    fig.suptitle(title, fontsize=11)
    fig.legend(list(lines.values()), list(lines.keys()), loc="lower center", ncol=min(4, len(lines)), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, legend_row * (1 + math.ceil(len(lines) / 4)), 1, top))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def gpu_slug(name: str) -> str:
    """A file stem from a GPU name: "NVIDIA H100 80GB HBM3" → "h100"."""
    tokens = re.findall(r"[a-z0-9]+", name.lower().replace("nvidia", ""))
    for tok in tokens:
        if re.fullmatch(r"[a-z]+\d+[a-z]*", tok):
            return tok
    return "-".join(tokens) or "gpu"
