#!/usr/bin/env bash
# One pass on a GPU machine: the test suite with compiled kernels, the kernel report, the demo,
# and whichever studies are named. Usage: bash benchmarks/gpu_session.sh STEP... (steps: see the case below)
# Results go to $OUT (default ./out). Peers' wheels, if present in .whl/, are installed to /tmp/site.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD" PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
# One input seed for every test process (xdist workers would each draw their own), printed to replay a run.
export FP8ATTN_SEED=${FP8ATTN_SEED:-$(python3 -c "import random; print(random.SystemRandom().randrange(2**31))")}
echo "FP8ATTN_SEED=$FP8ATTN_SEED" | tee "$OUT/seed.txt"
# pytest-xdist (carried in .whl/) spreads the GPU tests over processes: compiling kernels is most of their time.
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n ${PYTEST_WORKERS:-12}")
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
  | tee -a "$OUT/gpu.txt"
for step in "$@"; do
  echo "=== $step"
  case $step in
    accuracy) slug=$(python3 -c "import torch; from fp8attn.bench.results import gpu_slug; print(gpu_slug(torch.cuda.get_device_name()))")
              timeout 120 python3 -m fp8attn.accuracy --out "$OUT/accuracy_$slug.json" 2>&1 | tail -40 ;;
    tests) timeout ${TESTS_TIMEOUT:-480} python3 -m pytest $XDIST tests -q -p no:cacheprovider -ra 2>&1 | tee "$OUT/pytest.log" \
             | grep -v "^SKIPPED" | tail -30 ;;
    inspect) python3 -m fp8attn.kernel_report 2>&1 | tee "$OUT/kernel_report.txt" ;;
    ncu) timeout 300 python3 -m fp8attn.kernel_report --ncu --recipe int8-hadamard-vsmooth 2>&1 \
           | tee "$OUT/kernel_profile_ncu.txt" | tail -30 ;;
    demo) python3 -m fp8attn.cli demo 2>&1 | tee "$OUT/demo.txt" ;;
    profile) python3 benchmarks/host_profile.py 2>&1 | tee "$OUT/host_profile.txt" | head -45 ;;
    kernels) python3 benchmarks/kernel_times.py 2>&1 | tee "$OUT/kernel_times.txt" ;;
    mission) timeout 200 python3 -m fp8attn.bench --suite mission --providers fp8attn,fp8attn-prequant,cudnn-fp8,sdpa-default,sdpa-flash \
               --out "$OUT" --name mission 2>&1 | tail -25 ;;
    sanitize) for tool in racecheck memcheck; do  # a few quantize and attention tests under compute-sanitizer
                timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 python3 -m pytest -q -p no:cacheprovider \
                  tests/test_quantize.py tests/test_attention.py -k "cuda and (padding or every_recipe)" 2>&1 \
                  | tee "$OUT/sanitize_$tool.log" | tail -4
              done ;;
    tests-grid) timeout ${TESTS_TIMEOUT:-560} python3 -m pytest $XDIST -q -p no:cacheprovider -ra tests/test_attention.py -k cuda 2>&1 \
                  | tee "$OUT/pytest_grid.log" | grep -v "^SKIPPED" | tail -15 ;;
    tests-rest) timeout ${TESTS_TIMEOUT:-560} python3 -m pytest $XDIST -q -p no:cacheprovider -ra tests --ignore=tests/test_attention.py \
                  -k "not cpu" 2>&1 | tee "$OUT/pytest_rest.log" | grep -v "^SKIPPED" | tail -15 ;;
    gate) slug=$(python3 -c "import torch; from fp8attn.bench.results import gpu_slug; print(gpu_slug(torch.cuda.get_device_name()))")
          timeout 400 python3 -m fp8attn.bench --gate "benchmarks/results/$slug.json" ${GATE_ARGS:-} 2>&1 \
            | tee "$OUT/gate.txt" | tail -20 ;;
    smoke) timeout 300 python3 -m pytest -q -p no:cacheprovider -x tests/test_launch_plan.py tests/test_attention.py \
             -k "cuda or replays" 2>&1 | tail -5 ;;
    pdl) for run in 1 2; do  # programmatic dependent launch off/on, alternating, same shapes (perf-notes §19)
           for setting in 0 1; do
             FP8ATTN_PROGRAMMATIC_LAUNCH=$setting timeout 200 python3 -m fp8attn.bench --providers fp8attn,fp8attn-prequant \
               --suite mission,custom --shape 32,16,16,512,512,128 --shape 32,32,32,512,512,64 --shape 16,16,16,1024,1024,128 \
               --shape 4,16,16,4096,4096,128 --shape 2,8,8,8192,8192,256 --rep-ms 40 --calls 20 --repeats 5 \
               --out "$OUT" --name "pdl${setting}_run$run" 2>&1 | tail -3
           done
         done ;;
    ab-sweep) for run in 1 2; do  # AB_PROVIDERS (fp8attn) at AB_HEAD_DIMS (64,128) plus the mission shape: BEFORE_SRC against this tree, alternating
             for side in before after; do
               src=$PWD/src; [ $side = before ] && src=$PWD/${BEFORE_SRC:-out/before/src}
               PYTHONPATH="$src:${PYTHONPATH#$PWD/src:}" timeout 200 python3 -m fp8attn.bench --providers "${AB_PROVIDERS:-fp8attn}" \
                 --suite sweep,mission --d "${AB_HEAD_DIMS:-64,128}" --rep-ms 40 --calls 20 --repeats 5 --out "$OUT" --name "ab_${side}_run$run" \
                 2>&1 | tail -2
             done
           done ;;
    profile-before) PYTHONPATH="$PWD/${BEFORE_SRC:-out/before/src}:${PYTHONPATH#$PWD/src:}" python3 benchmarks/host_profile.py 2>&1 \
                      | tee "$OUT/host_profile_before.txt" | head -12 ;;
    recipes) timeout 300 python3 benchmarks/recipe_speed.py --out "$OUT" 2>&1 | tail -12 ;;
    sass) timeout 200 python3 -m pytest tests/test_kernel_code.py -q -p no:cacheprovider 2>&1 | tail -4 ;;
    qstudy) timeout 200 python3 benchmarks/quantize_launch_study.py --out "$OUT" 2>&1 | tail -20 ;;
    split) timeout 120 python3 benchmarks/prequant_time_split.py 2>&1 | tee "$OUT/prequant_time_split.txt" ;;
    bandwidth) timeout 200 python3 benchmarks/quantize_bandwidth.py --out "$OUT" 2>&1 | tail -12 ;;
    qpipe) timeout 400 python3 benchmarks/quantize_pipeline_study.py --before "${QUANTIZE_BEFORE:-out/quantize_before.py}" --out "$OUT" ${QPIPE_ARGS:-} 2>&1 \
             | tee "$OUT/quantize_pipeline_study.txt" | tail -40 ;;
    tests-split) timeout ${TESTS_TIMEOUT:-300} python3 -m pytest $XDIST -q -p no:cacheprovider -ra tests/test_attention_kernel.py \
                   tests/test_prequantized.py tests/test_launch_plan.py tests/test_attention.py \
                   -k "(cuda or replays) and not (test_attention.py and not decoding)" \
                   2>&1 | tee "$OUT/pytest_split.log" | grep -v "^SKIPPED" | tail -15 ;;
    split-study) timeout 250 python3 benchmarks/split_kv_study.py --out "$OUT" ${SPLIT_STUDY_ARGS:-} 2>&1 \
                   | tee "$OUT/split_kv_study.txt" | tail -80 ;;
    decode) timeout 220 python3 -m fp8attn.bench --suite decode,custom --causal 0 --methods do_bench,cuda_graph \
              --providers fp8attn,fp8attn-prequant,fp8attn-cache,sdpa-flash,sdpa-cudnn,cudnn-fp8,sage1 \
              --shape 4,32,8,1,16384,128 --shape 1,4,4,2048,2048,128 --rep-ms 40 --calls 20 --repeats 5 \
              --out "$OUT" --name decode 2>&1 | tail -40 ;;
    kv-step) timeout 200 python3 benchmarks/kv_cache_step.py --profile 2>&1 | tee "$OUT/kv_cache_step.txt" | head -4 ;;
    configs) timeout 400 python3 benchmarks/config_study.py --recipes e4m3 --out "$OUT" 2>&1 | tail -80 ;;
    hopper-tests) timeout ${TESTS_TIMEOUT:-240} python3 -m pytest $XDIST -q -p no:cacheprovider -ra tests/test_hopper_kernel.py 2>&1 \
                    | tee "$OUT/pytest_hopper.log" | grep -v "^SKIPPED" | tail -15 ;;
    hopper-ab) timeout 300 python3 benchmarks/hopper_ab.py --before "${BEFORE_SRC:-out/before/src}" --out "$OUT" \
                 ${HOPPER_AB_ARGS:-} 2>&1 | tee "$OUT/hopper_ab.txt" | tail -20 ;;  # the Gluon kernel, this tree vs BEFORE_SRC
    row-sum-accuracy) timeout 200 python3 benchmarks/row_sum_accuracy.py --out "$OUT" ${ROW_SUM_ARGS:-} 2>&1 \
                        | tee "$OUT/row_sum_accuracy.txt" | tail -45 ;;
    wgmma-model) timeout 300 python3 benchmarks/wgmma_accumulation_model.py --kernel --mantissa-bits 12,13,14 \
                   --kinds v_mean,randn,k_offset,sharp,outliers 2>&1 | tee "$OUT/wgmma_model_vs_kernel.txt" | tail -32 ;;
    wgmma-check) timeout 150 python3 benchmarks/wgmma_study.py --only-check --out "$OUT" 2>&1 | tee "$OUT/wgmma_check.txt" | tail -30 ;;
    wgmma) timeout 400 python3 benchmarks/wgmma_study.py --skip-check --out "$OUT" 2>&1 | tee "$OUT/wgmma_study.txt" | tail -150 ;;
    wgmma-ncu) for target in 128,16384,0,3 256,16384,0,4; do
                 timeout 200 ncu --clock-control none -k regex:_fp8_attention_fwd --section SpeedOfLight --section Occupancy \
                   --section WarpStateStats --section SchedulerStats \
                   --metrics sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active \
                   python3 benchmarks/wgmma_study.py --recipes e4m3 --profile-target $target 2>&1
               done | tee "$OUT/wgmma_ncu.txt" | grep -E "fwd|Tensor|gmma|Occupancy|Issued|Eligible|Stall|Throughput|Registers|Cycles" | head -90 ;;
    quantize-ncu) for spec in int8-hadamard-vsmooth:128 int8:128 e4m3:128 int8-hadamard-vsmooth:256; do  # the quantize pass under ncu
                    recipe=${spec%:*} d=${spec#*:}; shape="2,$((2048 / d)),$((2048 / d)),8192,$d,0"
                    rep="$OUT/quantize_ncu/${recipe}_d$d"; mkdir -p "$OUT/quantize_ncu"
                    timeout 240 ncu --clock-control none -k "regex:_quantize_qkv_kernel|_v_stats_kernel" --set full \
                      --import-source no -f -o "$rep" python3 -m fp8attn.kernel_profile "$shape" "$recipe" >/dev/null 2>&1
                    ncu --import "$rep.ncu-rep" --page details > "$rep.details.txt" 2>&1
                    ncu --import "$rep.ncu-rep" --page source --print-source sass --csv -k regex:_quantize_qkv_kernel \
                      > "$rep.source.csv" 2>&1
                    grep -E "^  _|Duration|Memory Throughput|DRAM Throughput|Registers Per|Achieved Occupancy|Issued Ipc|Eligible Warps|No Eligible" \
                      "$rep.details.txt" | head -40
                  done ;;
    peer-ncu) mkdir -p "$OUT/peer_ncu"  # cuDNN-FP8's attention kernel against fp8attn's, instruction mix per score
              for provider in cudnn-fp8 fp8attn-prequant; do
                rep="$OUT/peer_ncu/$provider"
                timeout 150 ncu --clock-control none --kernel-name "regex:(?i)(sdpa|fmha|flash|fprop|attention)" \
                  --launch-skip 1 --launch-count 1 --set full --import-source no -f -o "$rep" \
                  python3 benchmarks/peer_profile.py run $provider ${PEER_SHAPE:-2,16,8192,128,0} >/dev/null 2>&1
                ncu --import "$rep.ncu-rep" --page details > "$rep.details.txt" 2>&1
                ncu --import "$rep.ncu-rep" --page source --print-source sass --csv > "$rep.csv" 2>&1
                rm -f "$rep.ncu-rep"
              done
              python3 benchmarks/peer_profile.py mix ${PEER_SHAPE:-2,16,8192,128,0} "$OUT"/peer_ncu/{cudnn-fp8,fp8attn-prequant}.csv \
                | tee "$OUT/peer_ncu/mix.txt" ;;
    study) timeout 300 python3 benchmarks/promotion_study.py --out "$OUT" 2>&1 | tail -20 ;;
    bench-quick) timeout 300 python3 -m fp8attn.bench --quick --out "$OUT" 2>&1 | tail -60 ;;
    bench) timeout ${BENCH_TIMEOUT:-560} python3 -m fp8attn.bench --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tail -80 ;;
  esac
done
