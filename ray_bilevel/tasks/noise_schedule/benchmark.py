"""The benchmark's plan for the noise-schedule task: default methods, budgets and the oracle design (read only by
:mod:`ray_bilevel.benchmark`, through ``NoiseScheduleTask.benchmark``)."""
from __future__ import annotations

from ray_bilevel.benchspec import BenchmarkSpec
from ray_bilevel.config import ConfigError
from ray_bilevel.space import Budget, space_filling_points
from ray_bilevel.tasks.noise_schedule.settings import search_space

__all__ = ["ORACLE_DESIGN_POINTS", "ORACLE_DESIGN_SEED", "oracle_points", "BASELINES", "BUDGETS", "FORK_MOVES",
           "SPEC"]

#: Points of the dense sweep's Latin hypercube per preset (beside the default schedule): at least 25 points in all for
#: the compared presets, fewer at smoke, where trials last seconds and only the plumbing is tested.
ORACLE_DESIGN_POINTS: dict[str, int] = {"smoke": 12, "quick": 24, "paper": 24}
#: Seed of that design, fixed with it before any test value was seen (and never re-drawn after looking at results).
ORACLE_DESIGN_SEED = 0


def oracle_points(preset: str = "quick") -> list[dict[str, float]]:
    """The dense sweep (the ``dense`` method; its validation-chosen answer is the regret reference): the default
    schedule plus a space-filling design over all four parameters (start, end, tau, eps) of :func:`search_space`, a
    scrambled Latin hypercube of ``ORACLE_DESIGN_POINTS[preset]`` points (25 in all at quick and paper, 13 at smoke)
    with the fixed seed ``ORACLE_DESIGN_SEED`` (:func:`~ray_bilevel.space.space_filling_points`).

    The design (size, box, seed) was fixed before looking at any test value, and covers the box the searchers
    search, ``end`` and ``start`` included, where they found their answers (issue 20: the earlier sweep varied tau
    and start at end = 1 only, and two searchers beat it). Every point is a feasible schedule: the box keeps
    start <= 0.4 < 0.8 <= end <= 1, tau >= 1 and eps > 0, and each point passes ``NoiseSchedule.check_feasible``
    (tests/test_oracle.py)."""
    if preset not in ORACLE_DESIGN_POINTS:
        raise ConfigError(f"unknown preset {preset!r} for the noise-schedule oracle; choose one of "
                          f"{sorted(ORACLE_DESIGN_POINTS)}.")
    return space_filling_points(search_space(), ORACLE_DESIGN_POINTS[preset], seed=ORACLE_DESIGN_SEED)


#: The paper's comparison (docs/algorithms.md §5): default schedule, greedy grid, random, Bayesian, plus TPE, PBT and
#: the dense oracle sweep (the reference of every method's regret).
BASELINES = ("default", "bilevel", "greedy", "random", "bayes", "tpe", "pbt", "dense")

#: Benchmark budgets of compare.py. In compare.py one noise-schedule trial (1,200 U-Net steps and three validation
#: evaluations of 500 samples) costs about 250 CPU-s on the 2-core CPU and the bilevel run about 400 (BENCHMARKS.md,
#: 3-seed quick run), so the quick preset runs the paper's own baselines with two trials per searcher; TPE and PBT
#: run with ``--methods``. The dense oracle's 25 trainings (about 6,250 CPU-s) dominate a quick run's cost.
BUDGETS: dict[str, Budget] = {
    "quick": Budget(trials=2, iterations=3, overrides={"eval_samples": 500, "final_samples": 200},
                    methods=("default", "bilevel", "bilevel_fork", "greedy", "random", "bayes", "dense")),
}


#: What ``bilevel_fork`` probes: start, end and tau moved by 0.1 each (eps left out: it moves the cosine much like
#: start, docs/studies/zo_snr.md), the moves of ``studies/train_vs_sample.py`` and ``studies/fork_step.py`` on
#: development seeds 100-101 (docs/studies/noise_schedule_variants.md; docs/algorithms.md lists the choice).
FORK_MOVES: dict[str, float] = {"start": 0.1, "end": 0.1, "tau": 0.1}

#: The bilevel variant compare.py's first look runs: the forked-training step, better than the ZO run on validation
#: beyond the 95 % interval on development seeds 100-104 (docs/studies/noise_schedule_variants.md, "Which bilevel").
BILEVEL_METHOD = "bilevel_fork"

#: ``NoiseScheduleTask.benchmark``.
SPEC = BenchmarkSpec(baselines=BASELINES, budgets=BUDGETS, oracle=oracle_points, fork_moves=FORK_MOVES,
                     bilevel_method=BILEVEL_METHOD)
