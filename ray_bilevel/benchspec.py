"""What the benchmark runs on a task: its default methods, budgets, oracle design and task-specific baselines.

A :class:`BenchmarkSpec` lives in the task's folder (``tasks/<name>/benchmark.py``) and is attached to the task class
as ``Task.benchmark``; only :mod:`ray_bilevel.benchmark` reads it. The task itself (the problem and its search space,
:class:`~ray_bilevel.tasks.base.Task`) never does, and neither does :mod:`ray_bilevel.tune`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from ray_bilevel.config import ConfigError
from ray_bilevel.space import DEFAULT_BUDGETS, Budget, SearchSpace, TaskMethod, dense_points

__all__ = ["BenchmarkSpec", "GENERIC_METHODS", "PAPER_METHODS"]

#: The paper's comparison: the methods a task compares by default (``BenchmarkSpec.baselines``).
PAPER_METHODS = ("default", "bilevel", "grid", "random", "bayes", "tpe", "greedy", "pbt", "dense")
#: Methods the benchmark can run on any task with a search space (``default`` and ``bilevel`` on any task): the paper's,
#: and the peers a practitioner picks today (multi-fidelity ASHA, Optuna's TPE and GP samplers, PB2), and the population
#: methods' schedules replayed from scratch.
GENERIC_METHODS = (*PAPER_METHODS, "bilevel_retrain", "bilevel_fork", "asha", "optuna_tpe", "optuna_gp", "pb2",
                   "pbt_replay", "pb2_replay")


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
    """The benchmark's plan for one task.

    Attributes:
        baselines: the methods compared by default (those the task can run).
        budgets: the :class:`~ray_bilevel.space.Budget` per preset; a preset not named here gets
            :data:`~ray_bilevel.space.DEFAULT_BUDGETS`'.
        oracle: the ``dense`` method's sweep at a preset, ``oracle(preset)``; its point best on validation, reported
            on test, is the reference of every method's regret: a design fixed before looking at any test value.
            ``None``: :func:`~ray_bilevel.space.dense_points` of the search space (13 evenly (log-)spaced values of a
            1-D space; for more parameters a slice, so a task with several should cover its whole box with
            :func:`~ray_bilevel.space.space_filling_points`, as the noise schedule does).
        task_methods: baselines of the task's own beyond :data:`GENERIC_METHODS`, by method name (e.g. the λ task's
            weighted sum).
        fork_moves: the coordinates the ``bilevel_fork`` method probes and their moves (``{name: h}``, chosen on
            development seeds; ``None``: every parameter of the search space, 10 % of its range;
            :class:`~ray_bilevel.tune.fork.ForkStepTrainable`).
        bilevel_method: the bilevel variant the task's evidence supports, chosen on development seeds: what
            compare.py's first look (the command without flags) runs as its bilevel method. ``"bilevel"`` (the
            trainable of the paper's algorithm) unless a variant beat it there.
    """

    baselines: tuple[str, ...] = PAPER_METHODS
    budgets: Mapping[str, Budget] = dataclasses.field(default_factory=dict)
    oracle: Callable[[str], list[dict[str, float]]] | None = None
    task_methods: Mapping[str, TaskMethod] = dataclasses.field(default_factory=dict)
    fork_moves: Mapping[str, float] | None = None
    bilevel_method: str = "bilevel"

    def budget(self, preset: str) -> Budget:
        """The budget at ``preset`` (trials per searcher, Tune iterations per trial, overrides)."""
        if preset in self.budgets:
            return self.budgets[preset]
        if preset not in DEFAULT_BUDGETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(DEFAULT_BUDGETS)}.")
        return DEFAULT_BUDGETS[preset]

    def oracle_points(self, space: SearchSpace | None, preset: str = "quick") -> list[dict[str, float]]:
        """The ``dense`` method's sweep at ``preset`` over ``space`` (the task's search space)."""
        if self.oracle is not None:
            return self.oracle(preset)
        return dense_points(space) if space is not None else []

    def methods(self, space: SearchSpace | None) -> tuple[str, ...]:
        """Every method the benchmark can run on a task with this search space (``None``: no searcher)."""
        generic = GENERIC_METHODS if space is not None else ("default", "bilevel", "bilevel_retrain")
        return tuple(generic) + tuple(m for m in self.task_methods if m not in generic)
