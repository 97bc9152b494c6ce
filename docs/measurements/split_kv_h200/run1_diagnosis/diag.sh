export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1
python3 out/diag.py 2>&1 | tee $OUT/diag.txt
FP8ATTN_PROGRAMMATIC_LAUNCH=0 python3 out/diag.py 2>&1 | tee -a $OUT/diag.txt
timeout 200 ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats \
  -k regex:"_fp8_attention|_merge" --launch-count 7 python3 out/diag.py --once > $OUT/ncu.txt 2>&1; tail -5 $OUT/ncu.txt
