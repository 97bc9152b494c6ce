"""benchmarks/peer_profile.py reads Nsight Compute's SASS source page: opcodes, predicates, counts."""

from __future__ import annotations

from benchmarks.peer_profile import mix, opcode_counts

_SOURCE_PAGE = '''"Kernel Name","k",
"Address","Source","Warp Stall Sampling (All Samples)","Instructions Executed"
"0x10","      FFMA R1, R2, R3, R4","5","1,000"
"0x20","  @P0 FFMA.FTZ R1, R2, R3, R4","1","500"
"0x30","      MUFU.EX2 R5, R6","9","1,000"
"0x40","  @!P1 BRA 0x10","0","24"
"0x50","","0","0"
'''


def test_opcodes_are_counted_without_predicates_or_modifiers(tmp_path):
    page = tmp_path / "kernel.csv"
    page.write_text(_SOURCE_PAGE)
    assert opcode_counts(page) == {"FFMA": 1500.0, "MUFU": 1000.0, "BRA": 24.0}


def test_mix_prints_thread_instructions_per_score(tmp_path, capsys):
    page = tmp_path / "kernel.csv"
    page.write_text(_SOURCE_PAGE)
    mix((1, 1, 8, 64, False), [page], top=3)  # 64 scores: 1500 warp FFMAs are 750 thread FFMAs a score
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["opcode", "kernel"]
    assert lines[3].split() == ["FFMA", "750.000"]
    assert float(lines[2].split()[1]) == (1500 + 1000 + 24) * 32 / 64
