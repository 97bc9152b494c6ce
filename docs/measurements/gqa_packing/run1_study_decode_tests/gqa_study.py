"""Run benchmarks/split_kv_study.py (of whichever tree is on sys.path[0]) on the grouped decoding shapes only,
timing even split counts (the library's pick is even at these shapes on both trees)."""
import sys

sys.path.insert(0, sys.argv.pop(1))  # the tree's benchmarks/ folder
import split_kv_study as study  # noqa: E402

study.SHAPES = [s for s in study.SHAPES if s[1] != s[2] and s[3] < 64] + [(1, 4, 4, 2048, 2048, 128, False)]
full = study.valid_splits
study.valid_splits = lambda sk, bn: [n for n in full(sk, bn) if n % 2 == 0 or n <= 3]
study.main()
