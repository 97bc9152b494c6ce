#!/usr/bin/env bash
export OUT=${OUT:-out}
export PYTHONPATH="$PWD/src:$PWD" PYTHONUNBUFFERED=1
timeout 200 ncu --clock-control none -k regex:_fp8_attention_fwd_kernel --launch-count 2 \
  --metrics gpu__time_duration.sum,smsp__sass_inst_executed_op_shared_st.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,smsp__sass_inst_executed_op_global_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum \
  python3 out/v_rows_ncu.py 2>&1 | tee "$OUT/v_rows_ncu.txt" | grep -v "^==PROF==" | tail -40
