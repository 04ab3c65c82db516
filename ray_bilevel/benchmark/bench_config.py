"""The options of one benchmark run (``benchmarks/compare.py`` / ``ray-bilevel compare``), as a dataclass."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ray_bilevel.tasks import PAPER_TASKS

__all__ = ["TASKS", "BenchmarkConfig"]

#: The tasks of ``--task all`` (the registry's paper applications).
TASKS = PAPER_TASKS


@dataclasses.dataclass
class BenchmarkConfig:
    """Options of ``benchmarks/compare.py`` (see its ``--help``)."""

    tasks: Sequence[Any] = TASKS  # registered names or Task classes
    preset: str = "quick"
    methods: Sequence[str] | None = None
    trials: int | str | None = None  # per searcher; "paper": the space's Bayesian n_calls
    seed: int = 0
    seeds: Sequence[int] | None = None  # several seeds (task seed and searcher seed); None: [seed]
    address: str | None = None
    num_cpus: int | None = None
    resources: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"cpu": 1.0})
    storage_path: str | None = None
    out: str = "benchmark_results"
    resume: bool = False
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # fields of every task's Budget replaced for this run (ray_bilevel.space.BUDGET_SETTABLE), e.g. asha_grace
    budget_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    verbose: int = 1
    # choose on validation and stop there: no test-split reporting (studies of hand choices on development seeds)
    validation_only: bool = False
    # the command without flags (README): its "bilevel" is each task's supported variant (BenchmarkSpec.bilevel_method)
    first_look: bool = False
    plots: bool = True
    # methods run at once on one Ray instance (>1: each method's wall time then includes waiting for cores other
    # methods hold; compare cost by CPU-seconds); None: as many as trials fit at once (compare.py's default)
    concurrent_methods: int | None = 1
