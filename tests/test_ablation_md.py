"""benchmarks/ablation_md.py: routes on/off and against the best peer, paired by seed, from compare.py rows."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import ablation_md  # noqa: E402

from ray_bilevel.config import ConfigError  # noqa: E402


def _rows():
    rows = []
    for seed, (on, off, peer, other) in enumerate([(10.0, 14.0, 11.0, 20.0), (12.0, 15.0, 12.5, 21.0),
                                                   (11.0, 16.0, 12.0, 19.0)]):
        for method, value, flops in (("b_retrain", on, 3e9), ("b", off, 2e9), ("random", peer, 4e9),
                                     ("bayes", other, 4e9), ("dense", 1.0, 5e10), ("default", 30.0, 1e9)):
            rows.append({"task": "t", "method": method, "seed": seed, "metric": "fid", "mode": "min",
                         "metric_value": value, "cost_flops": flops})
    return rows


def test_route_on_off_and_the_best_peer_by_hand():
    text = ablation_md.table(_rows(), [("retrain", "b_retrain", "b")])
    head, _, row = text.strip().splitlines()
    assert "best peer (random)" in head  # dense (1.0) and default are never peers; bayes is worse
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["retrain", "b_retrain", "b", "3"]
    assert cells[4] == "11.0 ± 2.5" and cells[5] == "15.0 ± 2.5"
    assert cells[6].startswith("-4.00 [") and cells[6].endswith("b_retrain better")  # lower fid is better
    assert cells[7] == "3.00 ± 0" and cells[8] == "2.00 ± 0"  # GFLOP, identical on every seed
    assert cells[10] == "-0.833 [-1.6, -0.12] b_retrain better"  # diffs -1, -0.5, -1: t(2) half-width 0.72


def test_parse_route_and_errors_name_the_fix():
    assert ablation_md.parse_route("learn, then retrain=bilevel_retrain:bilevel") == (
        "learn, then retrain", "bilevel_retrain", "bilevel")
    with pytest.raises(ConfigError, match="route looks like"):
        ablation_md.parse_route("retrain=bilevel_retrain")
    with pytest.raises(ConfigError, match="no rows of"):
        ablation_md.table(_rows(), [("x", "cg", "b")])


def test_on_a_committed_run(capsys):
    assert ablation_md.main([str(ROOT / "docs/benchmarks/quick_lambda_fair"), "--route", "tuning=bilevel:default"]) == 0
    out = capsys.readouterr().out
    assert "| tuning | bilevel | default | 5 |" in out and "best peer (weighted_sum)" in out


def test_a_variant_run_joins_under_its_own_name(tmp_path, capsys):
    import json

    rows = _rows()
    other = [dict(r, metric_value=r["metric_value"] + 2.0, cost_flops=9e9) for r in rows if r["method"] == "b"]
    (tmp_path / "results.json").write_text(json.dumps(other))
    joined = ablation_md.variant_rows(rows, "b_slow", other, "b")
    assert {r["method"] for r in joined} == {"b_slow"} and len(joined) == 3
    text = ablation_md.table(rows + joined, [("fast route", "b", "b_slow")])
    cells = [c.strip() for c in text.strip().splitlines()[2].strip("|").split("|")]
    assert cells[6] == "-2.00 [-2.0, -2.0] b better" and cells[8] == "9.00 ± 0"  # same seeds, +2 each
    assert ablation_md.parse_variant("v=some/dir") == ("v", "some/dir", "bilevel")
    assert ablation_md.parse_variant("v=some/dir:b") == ("v", "some/dir", "b")
    with pytest.raises(ConfigError, match="already has a method"):
        ablation_md.variant_rows(rows, "b", other, "b")
    with pytest.raises(ConfigError, match="no rows of method"):
        ablation_md.variant_rows(rows, "v", other, "random")
    with pytest.raises(ConfigError, match="task"):
        ablation_md.variant_rows(rows, "v", [dict(r, task="other") for r in other], "b")
    src = tmp_path / "run"
    src.mkdir()
    (src / "results.json").write_text(json.dumps(rows))
    assert ablation_md.main([str(src), "--variant", f"b_slow={tmp_path}:b", "--route", "fast=b:b_slow"]) == 0
    assert "| fast | b | b_slow | 3 |" in capsys.readouterr().out
