"""studies/zo_snr.py: the SNR study of the schedule's ZO gradient (smoke size) and its statistics."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "studies"))
import zo_snr  # noqa: E402


def test_stats_by_hand():
    grads = [[1.0, 0.0, -2.0, 3.0], [3.0, 0.0, 2.0, 3.0]]
    s = zo_snr.stats(grads)
    assert s["start"]["mean"] == 2.0 and s["start"]["sd"] == pytest.approx(math.sqrt(2.0))
    assert s["start"]["snr"] == pytest.approx(2.0 / math.sqrt(2.0)) and s["start"]["sign_agree"] == 1.0
    assert s["end"]["sign_agree"] == 0.0  # never moved: no sign to agree with
    assert s["tau"]["mean"] == 0.0 and s["tau"]["sign_agree"] == 0.5
    assert s["eps"]["sd"] == 0.0 and s["eps"]["snr"] == math.inf


def test_smoke_run_records_crn_and_independent_probes(tmp_path, capsys):
    out = tmp_path / "snr.json"
    zo_snr.main(["--preset", "smoke", "--seed", "100", "--at", "1.0", "--repeats", "2", "--samples", "12", "24",
                 "--out", str(out)])
    d = json.loads(out.read_text())
    kinds = [(r["samples"], r["crn"]) for r in d["rows"]]
    assert kinds == [(12, True), (12, False), (24, True)]
    for r in d["rows"]:
        assert len(r["grads"]) == 2 and all(len(g) == 4 for g in r["grads"])
        assert all(math.isfinite(x) for g in r["grads"] for x in g)
    # common random numbers: the same x_T for the ± probes gives a far smaller spread than independent probes
    crn, ind = d["rows"][0]["stats"], d["rows"][1]["stats"]
    assert sum(v["sd"] for v in crn.values()) < sum(v["sd"] for v in ind.values())
    assert "| 6 | 12 | shared x_T |" in capsys.readouterr().out


def test_refuses_a_benchmark_seed(tmp_path):
    with pytest.raises(SystemExit, match="development seeds"):
        zo_snr.main(["--preset", "smoke", "--seed", "3", "--out", str(tmp_path / "x.json")])
