"""studies/core_scaling.py: solo vs together rounds give a consistent record and a table (tiny run)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# a plain import from studies/ (as when the script runs): its spawned workers import the module by name
sys.path.insert(0, str(ROOT / "studies"))
import core_scaling  # noqa: E402


def test_core_scaling_records_both_modes_and_renders(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert core_scaling.main(["--procs", "2", "--steps", "2", "--rounds", "1", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert len(d["solo"]) == 1 and len(d["together"]) == 1 and len(d["together"][0]) == 2
    assert all(c > 0 and w > 0 for c, w in [*d["solo"], *d["together"][0]])
    assert d["cpu_ratio"] == pytest.approx(d["cpu_s_per_step_together"] / d["cpu_s_per_step_solo"])
    assert d["throughput_gain"] == pytest.approx(d["steps_per_s_together"] / d["steps_per_s_solo"])
    capsys.readouterr()
    assert core_scaling.main(["--render", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| solo | 1 |" in table and "| together | 2 |" in table and "throughput gain" in table


def test_core_scaling_refuses_a_single_process(tmp_path):
    with pytest.raises(SystemExit):
        core_scaling.main(["--procs", "1", "--out", str(tmp_path / "x.json")])
