set -u
export OUT
TESTS_TIMEOUT=200 bash benchmarks/gpu_session.sh hopper-tests > "$OUT/session.log" 2>&1
PYTHONPATH="$PWD/src:$PWD" python3 -m pytest -q -p no:cacheprovider tests/test_wgmma_accumulation.py 2>&1 | tail -2 | tee -a "$OUT/session.log"
