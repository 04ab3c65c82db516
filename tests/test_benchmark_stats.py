"""The statistics, tables and pictures of the evidence protocol (ray_bilevel.benchmark.stats / report / plots and
benchmarks/benchmarks_md.py) on synthetic result rows: no Ray, no models."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ray_bilevel.benchmark.outputs import COLUMNS, write_summary
from ray_bilevel.benchmark.plots import anytime_plot, make_summary_plots, oracle_plot
from ray_bilevel.benchmark.stats import (
    direction,
    mean_ci,
    paired_differences,
    summarise,
    sweep_summary,
    task_reference,
)
from ray_bilevel.benchmark.tables import markdown_report, markdown_table

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
# per task: metric, mode, the test metric keys it reports, per-method offset of the selection metric
TASKS = {
    "noise_schedule": ("fid_domain", "min", ("fid", "fid_domain", "is")),
    "reward_lambda": ("alignment", "max", ("alignment", "reward")),
}
LAMS = (0.1, 1.0, 10.0, 100.0)


def _sweep(task: str, seed: int) -> list[dict]:
    """A dense sweep: 1-D in lam for reward_lambda; tau × eps for noise_schedule (defaults tau=1, eps=0)."""
    if task == "reward_lambda":
        return [{"config": {"lam": lam}, "metric_value": 60 + 10 * math.log10(lam) + seed,
                 "metric_value_val": 61 + 10 * math.log10(lam) + seed} for lam in LAMS]
    return [{"config": {"tau": tau, "eps": eps}, "metric_value": 20 + 10 * (tau - 0.7) ** 2 + 5 * eps + seed,
             "metric_value_val": 21 + 10 * (tau - 0.75) ** 2 + 5 * eps + seed}
            for tau in (0.5, 0.7, 0.9, 1.0, 1.2) for eps in (0.0, 0.02)]


def _row(task: str, method: str, seed: int) -> dict:
    metric, mode, keys = TASKS[task]
    sign = 1.0 if mode == "min" else -1.0
    # bilevel beats default by 5 +- 0.1*seed on the selection metric; dense sits at the oracle
    shift = {"default": 5.0 + 0.1 * seed, "bilevel": 0.0, "dense": -1.0}[method]
    base = (20.0 if mode == "min" else 80.0) + seed
    value = base + sign * shift
    row = {"task": task, "method": method, "seed": seed, "preset": "smoke", "metric": metric, "mode": mode,
           "metric_value": value, "metric_value_val": value + 0.5,
           **{k: None for k in ("fid", "fid_domain", "is", "alignment", "reward")},
           **{f"{k}_val": None for k in ("fid", "fid_domain", "is", "alignment", "reward")},
           "wall_time_s": {"default": 10.0, "bilevel": 50.0, "dense": 500.0}[method] + seed,
           "cpu_s": {"default": 9.0, "bilevel": 45.0, "dense": 480.0}[method] + 2 * seed,
           "final_eval_s": 3.0 + seed, "regret": sign * (value - (base - sign * 1.0)),
           "best_config": {"lam": 10.0} if task == "reward_lambda" else {"tau": 1.0, "eps": 0.0},
           "trials": {"default": 1, "bilevel": 1, "dense": len(_sweep(task, seed))}[method], "errors": 0,
           "settings": {"eval_samples": 8}}
    for k in keys:
        row[k] = value if k == metric else 1.5 + (-1) ** seed * 0.3  # the other metrics: noise around 1.5 (a tie)
        row[f"{k}_val"] = row[k] + 0.25
    if method == "bilevel" and task == "noise_schedule":
        row["best_config"] = {"tau": 0.7 + 0.01 * seed, "eps": 0.0}  # varies across seeds
    points = 2 if method == "default" else 6
    row["curve"] = [
        {
            "cpu_s": row["cpu_s"] * (i + 1) / points,
            "wall_s": row["wall_time_s"] * (i + 1) / points,
            "metric_value": value + sign * (points - 1 - i),
            "metric_value_val": value + 0.5 + sign * (points - 1 - i),
        }
        for i in range(points)
    ]
    if method == "dense":
        row["sweep"] = _sweep(task, seed)
    return row


@pytest.fixture
def rows() -> list[dict]:
    return [_row(t, m, s) for t in TASKS for m in ("default", "bilevel", "dense") for s in SEEDS]


def test_mean_ci_is_the_student_t_interval():
    mean, low, high, n = mean_ci([1.0, 2.0, 3.0, 4.0])
    # s = sqrt(5/3) = 1.290994, t_{0.975, 3} = 3.182446, half = t * s / sqrt(4) = 2.054260
    assert (mean, n) == (2.5, 4)
    assert low == pytest.approx(2.5 - 2.054260, abs=1e-5) and high == pytest.approx(2.5 + 2.054260, abs=1e-5)
    _, low90, high90, _ = mean_ci([1.0, 2.0, 3.0, 4.0], level=0.90)  # t_{0.95, 3} = 2.353363
    assert high90 - 2.5 == pytest.approx(2.353363 * 1.290994 / 2, abs=1e-5)
    assert mean_ci([7.0, None, float("nan")]) == (7.0, None, None, 1)  # one value: no interval, None bounds
    assert mean_ci([]) == (None, None, None, 0)
    assert mean_ci([3.0, 3.0, 3.0]) == (3.0, 3.0, 3.0, 3)


def test_summarise_means_and_counts(rows):
    summary = summarise(rows)
    by = {(s["task"], s["method"], s["metric"]): s for s in summary}
    assert {s["task"] for s in summary} == set(TASKS) and {s["method"] for s in summary} == {
        "default",
        "bilevel",
        "dense",
    }
    default = by[("noise_schedule", "default", "metric_value")]
    assert default["n"] == 3 and default["mean"] == pytest.approx(np.mean([25.0, 26.1, 27.2]))
    assert default["ci95_low"] < default["mean"] < default["ci95_high"]
    assert by[("reward_lambda", "bilevel", "metric_value")]["mean"] == pytest.approx(81.0)
    assert by[("reward_lambda", "bilevel", "cpu_s")]["mean"] == pytest.approx(47.0)
    assert ("reward_lambda", "bilevel", "fid") not in by  # absent metrics are not summarised
    assert by[("noise_schedule", "dense", "regret")]["mean"] == 0.0
    rows[0]["metric_value"] = None  # a missing value lowers n
    assert {(s["task"], s["method"], s["metric"]): s for s in summarise(rows)}[
        ("noise_schedule", "default", "metric_value")]["n"] == 2
    assert set(summary[0]) == {"task", "method", "metric", "mean", "ci95_low", "ci95_high", "n"}


def test_paired_differences_pair_by_seed_with_verdicts(rows):
    extra = _row("noise_schedule", "default", 7)  # a seed bilevel does not have: left out of the pairs
    extra["metric_value"] = 1000.0
    shuffled = rows[::-1] + [extra]
    paired = {(p["task"], p["method"], p["metric"]): p for p in paired_differences(shuffled)}
    p = paired[("noise_schedule", "default", "metric_value")]  # fid_domain, min: bilevel lower -> bilevel better
    assert p["n"] == 3 and sorted(p["seeds"]) == [0, 1, 2]
    assert p["mean"] == pytest.approx(-5.1) and p["ci95_high"] < 0
    assert (p["verdict"], p["better"]) == ("lower", "bilevel")
    p = paired[("reward_lambda", "default", "metric_value")]  # alignment, max: bilevel higher -> bilevel better
    assert p["mean"] == pytest.approx(5.1) and (p["verdict"], p["better"]) == ("higher", "bilevel")
    p = paired[("reward_lambda", "default", "regret")]  # regret is min: bilevel's is lower
    assert (p["verdict"], p["better"]) == ("lower", "bilevel")
    p = paired[("noise_schedule", "default", "cpu_s")]  # bilevel costs more: the default is better on cost
    assert (p["verdict"], p["better"]) == ("higher", "default")
    p = paired[("reward_lambda", "dense", "metric_value")]  # dense (oracle) higher alignment: dense better
    assert (p["verdict"], p["better"]) == ("lower", "dense")
    assert paired[("noise_schedule", "default", "is")]["verdict"] == "tie"  # identical noise: difference 0
    # a noisy difference whose interval contains 0 is a tie
    noisy = [dict(r) for r in rows if r["task"] == "noise_schedule" and r["method"] in ("bilevel", "default")]
    for r, v in zip(sorted(noisy, key=lambda r: (r["method"], r["seed"])), (20, 25, 30, 24, 26, 28)):
        r["fid"] = float(v)  # bilevel - default by seed: -4, -1, +2
    p = next(p for p in paired_differences(noisy) if p["metric"] == "fid")
    assert p["ci95_low"] < 0 < p["ci95_high"] and (p["verdict"], p["better"]) == ("tie", "tie")
    one = [r for r in noisy if r["seed"] == 0]  # one seed: no interval, a tie
    p = next(p for p in paired_differences(one) if p["metric"] == "metric_value")
    assert p["n"] == 1 and p["ci95_low"] is None and p["verdict"] == "tie"
    assert (
        direction("is_val") == "max"
        and direction("fid_domain_val") == "min"
        and direction("metric_value", "max") == "max"
    )
    assert direction("wall_time_s") == "min" and direction("metric_value") is None


def test_a_task_without_bilevel_pairs_against_its_bilevel_variant(rows):
    """The first look runs ``bilevel_fork`` in place of ``bilevel`` on the noise schedule: that task's paired
    differences (and its report's paired table) take the variant as the reference; a task with ``bilevel`` keeps it."""
    renamed = [dict(r, method="bilevel_fork") if r["task"] == "noise_schedule" and r["method"] == "bilevel" else r
               for r in rows]
    assert task_reference([r for r in renamed if r["task"] == "noise_schedule"]) == "bilevel_fork"
    assert task_reference([r for r in renamed if r["task"] == "reward_lambda"]) == "bilevel"
    assert task_reference([r for r in renamed if r["method"] == "default"]) is None
    paired = {(p["task"], p["method"], p["metric"]): p for p in paired_differences(renamed)}
    p = paired[("noise_schedule", "default", "metric_value")]
    assert p["reference"] == "bilevel_fork" and p["mean"] == pytest.approx(-5.1) and p["better"] == "bilevel_fork"
    assert paired[("reward_lambda", "default", "metric_value")]["reference"] == "bilevel"
    text = markdown_report(renamed)
    assert "**bilevel_fork − baseline**" in text and "**bilevel − baseline**" in text


def test_markdown_report_tables(rows, tmp_path):
    text = markdown_report(rows)
    assert "### noise_schedule" in text and "### reward_lambda" in text
    assert "±" in text and "tie" in text and "bilevel better" in text and "default better" in text
    # (a) mean ± half-width; bilevel's noise-schedule config varies across seeds; one seed prints one number
    assert "| bilevel | 3 | varies (seed 0: tau=0.700, eps=0) |" in text
    assert "| default | 3 | tau=1.00, eps=0 | 26.1 ± 2.7 | 26.6 ± 2.7 |" in text
    single = markdown_report([r for r in rows if r["seed"] == 0])
    assert (
        "| default | 1 | tau=1.00, eps=0 | 25.0 | 25.5 |" in single
        and "±" not in single.split("| method |")[1].split("**bilevel")[0]
    )
    # (b) paired differences: bilevel - default on fid_domain, interval, verdict
    assert "| default | 3 | -5.10 [-5.3, -4.9] bilevel better |" in text
    # (c) the oracle sweep, with the validation-selected and the test-best configs marked
    assert "**Oracle (dense sweep)**" in text and "| lam=100 | 81.0 ± 2.5 | 82.0 ± 2.5 | ★◆ |" in text
    assert "| tau=0.700, eps=0 | 21.0 ± 2.5 |" in text
    # the one-seed table still works; COLUMNS carries the new keys, not the curves
    assert "| bilevel |" in markdown_table([r for r in rows if r["seed"] == 0])
    assert {"seed", "mode", "metric_value_val", "fid_val", "is_val", "alignment_val", "reward_val", "cpu_s",
            "regret"} <= set(COLUMNS) and not {"curve", "sweep"} & set(COLUMNS)
    path = write_summary(rows, str(tmp_path))
    data = json.loads(Path(path).read_text())
    assert data["summary"] == json.loads(json.dumps(summarise(rows)))
    assert {p["verdict"] for p in data["paired"]} >= {"tie", "lower", "higher"}


def test_sweep_summary_groups_configs_over_seeds(rows):
    configs = sweep_summary([r for r in rows if r["task"] == "reward_lambda" and r["method"] == "dense"])
    assert [c["config"] for c in configs] == [{"lam": lam} for lam in LAMS]
    assert configs[0]["test"]["n"] == 3 and configs[0]["test"]["mean"] == pytest.approx(51.0)
    assert configs[0]["test_values"] == pytest.approx([50.0, 51.0, 52.0])


def test_summary_plots_are_written(rows, tmp_path):
    paths = make_summary_plots(rows, str(tmp_path))
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["noise_schedule_anytime.png", "noise_schedule_oracle.png", "reward_lambda_anytime.png",
                     "reward_lambda_oracle.png"]
    assert all(os.path.getsize(p) > 1000 for p in paths)
    assert anytime_plot(rows, "nope", str(tmp_path / "x.png")) is None
    no_sweep = [{k: v for k, v in r.items() if k != "sweep"} for r in rows]
    assert oracle_plot(no_sweep, "reward_lambda", str(tmp_path / "y.png")) is None
    # a multi-parameter sweep without the default config in it falls back to every config
    off = [dict(r, sweep=[p for p in r["sweep"] if p["config"]["eps"] != 0.0]) if r.get("sweep") and
           r["task"] == "noise_schedule" else r for r in rows]
    off = [dict(r, best_config={"tau": 1.0, "eps": 0.5}) if r["method"] == "default" else r for r in off]
    assert os.path.getsize(oracle_plot(off, "noise_schedule", str(tmp_path / "z.png"))) > 1000


def test_per_run_plots_still_work_with_multi_seed_rows(rows, tmp_path):
    from types import SimpleNamespace

    from ray_bilevel.benchmark.plots import make_plots

    runs = [SimpleNamespace(spec=SimpleNamespace(bilevel=r["method"] == "bilevel", metric=f"{r['metric']}_val"), row=r,
                            curve=[], history=[{"outer_steps": i, "lam": 1.0 + i} for i in range(3)],
                            best_config=r["best_config"], artifacts=None) for r in rows]
    paths = make_plots(runs, str(tmp_path))
    assert sorted(os.path.basename(p) for p in paths) == [
        "noise_schedule_metric_vs_time.png", "reward_lambda_bilevel_trajectory.png", "reward_lambda_metric_vs_time.png"]
    assert all(os.path.getsize(p) > 1000 for p in paths)


def test_write_outputs_writes_every_file_from_multi_seed_runs(rows, tmp_path, capsys):
    import csv
    import dataclasses
    from types import SimpleNamespace

    from ray_bilevel.benchmark.outputs import write_outputs

    @dataclasses.dataclass
    class Cfg:
        out: str
        plots: bool = True

    runs = [SimpleNamespace(spec=SimpleNamespace(bilevel=r["method"] == "bilevel", metric=f"{r['metric']}_val"),
                            row=dict(r), trials=[{"config": r["best_config"], "cpu_s": r["cpu_s"], "error": None}],
                            curve=[], history=[], best_config=r["best_config"], artifacts=None, final_metrics={})
            for r in rows]
    table = write_outputs(runs, Cfg(str(tmp_path)), efficiency={"utilisation": 0.9, "cores": 2})
    assert capsys.readouterr().out.rstrip().endswith(table.rstrip()) and "±" in table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved) == len(rows) and saved[-1]["sweep"] == rows[-1]["sweep"] and saved[0]["curve"] == rows[0]["curve"]
    with open(tmp_path / "results.csv") as fh:
        assert next(csv.reader(fh)) == list(COLUMNS)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["utilisation"] == 0.9 and "commit" in info and "dirty" in info and info["argv"]
    assert {"summary", "paired"} <= set(json.loads((tmp_path / "summary.json").read_text()))
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert set(curves["reward_lambda"]["bilevel"]) == {"0", "1", "2"}
    assert (tmp_path / "plots" / "reward_lambda_anytime.png").exists() and (tmp_path / "table.md").read_text() == table


def test_benchmarks_md_on_a_results_folder(rows, tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(rows))
    (tmp_path / "run_info.json").write_text(json.dumps({
        "argv": [str(ROOT / "benchmarks" / "compare.py"), "--preset", "smoke", "--seeds", "0,1,2", "--out", "r"],
        "commit": {"sha": "0123456789abcdef", "dirty": True}, "date": "2025-01-01T00:00:00+00:00",
        "machine": "x86_64", "cpus": 2, "cpu_utilisation": 0.93}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "benchmarks_md.py"), str(tmp_path), "--title", "Smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith("## Smoke\n")
    assert "python benchmarks/compare.py --preset smoke --seeds 0,1,2 --out r" in out
    assert "0123456789abcdef" in out and "dirty tree" in out and "2 CPUs" in out and "cpu_utilisation: 0.93" in out
    assert "±" in out and "tie" in out
    assert "](plots/noise_schedule_anytime.png)" in out and "](plots/reward_lambda_oracle.png)" in out
    assert (tmp_path / "plots" / "reward_lambda_oracle.png").stat().st_size > 1000
    target = tmp_path / "docs" / "section.md"
    target.parent.mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "benchmarks_md.py"), str(tmp_path), "--out",
                           str(target), "--command", "python benchmarks/compare.py --seeds 0,1,2"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = target.read_text()
    assert (
        "python benchmarks/compare.py --seeds 0,1,2\n" in written and "](../plots/noise_schedule_oracle.png)" in written
    )
