"""The benchmark harness behind ``benchmarks/compare.py``: every method on the same task, with the
same budget and evaluator, one table (DESIGN.md "The benchmark")."""
from __future__ import annotations

from ray_bilevel.benchmark.methods import ALL_METHODS, Profile, methods_for, profile_for
from ray_bilevel.benchmark.runner import TASKS, BenchmarkConfig, MethodRun, run_benchmark

__all__ = ["ALL_METHODS", "TASKS", "BenchmarkConfig", "MethodRun", "Profile", "methods_for", "profile_for", "run_benchmark"]
