"""studies/select_asha.py: ASHA's grace period and reduction factor chosen on development seeds, validation only."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "studies"))
import select_asha  # noqa: E402


def _study(mode: str, values: dict[tuple[int, float], list[float]]) -> dict:
    return {"task": "t", "preset": "quick", "seeds": [100, 101, 102], "metric": "m_val", "mode": mode,
            "commit": "abcdef0", "worktree_dirty": False, "command": "python studies/select_asha.py", "wall_s": 60,
            "candidates": [{"grace": g, "eta": e, "seeds": [{"seed": 100 + i, "value_val": v, "cost_flops": 2e9,
                                                             "trials": 5, "lower_steps": 10, "best_config": {}}
                                                            for i, v in enumerate(vals)]}
                           for (g, e), vals in values.items()]}


def test_the_rule_takes_the_best_mean_in_the_metrics_direction_and_pairs_by_seed():
    values = {(1, 2.0): [10.0, 20.0, 30.0], (1, 3.0): [11.0, 21.0, 31.0], (2, 2.0): [40.0, 0.0, 30.0]}
    high = select_asha.render(_study("max", values))
    assert "**grace 2, η 2**" in high  # mean 23.3 beats 20 and 21
    assert "+1 [1, 1] better" in high  # the same +1 on every seed: an interval of width 0, not a tie
    assert "tie" in high.splitlines()[-3]  # (2, 2)'s paired differences +30, -20, 0 straddle 0
    low = select_asha.render(_study("min", values))
    assert "**grace 1, η 2**" in low and "+1 [1, 1] worse" in low


def test_candidates_parse_and_benchmark_seeds_are_refused(tmp_path):
    assert select_asha.parse_candidates("1:2, 2:3") == [(1, 2.0), (2, 3.0)]
    for bad in ("1", "0:2", "1:1", "a:2"):
        with pytest.raises((SystemExit, ValueError)):
            select_asha.parse_candidates(bad)
    with pytest.raises(SystemExit, match="development"):
        select_asha.main(["--task", "toy", "--seeds", "0,100", "--out", str(tmp_path / "s.json")])


@pytest.mark.slow
def test_the_study_runs_the_harness_per_candidate_and_resumes(tmp_path):
    """Two candidates on the toy task at smoke size, through compare.py --validation-only; a second call reads the
    candidates' results back instead of running them again."""
    out, work = tmp_path / "s.json", tmp_path / "work"
    args = ["--task", "toy", "--preset", "smoke", "--seeds", "100,101", "--candidates", "1:2,2:3",
            "--work", str(work), "--out", str(out)]
    select_asha.main(args)
    data = json.loads(out.read_text())
    assert [(c["grace"], c["eta"]) for c in data["candidates"]] == [(1, 2.0), (2, 3.0)]
    for cand in data["candidates"]:
        assert [r["seed"] for r in cand["seeds"]] == [100, 101]
        assert all(r["value_val"] is not None and r["cost_flops"] > 0 for r in cand["seeds"])
    run_info = json.loads((work / "g2_e3" / "run_info.json").read_text())
    assert "--validation-only" in run_info["argv"] and "asha_eta=3" in run_info["argv"]
    stamp = (work / "g1_e2" / "results.json").stat().st_mtime
    select_asha.main(args)
    assert (work / "g1_e2" / "results.json").stat().st_mtime == stamp
