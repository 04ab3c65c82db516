"""studies/train_vs_sample.py: retrain / switch / sample-only differences of the schedule (smoke size)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "studies"))
import train_vs_sample as tvs  # noqa: E402


def test_probes_are_central_inside_and_one_sided_at_a_bound():
    bounds = {"end": (0.0, 1.0), "tau": (1.0, 1e6)}
    assert tvs._probes({"end": 0.5, "tau": 2.0}, bounds, "end", 0.1) == ({"end": 0.4, "tau": 2.0},
                                                                          {"end": 0.6, "tau": 2.0})
    assert tvs._probes({"end": 1.0, "tau": 1.0}, bounds, "end", 0.1)[1]["end"] == 1.0
    assert tvs._probes({"end": 1.0, "tau": 1.0}, bounds, "tau", 0.1) == ({"end": 1.0, "tau": 1.0},
                                                                          {"end": 1.0, "tau": 1.1})
    with pytest.raises(SystemExit, match="moves end nowhere"):
        tvs._probes({"end": 1.0}, {"end": (1.0, 1.0)}, "end", 0.1)


def test_a_retrain_probe_shares_the_base_training_streams(tmp_path, capsys):
    """A fresh training at end = 1 (the retrain probe of a run based at 0.95) gives the very FID of the run based at
    end = 1: the probes train on the same data order and noise draws (common random numbers), so a difference is
    the schedule's effect, not a reshuffle."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    tvs.main(["--preset", "smoke", "--seed", "100", "--names", "end", "--h", "0.05", "--base", '{"end": 0.95}',
              "--branches", "0", "0.5", "1", "--out", str(a)])
    tvs.main(["--preset", "smoke", "--seed", "100", "--names", "end", "--h", "0.05", "--branches", "0", "1",
              "--out", str(b)])
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    rows = {r["branch"]: r for r in ra["seeds"][0]["rows"]}
    assert set(rows) == {0.0, 0.5, 1.0}
    assert rows[0.0]["q_low"] == pytest.approx(0.9) and rows[0.0]["q_high"] == pytest.approx(1.0)
    assert rows[0.0]["fid_high"] == pytest.approx(rb["seeds"][0]["fid_q0"], rel=1e-9)
    for r in rows.values():
        assert math.isfinite(r["slope"]) and r["slope"] == pytest.approx(
            (r["fid_high"] - r["fid_low"]) / (r["q_high"] - r["q_low"]))
    out = capsys.readouterr().out
    assert "| end (0.9 → 1) | 100 |" in out and "Sign agreement with retraining: switch at 0.5" in out


def test_benchmark_seeds_and_a_missing_retrain_branch_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="development"):
        tvs.main(["--preset", "smoke", "--seeds", "3", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="include 0"):
        tvs.main(["--preset", "smoke", "--seeds", "100", "--branches", "1", "--out", str(tmp_path / "x.json")])


def test_reuse_takes_the_matching_rows_and_refuses_other_settings(tmp_path):
    """--reuse: the rows an earlier run of the same preset, base and settings computed are taken as they are (the
    training streams are seeded), only the new branches are computed; another base is refused."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    tvs.main(["--preset", "smoke", "--seed", "100", "--names", "end", "--branches", "0", "1", "--out", str(a)])
    tvs.main(["--preset", "smoke", "--seed", "100", "--names", "end", "--branches", "0", "0.5", "1",
              "--reuse", str(a), "--out", str(b)])
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    old = {r["branch"]: r for r in ra["seeds"][0]["rows"]}
    new = {r["branch"]: r for r in rb["seeds"][0]["rows"]}
    assert [b for b, r in new.items() if r.get("reused")] == [0.0, 1.0]
    assert new[0.0]["slope"] == old[0.0]["slope"] and "reused" not in new[0.5]
    assert rb["reused_from"]["file"] == str(a)
    with pytest.raises(SystemExit, match="drop --reuse"):
        tvs.main(["--preset", "smoke", "--seed", "100", "--names", "end", "--base", '{"end": 0.95}',
                  "--reuse", str(a), "--out", str(tmp_path / "c.json")])


def test_a_switch_branch_trains_from_the_snapshot_at_its_switch_point(tmp_path):
    """Golden: the switch-at-0.5 probe equals training at the base for half the budget, then at the moved schedule
    to the end, by hand. (A snapshot that held the live tensors let the switch start from the fully trained
    network: training past the budget, which made every moved schedule look better.)"""
    from ray_bilevel.tasks import get_task

    out = tmp_path / "s.json"
    tvs.main(["--preset", "smoke", "--seed", "100", "--names", "end", "--h", "0.05", "--base", '{"end": 0.9}',
              "--branches", "0", "0.5", "--out", str(out)])
    row = next(r for r in json.loads(out.read_text())["seeds"][0]["rows"] if r["branch"] == 0.5)
    task = get_task("noise_schedule")({"task": "noise_schedule", "preset": "smoke", "seed": 100})
    task.set_hyperparameters({"end": 0.9})
    half = round(0.5 * task.lower_budget)
    for _ in range(half):
        task.lower_step()
    task.set_hyperparameters({"end": 0.95})
    while task.lower_steps < task.lower_budget:
        task.lower_step()
    assert row["q_high"] == pytest.approx(0.95)
    assert row["fid_high"] == pytest.approx(task.evaluate()["fid_domain_val"], rel=1e-9)
