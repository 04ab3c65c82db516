"""The benchmark harness behind ``benchmarks/compare.py``: every method on the same task, with the same budget
and evaluator, one table. What runs on a task, and its budget, the task declares (:mod:`ray_bilevel.space`)."""
from __future__ import annotations

from ray_bilevel.benchmark.methods import GENERIC_METHODS, methods_for
from ray_bilevel.benchmark.runner import TASKS, BenchmarkConfig, IncompleteRunError, MethodRun, run_benchmark

__all__ = ["GENERIC_METHODS", "TASKS", "BenchmarkConfig", "IncompleteRunError", "MethodRun", "methods_for",
           "run_benchmark"]
