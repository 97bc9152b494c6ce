"""Instruction mix of an attention kernel per score, from Nsight Compute: fp8attn's against a peer's.

Two commands. ``run`` makes one provider's calls at one shape (what ``ncu`` profiles; the second call
is the one to keep: ``--launch-skip 1 --launch-count 1``); ``mix`` reads ncu's SASS source pages
(``ncu --import R --page source --print-source sass --csv``) and prints, per opcode, the thread
instructions each kernel executed per score (B·H·Sq·Sk, all scores counted):

    python benchmarks/peer_profile.py run cudnn-fp8 2,16,8192,128,0          # under ncu, on the GPU
    python benchmarks/peer_profile.py mix 2,16,8192,128,0 cudnn.csv fp8attn.csv

``bash benchmarks/gpu_session.sh peer-ncu`` does both for cuDNN-FP8 and ``fp8attn-prequant``
(perf-notes §25).
"""

from __future__ import annotations

import argparse
import collections
import csv
from pathlib import Path


def parse_shape(text: str) -> tuple[int, int, int, int, bool]:
    b, h, s, d, causal = (int(x) for x in text.split(","))
    return b, h, s, d, bool(causal)


def run(provider: str, shape: tuple[int, int, int, int, bool]) -> None:
    import torch

    from fp8attn.bench import providers
    from fp8attn.bench.shapes import Shape

    b, h, s, d, causal = shape
    builders = {"cudnn-fp8": providers.build_cudnn_fp8, "fp8attn-prequant": providers.build_fp8attn_prequant,
                "fp8attn": providers.build_fp8attn}
    runner = builders[provider](providers.make_inputs(Shape(b, h, h, s, s, d, causal, "bf16")))
    with runner.context():
        for _ in range(2):
            runner.fn()
    torch.cuda.synchronize()


def opcode_counts(source_csv: Path) -> collections.Counter:
    """Warp instructions executed per opcode (without modifiers) in one kernel's SASS source page."""
    rows = list(csv.reader(source_csv.open()))
    start = next(i for i, row in enumerate(rows) if row and row[0] == "Address")
    header = rows[start]
    counts: collections.Counter = collections.Counter()
    for row in rows[start + 1:]:
        if len(row) != len(header):
            continue
        line = dict(zip(header, row, strict=True))
        words = line["Source"].split()
        if not words:
            continue
        opcode = words[1] if words[0].startswith("@") else words[0]
        counts[opcode.split(".")[0]] += float(line["Instructions Executed"].replace(",", "") or 0)
    return counts


def mix(shape: tuple[int, int, int, int, bool], sources: list[Path], top: int) -> None:
    b, h, s, d, causal = shape
    scores = b * h * s * s  # the full Sq x Sk square (a causal kernel skips the masked half)
    per_score = {path.stem: {op: n * 32 / scores for op, n in opcode_counts(path).items()} for path in sources}
    names = list(per_score)
    print(f"thread instructions per score, B{b} H{h} S{s} D{d}{' causal' if causal else ''}")
    print(f"{'opcode':12s} " + " ".join(f"{n:>18s}" for n in names))
    print(f"{'(all)':12s} " + " ".join(f"{sum(per_score[n].values()):18.2f}" for n in names))
    ops = sorted({op for n in names for op in per_score[n]},
                 key=lambda op: -sum(per_score[n].get(op, 0.0) for n in names))
    for op in ops[:top]:
        print(f"{op:12s} " + " ".join(f"{per_score[n].get(op, 0.0):18.3f}" for n in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="one provider's calls at one shape (profile this under ncu)")
    p_run.add_argument("provider", choices=("cudnn-fp8", "fp8attn-prequant", "fp8attn"))
    p_run.add_argument("shape", type=parse_shape, help="B,H,S,D,causal")
    p_mix = sub.add_parser("mix", help="instructions per score from ncu source-page CSVs")
    p_mix.add_argument("shape", type=parse_shape, help="B,H,S,D,causal")
    p_mix.add_argument("sources", type=Path, nargs="+")
    p_mix.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    if args.command == "run":
        run(args.provider, args.shape)
    else:
        mix(args.shape, args.sources, args.top)


if __name__ == "__main__":
    main()
