set -u
export OUT PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD"
echo "=== unsmoothed V (e4m3 before the seventeenth session)"
timeout 280 python3 benchmarks/wgmma_accumulation_model.py --kernel --mantissa-bits 13 --kinds v_mean,randn,k_offset,sharp,outliers 2>&1 | tee "$OUT/model_vs_kernel_unsmoothed.txt"
echo "=== smoothed V (e4m3 now)"
timeout 150 python3 benchmarks/wgmma_accumulation_model.py --kernel --smooth-v --mantissa-bits 13 --kinds v_mean,randn 2>&1 | tee "$OUT/model_vs_kernel_smooth_v.txt"
