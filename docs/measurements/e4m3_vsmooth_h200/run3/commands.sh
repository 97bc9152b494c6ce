set -u
export OUT PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export FP8ATTN_SEED=249688670
ids='tests/test_attention.py::test_kernel_is_far_closer_to_its_emulation_than_the_recipe_is_to_float64[cuda-D128-Sq1-Sk257-causal-float16-H2/2-e4m3-unsmoothed] tests/test_attention.py::test_kernel_is_far_closer_to_its_emulation_than_the_recipe_is_to_float64[cuda-D128-Sq1-Sk257-full-bfloat16-H3/1-e4m3-unsmoothed] tests/test_attention.py::test_kernel_is_far_closer_to_its_emulation_than_the_recipe_is_to_float64[cuda-D128-Sq1-Sk257-causal-float16-H2/2-e4m3]'
for side in after before; do
  src=$PWD/src; [ $side = before ] && src=$PWD/out/before/src
  echo "=== replay $side"
  PYTHONPATH="$src:$PWD:/tmp/site" timeout 150 python3 -m pytest -q -p no:cacheprovider $ids 2>&1 | grep -E "AssertionError: kernel|passed|failed" | tee "$OUT/replay_$side.txt"
done
echo "=== gluon vs triton short causal"
PYTHONPATH="$PWD/src:$PWD:/tmp/site" timeout 300 python3 benchmarks/hopper_ab.py --before triton --seqlens 1024,2048 --out "$OUT" 2>&1 | tee "$OUT/hopper_ab_vs_triton_short.txt" | tail -20
