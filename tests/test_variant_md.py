"""benchmarks/variant_md.py: a variant run of one method against the reference run, regret from the reference's
oracle of the same seed (the test value of its validation-chosen answer), paired differences by seed (synthetic results
folders with known values)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import variant_md  # noqa: E402


def _row(method: str, seed: int, val: float, test: float, cpu: float, **extra) -> dict:
    return {"task": "noise_schedule", "method": method, "seed": seed, "preset": "quick", "metric": "fid_domain",
            "mode": "min", "metric_value": test, "metric_value_val": val, "fid": None, "cpu_s": cpu, "regret": None,
            "best_config": {"start": 0.01 * seed, "tau": 1.5}, "settings": {"eval_samples": 500}, **extra}


def _folder(path: Path, rows: list[dict], argv: list[str]) -> Path:
    path.mkdir()
    (path / "results.json").write_text(json.dumps(rows))
    (path / "run_info.json").write_text(json.dumps({"argv": argv, "commit": "abc123", "dirty": False}))
    return path


def test_variant_section_regret_from_the_reference_oracle_and_paired_differences(tmp_path):
    sweep = lambda best: [{"config": {"tau": 1.0}, "metric_value": best, "metric_value_val": 1.0},  # noqa: E731
                          {"config": {"tau": 2.0}, "metric_value": best + 50, "metric_value_val": 0.5}]
    ref = _folder(tmp_path / "ref", [_row("bilevel", s, 200 + s, 150 + s, 400) for s in (0, 1, 2)]
                  + [_row("dense", s, 0.5, 150 + 10 * s, 3000, sweep=sweep(100 + 10 * s)) for s in (0, 1, 2)],
                  ["compare.py"])
    var = _folder(tmp_path / "var", [_row("bilevel", s, 190 + s, 130 + 2 * s, 410,
                                          settings={"eval_samples": 500, "lr_start": 0.02}) for s in (0, 1, 2)],
                  ["benchmarks/compare.py", "--methods", "bilevel", "--set", "lr_start=0.02"])
    text = variant_md.section(str(var), str(ref), title="lr_start")
    assert text.startswith("## lr_start\n")
    assert "python benchmarks/compare.py --methods bilevel --set lr_start=0.02" in text
    assert "Settings changed: `lr_start=0.0200`." in text
    # seed 1: the oracle's answer is tau=2 (best on validation, 0.5), test 160 (not the sweep's test-best 110):
    # reference test 151, regret 151 - 160 = -9 (it beat the sweep); variant test 132, regret 132 - 160 = -28
    assert "| 1 | 201 → 191 | 151 → 132 | -9 → -28 | 400 → 410 | start=0.0100, tau=1.50 |" in text, text
    assert "negative: the method beat the sweep's validation-chosen answer" in text
    # variant - reference per seed: val -10 (no spread: the interval collapses on the mean), test and regret
    # -20 + s (mean -19), no FID, CPU-s +10
    last = text.rstrip().splitlines()[-1]
    assert last.startswith("| -10.0 [-10.0, -10.0] variant better | -19.0 [-21.5, -16.5] variant better | "
                           "-19.0 [-21.5, -16.5] variant better | – | +10.0 [10.0, 10.0] reference better |"), last


def test_variant_folders_per_seed_another_reference_method_and_oracle(tmp_path):
    """A fixed-hyperparameter trial per seed (one folder each, its own settings) against another method of another
    run, with the oracle from a third folder."""
    sweep = [{"config": {"tau": 1.0}, "metric_value": 100.0, "metric_value_val": 1.0}]
    oracle = _folder(tmp_path / "oracle", [_row("dense", s, 1.0, 100.0, 1, sweep=sweep) for s in (0, 1)], [])
    ref = _folder(tmp_path / "ref", [_row("bilevel", s, 150, 140 + s, 400) for s in (0, 1)], [])
    var = ",".join(str(_folder(tmp_path / f"v{s}", [_row("default", s, 140, 120 + 3 * s, 250,
                                                         settings={"eval_samples": 500, "tau": 1.5 + s})],
                                   ["benchmarks/compare.py", "--seeds", str(s)])) for s in (0, 1))
    text = variant_md.section(var, str(ref), method="default", reference_method="bilevel", oracle_dir=str(oracle))
    assert "python benchmarks/compare.py --seeds 0\npython benchmarks/compare.py --seeds 1" in text
    assert "Settings changed, per seed: seed 0: `tau=1.50`; seed 1: `tau=2.50`." in text
    assert "| 0 | 150 → 140 | 140 → 120 | 40.0 → 20.0 | 400 → 250 |" in text
    assert "| 1 | 150 → 140 | 141 → 123 | 41.0 → 23.0 | 400 → 250 |" in text
    with pytest.raises(SystemExit, match="no 'random' rows"):
        variant_md.section(var, str(ref), method="default", reference_method="random")


def test_variant_section_refuses_other_presets_and_missing_rows(tmp_path):
    ref = _folder(tmp_path / "ref", [_row("bilevel", 0, 1, 1, 1)], [])
    var = _folder(tmp_path / "var", [_row("bilevel", 0, 1, 1, 1, preset="smoke")], [])
    with pytest.raises(SystemExit, match="different presets"):
        variant_md.section(str(var), str(ref))
    with pytest.raises(SystemExit, match="no 'random' rows"):
        variant_md.section(str(var), str(ref), method="random")
    with pytest.raises(SystemExit, match="results.json not found"):
        variant_md.section(str(tmp_path / "nowhere"), str(ref))
