"""fp8attn inspect --ncu: the ncu command line and the parsing of its CSV (on the GPU: a real run)."""

from __future__ import annotations

import shutil

import pytest

from fp8attn import kernel_profile
from fp8attn.kernel_profile import METRICS, ncu_command, parse_ncu_csv
from tests.conftest import HAS_CUDA, INTERPRETED

# The layout of `ncu --csv --page raw`: notes, the target's own output, a header of names, a row of
# units, then one row per profiled launch (values with thousands separators, quoted).
_SAMPLE = "\n".join([
    "==PROF== Connected to process 4242 (/usr/bin/python3)",
    "==PROF== Profiling \"_quantize_qkv_kernel\": 0%....50%....100% - 3 passes",
    "some output of the target",
    '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",'
    '"Device","CC",' + ",".join(f'"{m}"' for m in METRICS),
    '"","","","","","","","","","","","%","%","inst"',
    '"0","4242","python3","host","_quantize_qkv_kernel","1","7","(256, 1, 1)","(96, 1, 1)","0","9.0",'
    '"12.50","41.20","1,024"',
    '"1","4242","python3","host","_fp8_attention_fwd_kernel","1","7","(128, 1, 1)","(8, 8, 1)","0","9.0",'
    '"63.75","24.90","12,288"',
])


def test_ncu_csv_rows_become_one_profile_per_launch():
    profiles = parse_ncu_csv(_SAMPLE)
    assert [(p.kernel, p.launch) for p in profiles] == [("_quantize_qkv_kernel", 0), ("_fp8_attention_fwd_kernel", 1)]
    tensor, occupancy, wgmma = METRICS
    assert profiles[1].metrics == {tensor: 63.75, occupancy: 24.9, wgmma: 12288.0}
    table = kernel_profile.format_profiles(profiles)
    assert "_fp8_attention_fwd_kernel" in table and "12,288.0" in table


def test_ncu_output_without_a_table_is_an_error_that_says_so():
    with pytest.raises(ValueError, match="no CSV table in ncu's output"):
        parse_ncu_csv("==PROF== No kernels were profiled.\n")


def test_ncu_runs_with_the_gpu_clocks_left_alone_and_only_fp8attn_kernels():
    cmd = ncu_command("ncu", ["python", "-m", "x"])
    assert cmd[:3] == ["ncu", "--clock-control", "none"] and cmd[-3:] == ["python", "-m", "x"]
    assert ",".join(METRICS) in cmd and "regex:" + "|".join(kernel_profile.KERNELS) in cmd


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRETED or shutil.which("ncu") is None, reason="needs a CUDA GPU and ncu")
def test_ncu_profiles_the_attention_kernel_on_the_gpu():
    profiles = kernel_profile.profile([(1, 4, 4, 512, 512, 128, False)], "e4m3")  # the Triton kernel's shape
    attention = [p for p in profiles if p.kernel == "_fp8_attention_fwd_kernel"]
    assert len(attention) == 1, profiles
    tensor, occupancy, wgmma = METRICS
    assert attention[0].metrics[wgmma] > 0 and 0 < attention[0].metrics[tensor] <= 100
    assert 0 < attention[0].metrics[occupancy] <= 100
