#!/usr/bin/env bash
# Call 2: the V-rows study (branch v-rows-study), then the GPU test suite on the same tree (main + the V_ROWS switch, off in the library).
set -uo pipefail
export OUT=${OUT:-out}
start=$(date +%s)
bash benchmarks/gpu_session.sh >/dev/null 2>&1  # peers' wheels to /tmp/site, gpu.txt, seed.txt
export PYTHONPATH="$PWD/src:$PWD:/tmp/site" PYTHONUNBUFFERED=1
export FP8ATTN_SEED=$(cut -d= -f2 "$OUT/seed.txt")
echo "--- v_rows_study at $(( $(date +%s) - start )) s"
timeout 150 python3 benchmarks/v_rows_study.py --out "$OUT" 2>&1 | tee "$OUT/v_rows_study.txt"
left=$(( 575 - ($(date +%s) - start) ))
echo "--- tests (seed $FP8ATTN_SEED, ${left} s) at $(( $(date +%s) - start )) s"
timeout $left python3 -m pytest -n 14 -q -p no:cacheprovider -rfE tests -k "not cpu" 2>&1 | tee "$OUT/pytest_all.log" \
  | grep -v "^SKIPPED" | tail -25
echo "--- end at $(( $(date +%s) - start )) s"
