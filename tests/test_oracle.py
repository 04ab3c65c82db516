"""The dense oracle as a method like the others (issue 20, item 4): regret against the test value of its
validation-chosen answer (ray_bilevel.benchmark.evaluation.add_regret), and the noise schedule's space-filling sweep
over all four schedule parameters, fixed before any test value was seen (tasks/noise_schedule/settings.py)."""
from __future__ import annotations

import math

import pytest

from ray_bilevel.benchmark.evaluation import add_regret
from ray_bilevel.benchmark.tables import markdown_report
from ray_bilevel.config import ConfigError
from ray_bilevel.schedules import NAMES, NoiseSchedule
from ray_bilevel.space import Param, SearchSpace, space_filling_points
from ray_bilevel.tasks import get_task
from ray_bilevel.tasks.noise_schedule import benchmark as ns_benchmark, settings


def _row(method: str, seed: int, test: float, mode: str = "min", sweep: list | None = None) -> dict:
    return {"task": "t", "method": method, "seed": seed, "preset": "smoke", "metric": "m", "mode": mode,
            "metric_value": test, "metric_value_val": test + 1.0, "regret": None, "best_config": {"x": 1.0},
            "trials": 1, "errors": 0, "cpu_s": 1.0, "wall_time_s": 1.0, "final_eval_s": 0.1,
            **({"sweep": sweep} if sweep is not None else {})}


def test_regret_is_against_the_oracles_validation_chosen_answer_not_the_sweeps_test_best():
    # the sweep's answer (best on validation: x=2, val 9) has test 20; its test-best (x=1, test 10) is no reference
    sweep = [{"config": {"x": 1.0}, "metric_value": 10.0, "metric_value_val": 30.0},
             {"config": {"x": 2.0}, "metric_value": 20.0, "metric_value_val": 9.0}]
    rows = [_row("dense", 0, 20.0, sweep=sweep), _row("bilevel", 0, 25.0), _row("random", 0, 15.0),
            _row("bilevel", 1, 5.0)]  # seed 1 has no oracle
    add_regret(rows)
    assert [r["regret"] for r in rows] == [0.0, 5.0, -5.0, None]  # random beat the sweep: negative
    up = [_row("dense", 0, 80.0, mode="max"), _row("bilevel", 0, 85.0, mode="max"), _row("grid", 0, 70.0, mode="max")]
    add_regret(up)
    assert [r["regret"] for r in up] == [0.0, -5.0, 10.0]  # higher is better: >= 0 is still worse


def test_the_report_says_what_a_negative_regret_means():
    rows = [_row("dense", 0, 20.0), _row("bilevel", 0, 15.0)]
    add_regret(rows)
    text = markdown_report(rows)
    assert "negative: the method beat the sweep's validation-chosen answer" in text
    assert "best test value" not in text


@pytest.mark.parametrize("preset", ["smoke", "quick", "paper"])
def test_noise_schedule_oracle_is_a_feasible_deterministic_space_filling_design(preset):
    task = get_task("noise_schedule")
    points = task.benchmark.oracle_points(task.search_space(), preset)
    assert points == ns_benchmark.oracle_points(preset)  # the same design every call (fixed seed)
    assert len(points) == ns_benchmark.ORACLE_DESIGN_POINTS[preset] + 1 and (len(points) >= 25 or preset == "smoke")
    space = settings.search_space()
    assert points[0] == space.defaults()
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    for p in space.params:  # Latin hypercube: the n design points fall one in each of n strata of every parameter
        n = len(points) - 1
        strata = sorted(min(n - 1, math.floor((pt[p.name] - p.low) / (p.high - p.low) * n)) for pt in points[1:])
        assert strata == list(range(n)), (p.name, strata)
    for T in (100, 1000):  # the smoke preset's T and the others'
        schedule = NoiseSchedule("cosine", "chen2023", T)
        for point in points:
            assert set(point) == set(NAMES)
            assert all(q.low <= point[q.name] <= q.high for q in space.params), point
            schedule.set_hyperparameters(point)  # raises a ConfigError on an infeasible schedule


def test_the_dense_method_runs_the_presets_design_and_unknown_presets_are_refused():
    from ray_bilevel.benchmark.methods import build_experiment

    task = get_task("noise_schedule")
    for preset, n in (("smoke", 13), ("quick", 25)):
        spec = build_experiment("noise_schedule", "dense", {"task": "noise_schedule", "preset": preset, "seed": 0},
                                "fid_domain_val", "min", 2, task.benchmark.budget(preset), 0, 1)
        assert spec.trials == spec.num_samples == n
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        ns_benchmark.oracle_points("huge")


def test_space_filling_points_follow_the_prior_scale_and_refuse_an_empty_design():
    space = SearchSpace(params=(Param("lam", 0.01, 100.0, log=True, default=1.0),))
    values = sorted(p["lam"] for p in space_filling_points(space, 8, seed=3)[1:])
    # log prior: one point in each of 8 equal strata of log10(lam) over [-2, 2]
    assert [math.floor((math.log10(v) + 2) / 4 * 8) for v in values] == list(range(8))
    with pytest.raises(ConfigError, match="n >= 1"):
        space_filling_points(space, 0)
