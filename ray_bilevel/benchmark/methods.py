"""Which methods run on which task, with which budget, and how each becomes one Tune experiment.

DESIGN.md "The benchmark": same task, data, model size, seeds and evaluator for every method;
each searcher gets the same number of trials; wall time is the whole method. The paper's
baselines: ALGORITHMS.md §5.6 (noise schedule: default, greedy grid, random, Bayesian, plus TPE
and PBT here) and §4.9 (lambda: grid, random, Bayesian, weighted sum, plus TPE and the default).

=============  ==========================================================================
method         Tune experiment
=============  ==========================================================================
default        one FixedHyperTrainable trial at the task's default hyperparameters
bilevel        one BilevelTrainable trial (Algorithm 1 / 6 / 2)
grid           FixedHyperTrainable + ``tune.grid_search`` (1-D: ``trials`` points)
random         FixedHyperTrainable + Tune's random search over the paper's ranges
bayes          FixedHyperTrainable + :class:`~ray_bilevel.tune.SkoptSearcher` (gp_minimize)
tpe            FixedHyperTrainable + Ray's HyperOptSearch
greedy         FixedHyperTrainable + :class:`~ray_bilevel.tune.GreedyGridSearcher`
pbt            FixedHyperTrainable population + Tune's PopulationBasedTraining (schedule
               parameters mutated during training through checkpoints)
weighted_sum   the ``weighted_sum`` task (guidance by r2 + w * alignment) + a grid over w
=============  ==========================================================================
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ray_bilevel.config import ConfigError
from ray_bilevel.tune.searchers import METHODS as SEARCH_METHODS
from ray_bilevel.tune.searchers import make_searcher
from ray_bilevel.tune.spaces import SearchSpace, space_for

__all__ = ["ALL_METHODS", "methods_for", "Profile", "profile_for", "ExperimentSpec", "build_experiment", "iterations_per_step"]

ALL_METHODS = ("default", "bilevel", "grid", "random", "bayes", "tpe", "greedy", "pbt", "weighted_sum")

#: The paper's comparison per task (other tasks: every generic method their search space allows).
_TASK_METHODS = {
    "noise_schedule": ("default", "bilevel", "greedy", "random", "bayes", "tpe", "pbt"),
    "reward_lambda": ("default", "bilevel", "grid", "random", "bayes", "tpe", "weighted_sum"),
}
_GENERIC = ("default", "bilevel", "grid", "random", "bayes", "tpe", "greedy", "pbt")


def methods_for(task: str) -> tuple[str, ...]:
    """The methods compared on ``task`` by default."""
    if task in _TASK_METHODS:
        return _TASK_METHODS[task]
    try:
        space_for(task)
    except ConfigError:
        return ("default", "bilevel")
    return _GENERIC


@dataclasses.dataclass(frozen=True)
class Profile:
    """Benchmark budget of one (task, preset).

    Attributes:
        trials: trials per searcher method (equal budgets); ``None`` = the paper's Bayesian n_calls.
        iterations: Tune iterations per trial; every iteration ends with an in-loop evaluation
            (points of the FID-vs-time curves, PBT's decision points).
        overrides: task settings applied to every trial of every method (same model, data, evaluator).
        pbt_interval: PBT perturbation interval in Tune iterations.
        methods: the methods run when ``--methods`` is not given (``None``: every method of the task).
        max_concurrent: trials of one method in flight at once (``None``: as many as the cluster fits).
            Smoke trials last about a second, so starting a second actor (imports, task build) costs
            more than it saves: one actor runs them in turn.
    """

    trials: int | None
    iterations: int = 4
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pbt_interval: int = 1
    methods: tuple[str, ...] | None = None
    max_concurrent: int | None = None


_PROFILES: dict[str, Profile] = {
    "smoke": Profile(trials=2, iterations=2, max_concurrent=1),
    "quick": Profile(trials=4, iterations=4),
    "paper": Profile(trials=None, iterations=10, pbt_interval=2),
}
#: Per-task adjustments of a preset's profile, fitted to compare.py's budgets: ``--preset smoke`` runs
#: every method in about 2 minutes; the default (both tasks, quick) must finish in 20 minutes on a
#: 2-core CPU. There one noise-schedule trial (the task's quick preset: ~1,200 U-Net steps) costs
#: about 2 CPU-minutes and the bilevel run about 4, so the quick default runs the paper's own
#: comparison (its baselines, ALGORITHMS.md §4.9 / §5.6, plus the default) with two trials per
#: searcher; TPE and PBT run with ``--methods``.
_TASK_PROFILES: dict[tuple[str, str], Profile] = {
    ("noise_schedule", "quick"): Profile(
        trials=2, iterations=3, overrides={"eval_samples": 500, "final_samples": 200},
        methods=("default", "bilevel", "greedy", "random", "bayes"),
    ),
    # a fixed-lambda trial is a few guided rounds (~20 s): four trials per searcher, two rounds on two cores
    ("reward_lambda", "quick"): Profile(
        trials=4, iterations=3, methods=("default", "bilevel", "grid", "random", "bayes", "weighted_sum"),
    ),
}


def profile_for(task: str, preset: str) -> Profile:
    """The benchmark budget of ``task`` at ``preset``."""
    if (task, preset) in _TASK_PROFILES:
        return _TASK_PROFILES[(task, preset)]
    if preset not in _PROFILES:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(_PROFILES)}.")
    return _PROFILES[preset]


@dataclasses.dataclass
class ExperimentSpec:
    """Everything one ``tune.Tuner`` of one method needs (the runner adds resources and storage)."""

    task: str  # the task the trials run (``weighted_sum`` for that method)
    method: str
    bilevel: bool
    param_space: dict[str, Any]
    metric: str
    mode: str
    search_alg: Any = None
    scheduler: Any = None
    num_samples: int = 1
    trials: int = 1
    searcher: Any = None
    hyper_names: tuple[str, ...] = ()  # searched names beyond the task's own hyperparameters


def _clip_explore(space: SearchSpace):
    """PBT explore step that keeps mutated values inside the search box (Tune's x1.2 / x0.8
    perturbations would push e.g. ``end`` past 1, an infeasible schedule)."""

    def explore(config: dict) -> dict:
        for p in space.params:
            if p.name in config:
                config[p.name] = float(min(p.high, max(p.low, config[p.name])))
        return config

    return explore


def build_experiment(
    task: str,
    method: str,
    base: Mapping[str, Any],
    metric: str,
    mode: str,
    trials: int,
    profile: Profile,
    seed: int,
    max_concurrent: int,
    space: SearchSpace | None = None,
) -> ExperimentSpec:
    """The :class:`ExperimentSpec` of ``method`` on ``task``; ``base`` holds the constants of every trial."""
    if method not in ALL_METHODS:
        raise ConfigError(f"unknown method {method!r}; choose from {list(ALL_METHODS)}.")
    base = dict(base)
    if method == "default":
        return ExperimentSpec(task, method, False, base, metric, mode)
    if method == "bilevel":
        return ExperimentSpec(task, method, True, base, metric, mode)
    if method == "weighted_sum":
        if task != "reward_lambda":
            raise ConfigError(f"method 'weighted_sum' is a baseline of task 'reward_lambda', not {task!r}.")
        from ray_bilevel.tasks import get_task

        ws = get_task("weighted_sum")
        ws_space = space_for("weighted_sum", name=getattr(ws, "weight_name", "w"))
        plan = make_searcher("grid", ws_space, ws.metric, ws.mode, seed, trials)
        return ExperimentSpec("weighted_sum", method, False, {**base, "task": "weighted_sum", **plan.param_space},
                              ws.metric, ws.mode, num_samples=plan.num_samples, trials=plan.trials,
                              hyper_names=tuple(ws_space.names))
    if space is None:
        space = space_for(task)
    if method == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining
        from ray.tune.search import BasicVariantGenerator

        scheduler = PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=profile.pbt_interval,
            hyperparam_mutations=space.tune_domains(),
            quantile_fraction=0.5 if trials < 8 else 0.25,
            resample_probability=0.25,
            custom_explore_fn=_clip_explore(space),
            log_config=False,
        )
        return ExperimentSpec(task, method, False, {**base, **space.tune_domains()}, metric, mode,
                              search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent),
                              scheduler=scheduler, num_samples=trials, trials=trials)
    if method not in SEARCH_METHODS:  # pragma: no cover - ALL_METHODS covers it
        raise ConfigError(f"no searcher for method {method!r}.")
    plan = make_searcher(method, space, metric, mode, seed, trials, max_concurrent=max_concurrent)
    return ExperimentSpec(task, method, False, {**base, **plan.param_space}, metric, mode, search_alg=plan.search_alg,
                          num_samples=plan.num_samples, trials=plan.trials, searcher=plan.searcher)


def iterations_per_step(budget: int, iterations: int) -> int:
    """Steps (outer or lower) per Tune iteration so that a trial takes about ``iterations`` Tune iterations."""
    if budget < 1:
        raise ConfigError(f"the task's step budget must be >= 1, got {budget}.")
    return max(1, math.ceil(budget / max(1, iterations)))
