#!/usr/bin/env bash
# GQA packing, run 1: kernel-alone study main vs branch, decode bench and split tests on the branch.
set -uo pipefail
export OUT=${OUT:-out}
start=$(date +%s)
since() { echo "--- $1 at $(( $(date +%s) - start )) s"; }
bash benchmarks/gpu_session.sh >/dev/null 2>&1  # installs the peers' wheels, writes gpu.txt and seed
export PYTHONPATH="/tmp/site" PYTHONUNBUFFERED=1
since "main study"
PYTHONPATH="$PWD/out/base/src:/tmp/site" timeout 200 python3 out/gqa_study.py out/base/benchmarks --recipes e4m3 --rep-ms 20 \
  --out "$OUT/main" 2>&1 | tee "$OUT/main_study.txt" | tail -40
since "branch study"
PYTHONPATH="$PWD/src:/tmp/site" timeout 200 python3 out/gqa_study.py benchmarks --recipes e4m3 --rep-ms 20 \
  --out "$OUT/branch" 2>&1 | tee "$OUT/branch_study.txt" | tail -40
since "decode"
TESTS_TIMEOUT=150 bash benchmarks/gpu_session.sh decode tests-split 2>&1 | tail -60
since "end"
