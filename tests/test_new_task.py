"""A task owns everything about itself: a new bilevel problem defined entirely in this file — its search
space, baselines (one of its own), metric and budgets — runs through ``BilevelTrainable``, a searcher and the
compare harness without touching any file of the package.

The problem: ``y*(x) = argmin_y ½ (y − a x)²`` = a·x, upper ``f(x, y) = (y − c)² + ρ x²`` (a = 2, c = 3,
ρ = 0.1), so ``F(x) = (2x − 3)² + 0.1 x²`` has its minimum at x* = 12/8.2 ≈ 1.4634.
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from ray_bilevel.benchspec import BenchmarkSpec
from ray_bilevel.estimators.penalty import penalty_combine
from ray_bilevel.space import Budget, Param, SearchSpace, TaskMethod
from ray_bilevel.tasks import Task

A, C, RHO = 2.0, 3.0, 0.1
X_STAR = A * C / (A * A + RHO)


class LineTask(Task):
    """Bilevel problem on a line, solved by Algorithm 1 with the penalty hypergradient (eq. 4)."""

    name = "line_task_in_a_test_file"
    metric = "upper"
    mode = "min"
    metric_modes: ClassVar[Mapping[str, str]] = {"distance": "min"}

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.x = float(config.get("x", 0.0))
        self.shift = float(config.get("shift", 0.0))  # used by this task's own baseline only
        self.y = self.z = 0.0
        self.steps = 0
        self.outer = 0

    @classmethod
    def search_space(cls) -> SearchSpace:
        return SearchSpace(params=(Param("x", -1.0, 4.0, default=0.0, grid=(0.0, 1.0, 2.0, 3.0)),), n_calls=4,
                           acq_func="EI")

    def hyperparameters(self) -> dict[str, float]:
        return {"x": self.x}

    def set_hyperparameters(self, values: Mapping[str, float]) -> None:
        self.x = float(values.get("x", self.x))

    @property
    def lower_budget(self) -> int:
        return 40

    @property
    def outer_budget(self) -> int:
        return 40

    def lower_step(self) -> dict[str, float]:
        self.y -= 0.5 * (self.y - A * (self.x + self.shift))
        self.steps += 1
        return {"lower_loss": 0.5 * (self.y - A * self.x) ** 2}

    def hyper_step(self) -> dict[str, float]:
        gamma = 100.0
        for _ in range(5):
            self.lower_step()
        for _ in range(50):  # z ≈ argmin (z − c)² + γ ½ (z − a x)²
            self.z -= 0.01 * (2 * (self.z - C) + gamma * (self.z - A * self.x))
        import torch

        grad = penalty_combine(torch.tensor(2 * RHO * self.x), torch.tensor(-A * (self.z - A * self.x)),
                               torch.tensor(-A * (self.y - A * self.x)), gamma)
        self.x -= 0.05 * float(grad)
        self.outer += 1
        return {"hypergrad_norm": abs(float(grad))}

    def evaluate(self, final: bool = False) -> dict[str, float]:
        return {"upper": (self.y - C) ** 2 + RHO * self.x**2, "distance": abs(self.x - X_STAR)}

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "z": self.z, "steps": self.steps, "outer": self.outer}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.x, self.y, self.z = float(state["x"]), float(state["y"]), float(state["z"])
        self.steps, self.outer = int(state["steps"]), int(state["outer"])


class ShiftedLineTask(LineTask):
    """This task's own baseline: the lower level sees x + 0.5 (a deliberately biased model)."""

    name = "shifted_line_task_in_a_test_file"

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__({**config, "shift": 0.5})


#: What the benchmark runs on LineTask (a user keeps this beside the task): its default methods, one budget at every
#: preset, and its own baseline (a grid over ShiftedLineTask, reported under LineTask).
LineTask.benchmark = BenchmarkSpec(
    baselines=("default", "bilevel", "random", "bayes", "shifted_grid"),
    budgets={p: Budget(trials=3, iterations=2, max_concurrent=1) for p in ("smoke", "quick", "paper")},
    task_methods={"shifted_grid": TaskMethod(task=ShiftedLineTask, space=SearchSpace(
        params=(Param("x", -1.0, 4.0, default=0.0, grid=(0.0, 1.5, 3.0)),)), searcher="grid")})


@pytest.fixture(autouse=True, scope="module")
def _pickle_this_module_by_value():
    """Ray workers cannot import a test file: ship its classes by value, as a user's notebook does."""
    import ray.cloudpickle as cp

    cp.register_pickle_by_value(sys.modules[__name__])
    yield
    cp.unregister_pickle_by_value(sys.modules[__name__])


def test_the_task_declares_what_the_harness_needs():
    from ray_bilevel.benchmark.methods import methods_for, offered_methods

    assert offered_methods(LineTask) == ("default", "bilevel", "grid", "random", "bayes", "tpe", "greedy", "pbt",
                                         "dense", "bilevel_retrain", "bilevel_fork", "asha", "optuna_tpe", "optuna_gp",
                                         "pb2", "pbt_replay", "pb2_replay", "shifted_grid")
    assert methods_for(LineTask) == LineTask.benchmark.baselines
    assert LineTask.metric_mode("distance") == "min" and LineTask.metric_mode("upper") == "min"


def test_new_task_through_bilevel_trainable_and_a_searcher(ray_local, tmp_path):
    from ray import tune

    from ray_bilevel import BilevelTrainable, FixedHyperTrainable
    from ray_bilevel.tune.searchers import make_searcher

    bilevel = tune.run(BilevelTrainable, config={"task": LineTask}, stop={"done": True}, storage_path=str(tmp_path),
                       verbose=0, metric="upper", mode="min")
    last = bilevel.trials[0].last_result
    assert last["done"] and abs(last["x"] - X_STAR) < 0.05, last  # the penalty hypergradient finds x*

    plan = make_searcher("bayes", LineTask.search_space(), "upper", "min", seed=0, num_samples=4, n_initial_points=2)
    grid = tune.Tuner(FixedHyperTrainable, param_space={"task": LineTask, **plan.param_space},
                      tune_config=plan.tune_config("upper", "min"),
                      run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    assert len(grid) == 4 and grid.num_errors == 0
    assert all(math.isfinite(r.metrics["upper"]) for r in grid)


def test_new_task_through_the_compare_harness(ray_local, tmp_path):
    from ray_bilevel.benchmark import BenchmarkConfig, run_benchmark

    cfg = BenchmarkConfig(tasks=[LineTask], preset="smoke", out=str(tmp_path), verbose=0, plots=False)
    run_benchmark(cfg)
    rows = {r["method"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    assert list(rows) == list(LineTask.benchmark.baselines)
    assert {r["task"] for r in rows.values()} == {LineTask.name}
    assert rows["random"]["trials"] == rows["bayes"]["trials"] == 3 and rows["shifted_grid"]["trials"] == 3
    assert rows["bilevel"]["metric_value"] < rows["default"]["metric_value"]
    assert set(rows["shifted_grid"]["best_config"]) == {"x"}
    paired = [line for line in (tmp_path / "table.md").read_text().splitlines()
              if line.startswith("| shifted_grid | 1 |") and "no interval" in line]
    assert paired  # a task's own baseline is in the paired-difference table (one seed: no interval)
