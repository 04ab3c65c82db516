"""The peers a practitioner picks today (ASHA, Optuna TPE / GP, PB2) as harness methods, and the compute budget
(``--budget Nx``): equal counted compute per search method, trials stopped at a rung booked for what they ran."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_bilevel.benchmark import run_benchmark
from ray_bilevel.benchmark.methods import methods_for, offered_methods
from ray_bilevel.tune.budget import BudgetLimiter

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compare_cli_peers", ROOT / "benchmarks" / "compare.py")
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)

PEERS = ["asha", "optuna_tpe", "optuna_gp", "pb2"]


def test_budget_flag_parses_and_refuses_nonsense():
    assert compare.parse_args(["--budget", "4x"]).trials == 4
    assert compare.parse_args(["--budget", "3"]).trials == 3
    for bad in ("0x", "x", "2.5x", "lots"):
        with pytest.raises(Exception, match="--budget"):
            compare.parse_args(["--budget", bad])
    with pytest.raises(Exception, match="give one of them"):
        compare.parse_args(["--budget", "4x", "--trials", "4"])


def test_every_task_offers_the_peers_but_compares_the_papers_methods_by_default():
    for task in ("noise_schedule", "reward_lambda", "toy"):
        assert set(PEERS) <= set(offered_methods(task))
    assert not set(PEERS) & set(methods_for("toy"))


class _Fixed:
    """A stand-in searcher: always the same point."""

    metric, mode = "loss", "min"

    def __init__(self) -> None:
        self.told: list[str] = []

    def set_search_properties(self, metric, mode, config, **spec):
        return True

    def suggest(self, trial_id):
        return {"x": 1.0}

    def on_trial_result(self, trial_id, result):
        pass

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told.append(trial_id)


def test_budget_limiter_stops_starting_when_the_next_trial_would_pass_the_budget():
    limiter = BudgetLimiter(_Fixed(), budget=3, in_trials=True, iterations=4)  # type: ignore[arg-type]
    assert limiter.suggest("a") == {"x": 1.0} and limiter.suggest("b") == {"x": 1.0}  # cost unknown: concurrency rules
    limiter.on_trial_result("a", {"cost_flops": 30.0, "training_iteration": 1, "complete": False})
    assert limiter.full == 120.0  # extrapolated from a's first iteration (an over-estimate: building is front-loaded)
    # stopped at a rung
    limiter.on_trial_complete("a", {"cost_flops": 30.0, "training_iteration": 1, "complete": False, "done": True})
    limiter.on_trial_complete("b", {"cost_flops": 100.0, "training_iteration": 4, "done": True})
    assert limiter.full == 100.0 and limiter.spent == 130.0
    assert limiter.suggest("c") == {"x": 1.0}  # 130 + 100 (c) <= 300
    assert limiter.suggest("d") is None  # 130 + 100 (c running) + 100 > 300: wait for c
    limiter.on_trial_complete("c", {"cost_flops": 40.0, "training_iteration": 1, "done": False})
    assert limiter.suggest("d") == {"x": 1.0}  # 170 + 100 <= 300: c's unspent share went to d
    limiter.on_trial_complete("d", {"cost_flops": 100.0, "training_iteration": 4, "done": True})
    assert limiter.suggest("e") == "FINISHED"  # 270 + 100 > 300, nothing running
    with pytest.raises(Exception, match="budget"):
        BudgetLimiter(_Fixed(), budget=0)  # type: ignore[arg-type]


def test_budget_gives_every_search_method_the_same_compute_and_asha_more_trials(ray_local, tmp_path):
    """``--budget 4x`` on the toy task: every search method's counted compute is within one full trial of 4 default
    trainings; ASHA starts more trials than 4 for it, and each trial it stopped at a rung booked only the steps it
    ran."""
    cfg = compare.parse_args(["--task", "toy", "--preset", "smoke", "--budget", "4x", "--out", str(tmp_path),
                              "--methods", "default,random,bayes,asha,optuna_tpe,optuna_gp,pb2", "--no-plots",
                              "--verbose", "0"])
    runs = {r.row["method"]: r for r in run_benchmark(cfg)}
    full = runs["default"].row["cost_flops"]
    assert full > 0
    for method, run in runs.items():
        if method == "default":
            continue
        assert 3 * full < run.row["cost_flops"] <= 4 * full * (1 + 1e-9), (method, run.row["cost_flops"], full)
        assert run.row["lower_steps"] is not None and run.row["metric_value"] is not None
    asha = runs["asha"]
    per_step = full / runs["default"].row["lower_steps"]  # the toy books its compute per lower step
    stopped = [t for t in asha.finished if not t["done"]]
    assert asha.row["trials"] > 4 and stopped, asha.finished
    assert asha.row["lower_steps"] < asha.row["trials"] * runs["default"].row["lower_steps"]
    for t in asha.finished:  # stopped or not, a trial costs the steps it ran
        assert t["cost_flops"] == pytest.approx(t["lower_steps"] * per_step)
    assert all(t["done"] for t in asha.incumbents)  # a trial stopped at a rung is never the answer
    rows = json.loads((tmp_path / "results.json").read_text())
    assert {r["method"] for r in rows} == set(runs) and all("lower_steps" in r and "cost_flops" in r for r in rows)


@pytest.mark.slow
def test_compare_smoke_runs_the_peers_on_both_tasks(tmp_path):
    """``compare.py --preset smoke --budget 4x --methods default,bilevel,asha,optuna_tpe,optuna_gp,pb2``: every method
    applies to both tasks; rows carry trials, lower_steps and cost_flops, and asha stays within 4 trainings' compute.
    Whether ASHA stops a trial here depends on the draws (a trial is stopped at its rung only if it is worse than the
    median of the earlier ones there; on these smoke draws none is): the toy test above checks the stopped trials'
    booking and that asha's lower_steps fall below trials × a full run."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "compare.py"),
            "--preset",
            "smoke",
            "--methods",
            "default,bilevel,asha,optuna_tpe,optuna_gp,pb2",
            "--budget",
            "4x",
            "--out",
            str(tmp_path),
            "--num-cpus",
            "2",
            "--verbose",
            "0",
            "--no-plots",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())
    for task in ("noise_schedule", "reward_lambda"):
        sub = {r["method"]: r for r in rows if r["task"] == task}
        assert list(sub) == ["default", "bilevel", *PEERS]
        for method, r in sub.items():
            assert r["trials"] >= 1 and r["cost_flops"] > 0 and r["metric_value"] is not None, (task, method)
        full = sub["default"]["lower_steps"]
        assert sub["asha"]["lower_steps"] <= sub["asha"]["trials"] * full and sub["asha"]["trials"] >= 2
        assert sub["asha"]["cost_flops"] <= 4 * sub["default"]["cost_flops"] * (1 + 1e-9)  # 4 trainings' compute


def test_budget_set_replaces_the_asha_settings_and_refuses_nonsense():
    from ray_bilevel.benchmark.runner import _task_plan
    from ray_bilevel.space import Budget

    cfg = compare.parse_args(["--task", "toy", "--preset", "smoke", "--budget-set", "asha_grace=2",
                              "--budget-set", "asha_eta=3"])
    assert cfg.budget_overrides == {"asha_grace": 2, "asha_eta": 3}
    budget = _task_plan("toy", cfg).budget
    assert (budget.asha_grace, budget.asha_eta) == (2, 3.0) and isinstance(budget.asha_eta, float)
    assert budget.asha_max_trials == Budget(trials=1).asha_max_trials  # the rest stays
    for bad, match in (({"trials": 3}, "not a settable"), ({"asha_grace": 1.5}, "whole number"),
                       ({"asha_eta": 1}, "> 1"), ({"iterations": 0}, ">= 1"), ({"asha_grace": "two"}, "whole")):
        with pytest.raises(Exception, match=match):
            Budget(trials=2).replaced(bad)
    with pytest.raises(Exception, match="--budget-set takes KEY=VALUE"):
        compare.parse_args(["--budget-set", "asha_grace"])


def test_validation_only_chooses_on_validation_and_never_evaluates_on_test(ray_local, tmp_path, monkeypatch):
    """``--validation-only`` (the development-seed studies of hand choices, studies/select_asha.py): every method
    still chooses its answer on validation, and the reporting on test never runs."""
    from ray_bilevel.benchmark import runner

    def refuse(*args, **kwargs):
        raise AssertionError("the test-split reporting ran under --validation-only")

    monkeypatch.setattr(runner, "evaluate_runs", refuse)
    cfg = compare.parse_args(["--task", "toy", "--preset", "smoke", "--methods", "default,asha", "--seeds", "100",
                              "--budget-set", "asha_grace=2", "--validation-only", "--out", str(tmp_path),
                              "--no-plots", "--verbose", "0"])
    assert cfg.validation_only
    rows = {r.row["method"]: r.row for r in run_benchmark(cfg)}
    for row in rows.values():
        assert row["metric_value_val"] is not None and row["metric_value"] is None and row.get("regret") is None
    assert rows["asha"]["cost_flops"] > 0 and rows["asha"]["trials"] >= 1
