"""The benchmark harness behind ``benchmarks/compare.py``: every method on the same task, with the same budget
and evaluator, one table. What runs on a task, and its budget, the task declares (:mod:`ray_bilevel.space`).

Modules by job: :mod:`.methods` (what one method's Tune experiment is), :mod:`.runner` (running one method, and the
benchmark loop), :mod:`.resume` (the method folder's state file, ``--resume``), :mod:`.summary` (a ResultGrid to a
:class:`MethodRun`), :mod:`.evaluation` (reporting on the test split, regret), :mod:`.stats` and :mod:`.tables`
(statistics and markdown tables of the result rows), :mod:`.outputs` (writing the files), :mod:`.plots`,
:mod:`.store` / :mod:`.snapshot` (files written whole), :mod:`.pool` (methods at once), :mod:`.cli`."""
from __future__ import annotations

from ray_bilevel.benchmark.methods import GENERIC_METHODS, methods_for
from ray_bilevel.benchmark.resume import IncompleteRunError
from ray_bilevel.benchmark.runner import TASKS, BenchmarkConfig, run_benchmark
from ray_bilevel.benchmark.summary import MethodRun

__all__ = ["GENERIC_METHODS", "TASKS", "BenchmarkConfig", "IncompleteRunError", "MethodRun", "methods_for",
           "run_benchmark"]
