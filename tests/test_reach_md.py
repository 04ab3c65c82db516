"""benchmarks/reach_md.py: what each method's anytime curve needs to reach a bilevel method's answer."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import reach_md  # noqa: E402

from ray_bilevel.config import ConfigError  # noqa: E402


def _curve(points, mode="min"):
    return {"metric": "fid", "mode": mode,
            "points": [{"cost_flops": c * 1e9, "metric_value": v, "metric_value_val": v} for c, v in points]}


def _cells(text, method):
    for line in text.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == method:
            return cells
    raise AssertionError(f"no row of {method}")


def test_one_seed_by_hand():
    curves = {"b": {"0": _curve([(2, 100.0)])},
              "searcher": {"0": _curve([(1, 130.0), (2, 120.0), (3, 95.0), (4, 90.0)])},
              "weak": {"0": _curve([(5, 150.0), (10, 140.0)])}}
    text = reach_md.table(curves, "b")
    assert "b at least as good" in text.splitlines()[0]
    assert not any(line.startswith("| b |") for line in text.splitlines())  # no row for the reference itself
    # the searcher ends at 90 (better than b's 100) with 4 GFLOP: b pays 0.5 of it; its curve first reaches
    # b's 100 at its third point (95 at 3 GFLOP), 1.5 x b's compute
    assert _cells(text, "searcher") == ["searcher", "1", "90.0", "4.00", "no", "0.500", "3.00", "1.50"]
    # the weak method never reaches 100; b is at least as good with 0.2 of its compute
    assert _cells(text, "weak") == ["weak", "1", "140", "10.0", "yes", "0.200", "never", "–"]


def test_max_mode_and_several_seeds_count_the_seeds():
    curves = {"b": {"0": _curve([(1, 50.0)], "max"), "1": _curve([(1, 40.0)], "max")},
              "s": {"0": _curve([(2, 45.0), (4, 55.0)], "max"), "1": _curve([(2, 30.0), (4, 35.0)], "max")}}
    cells = _cells(reach_md.table(curves, "b"), "s")
    # seed 0: b (50) is not at least as good as 55, the searcher reaches 50 at 4 GFLOP; seed 1: b (40) beats 35
    assert cells[:5] == ["s", "2", "45.0", "4.00", "1 of 2"]
    assert cells[5] == "0.250"  # 1/4 on both seeds
    assert cells[6] == "1 of 2 reach; mean 4.00" and cells[7] == "4.00"


def test_ties_count_as_reaching():
    assert reach_md.at_least_as_good(1.0, 1.0, "min") and reach_md.at_least_as_good(1.0, 1.0, "max")
    points = _curve([(1, 3.0), (2, 2.0), (3, 1.0)])["points"]
    assert reach_md.first_reach(points, 2.0, "min") == 2e9
    assert reach_md.first_reach(points, 0.5, "min") is None
    assert reach_md.first_reach(points, 2.5, "max") == 1e9


def test_errors_name_the_fix(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no curves of it"):
        reach_md.table({"a": {"0": _curve([(1, 1.0)])}}, "bilevel")
    (tmp_path / "curves.json").write_text(json.dumps({"t1": {"b": {"0": _curve([(1, 1.0)])}}, "t2": {}}))
    assert reach_md.main([str(tmp_path), "--method", "b"]) == 2
    assert "pass --task" in capsys.readouterr().err
    assert reach_md.main([str(tmp_path), "--method", "b", "--task", "t3"]) == 2
    assert reach_md.main([str(tmp_path), "--method", "b", "--task", "t1"]) == 0
    assert reach_md.main([str(tmp_path / "missing")]) == 2


def test_the_committed_lambda_paper_run_renders():
    """The committed seed-0 λ run at the paper's budgets: bilevel's one guided run against 20-call searchers."""
    folder = ROOT / "docs" / "benchmarks" / "paper1_lambda_fair"
    curves = json.loads((folder / "curves.json").read_text())["reward_lambda"]
    text = reach_md.table(curves, "bilevel")
    cells = _cells(text, "random")
    assert cells[1] == "1" and float(cells[5]) < 0.3  # one guided run against twenty
