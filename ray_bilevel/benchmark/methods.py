"""Which methods run on which task, with which budget, and how each becomes one Tune experiment.

Same task, data, model size, seeds and evaluator for every method; each searcher gets the same number of
trials; wall time is the whole method. What is compared, and with which budget, the task's folder declares
(``Task.benchmark``, a :class:`~ray_bilevel.benchspec.BenchmarkSpec`: baselines, budgets, oracle design, the task's own
baselines; and ``Task.search_space()``); nothing here is keyed by task name.

=============  ==========================================================================
method         Tune experiment
=============  ==========================================================================
default        one FixedHyperTrainable trial at the task's default hyperparameters
bilevel        one BilevelTrainable trial (the task's ``hyper_step``: Algorithm 1 / 6 / 2)
bilevel_retrain  learn, then retrain: one BilevelTrainable trial with ``retrain=True`` (the bilevel run, then a
               fresh lower-level run at the learned hyperparameters, whose result is the answer; both booked).
               What that step computes depends on the task's preset (README's task table): on the noise
               schedule's quick preset, Adam on a coordinate-wise central-difference zeroth-order gradient of validation
               domain FID (the penalty term of eq. (4), measured, is 3.6e-5 of it); eq. (4) with a
               working penalty is the variant ``z_fid_grad="surrogate"`` (docs/noise_schedule.md)
bilevel_fork   one ForkStepTrainable trial: train at the default to 75 %, one branch per probed coordinate (and one
               at the default) for the rest, a sign step of 2 × each improving branch's move, then a fresh
               training at the stepped hyperparameters, kept if it beats the default branch on validation
               (:mod:`ray_bilevel.tune.fork`; the moves: ``Task.benchmark.fork_moves``)
grid           FixedHyperTrainable + ``tune.grid_search`` (1-D: ``trials`` points)
random         FixedHyperTrainable + Tune's random search over the task's ranges
bayes          FixedHyperTrainable + :class:`~ray_bilevel.tune.SkoptSearcher` (gp_minimize)
tpe            FixedHyperTrainable + Ray's HyperOptSearch
greedy         FixedHyperTrainable + :class:`~ray_bilevel.tune.GreedyGridSearcher`
pbt            FixedHyperTrainable population + Tune's PopulationBasedTraining (hyperparameters
               mutated during training through checkpoints)
dense          the oracle: FixedHyperTrainable at every point of ``Task.benchmark.oracle_points``; its answer
               (best on validation) is the regret reference
asha           random search (Optuna's RandomSampler) under Tune's AsyncHyperBandScheduler, which stops trials
               at rungs of their validation metric; it starts trials while its compute (``cost_flops``) stays
               within ``trials`` full trials' (:class:`~ray_bilevel.tune.budget.BudgetLimiter`)
optuna_tpe     FixedHyperTrainable + Ray's OptunaSearch with Optuna's TPESampler
optuna_gp      FixedHyperTrainable + Ray's OptunaSearch with Optuna's GPSampler
pb2            FixedHyperTrainable population + Tune's PB2 (PBT whose explore step is a GP-UCB bandit over the
               hyperparameters; needs GPy)
pbt_replay,    the population of pbt / pb2, then its answer's hyperparameter schedule re-run from scratch in one
pb2_replay     FixedHyperTrainable trial (``hyper_schedule``, :mod:`ray_bilevel.tune.replay`): a reusable answer,
               booked at the population's cost plus the replay's
(task's own)   a :class:`~ray_bilevel.space.TaskMethod`: FixedHyperTrainable trials of another task
               over its own space with a generic searcher (e.g. the λ task's ``weighted_sum``)
=============  ==========================================================================
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ray_bilevel.benchspec import GENERIC_METHODS
from ray_bilevel.config import ConfigError
from ray_bilevel.space import Budget, SearchSpace
from ray_bilevel.tasks import Task, get_task, task_ref
from ray_bilevel.tune.budget import BudgetLimiter
from ray_bilevel.tune.points import PointsSearcher
from ray_bilevel.tune.searchers import METHODS as SEARCH_METHODS, make_searcher, optuna_search
from ray_bilevel.tune.spaces import tune_domains

__all__ = ["GENERIC_METHODS", "methods_for", "offered_methods", "ExperimentSpec", "build_experiment",
           "iterations_per_step", "FORK_FRACTION", "FORK_SCALE"]

#: ``bilevel_fork``: the share of training before the branches and the step's multiple of the probe moves, chosen on
#: development seeds 100-101 with ``studies/fork_step.py`` (scale 2 beat scale 1 on both; docs/algorithms.md).
FORK_FRACTION, FORK_SCALE = 0.75, 2.0


def offered_methods(task: Any) -> tuple[str, ...]:
    """Every method the benchmark can run on ``task`` (the generic ones its search space allows, and its own)."""
    cls = get_task(task)
    return cls.benchmark.methods(cls.search_space())


def methods_for(task: Any) -> tuple[str, ...]:
    """The methods compared on ``task`` by default: its declared ``baselines`` that it can run."""
    cls = get_task(task)
    offered = offered_methods(cls)
    return tuple(m for m in cls.benchmark.baselines if m in offered)


@dataclasses.dataclass
class ExperimentSpec:
    """Everything one ``tune.Tuner`` of one method needs (the runner adds resources and storage)."""

    task: str  # the task the method is compared on (rows are reported under it)
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
    trial_task: str = ""  # the task the trials run, when it differs (a TaskMethod's task)
    stops_early: bool = False  # the searcher may end before ``trials`` (greedy skips points it already ran)
    replay: bool = False  # pbt_replay / pb2_replay: the population's answer is replayed from scratch (replay.py)


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
    task: Any,
    method: str,
    base: Mapping[str, Any],
    metric: str,
    mode: str,
    trials: int,
    budget: Budget,
    seed: int,
    max_concurrent: int,
    space: SearchSpace | None = None,
) -> ExperimentSpec:
    """The :class:`ExperimentSpec` of ``method`` on ``task``; ``base`` holds the constants of every trial."""
    cls: type[Task] = get_task(task)
    name = cls.name or cls.__name__
    offered = offered_methods(cls)
    if method not in offered:
        raise ConfigError(f"unknown method {method!r} for task {name!r}; choose from {list(offered)}.")
    base = dict(base)
    if method in ("default", "bilevel"):
        return ExperimentSpec(name, method, method == "bilevel", base, metric, mode)
    if method == "bilevel_retrain":  # learn, then retrain: one BilevelTrainable trial with retrain=True
        return ExperimentSpec(name, method, True, {**base, "retrain": True}, metric, mode)
    if method == "bilevel_fork":  # the forked-training step, then a retrain (ray_bilevel.tune.fork)
        fork: dict[str, Any] = {"fork": FORK_FRACTION, "fork_scale": FORK_SCALE, "retrain": True}
        if cls.benchmark.fork_moves is not None:
            fork["fork_moves"] = dict(cls.benchmark.fork_moves)
        return ExperimentSpec(name, method, True, {**base, **fork}, metric, mode)
    own = cls.benchmark.task_methods
    if method in own:
        tm = own[method]
        other = get_task(tm.task)
        plan = make_searcher(tm.searcher, tm.space, other.tuning_metric(), other.mode, seed, trials,
                             max_concurrent=max_concurrent)
        trial_task = other.name or other.__name__
        return ExperimentSpec(name, method, False, {**base, "task": task_ref(tm.task), **plan.param_space},
                              other.tuning_metric(),
                              other.mode, search_alg=plan.search_alg, num_samples=plan.num_samples, trials=plan.trials,
                              searcher=plan.searcher, hyper_names=tuple(tm.space.names), trial_task=trial_task,
                              stops_early=tm.searcher == "greedy")
    if space is None:
        space = cls.search_space()
    if space is None:  # pragma: no cover - methods() offers searchers only with a space
        raise ConfigError(f"task {name!r} declares no search space for method {method!r}.")
    if method == "dense":  # the oracle: every point of the task's sweep, once (not subject to the trial budget)
        points = cls.benchmark.oracle_points(space, str(base.get("preset", "quick")))
        return ExperimentSpec(name, method, False, dict(base), metric, mode, search_alg=PointsSearcher(points),
                              num_samples=len(points), trials=len(points))
    if method == "asha":
        from ray.tune.schedulers import AsyncHyperBandScheduler
        from ray.tune.search import ConcurrencyLimiter

        limiter = BudgetLimiter(optuna_search("random", space, metric, mode, seed, trials), budget=trials,
                                in_trials=True, iterations=budget.iterations,
                                max_trials=budget.asha_max_trials * trials)
        # a fixed trial runs at most budget.iterations Tune iterations (iterations_per_step), so max_t never cuts one
        asha = AsyncHyperBandScheduler(time_attr="training_iteration", max_t=budget.iterations,
                                            grace_period=budget.asha_grace, reduction_factor=budget.asha_eta)
        return ExperimentSpec(name, method, False, dict(base), metric, mode,
                              search_alg=ConcurrencyLimiter(limiter, max_concurrent=max_concurrent), scheduler=asha,
                              num_samples=-1, trials=trials, searcher=limiter, stops_early=True)
    if method in ("pbt_replay", "pb2_replay"):  # the population, then its best schedule replayed (replay.py)
        population = build_experiment(task, method.removesuffix("_replay"), base, metric, mode, trials, budget, seed,
                                      max_concurrent, space)
        return dataclasses.replace(population, method=method, replay=True)
    if method == "pb2":
        from ray.tune.schedulers.pb2 import PB2
        from ray.tune.search import BasicVariantGenerator

        try:
            import GPy  # noqa: F401 - PB2's GP
        except ImportError as exc:  # pragma: no cover - GPy is a dependency
            raise ConfigError("the pb2 method needs GPy: pip install GPy.") from exc
        pb2 = PB2(time_attr="training_iteration", perturbation_interval=budget.pbt_interval,
                        hyperparam_bounds={p.name: [p.low, p.high] for p in space.params},
                        quantile_fraction=0.5 if trials < 8 else 0.25, custom_explore_fn=_clip_explore(space),
                        log_config=True)  # pbt_policy_*.txt: the schedules pb2_replay re-runs
        return ExperimentSpec(name, method, False, {**base, **tune_domains(space)}, metric, mode,
                              search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent),
                              scheduler=pb2, num_samples=trials, trials=trials)
    if method == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining
        from ray.tune.search import BasicVariantGenerator

        scheduler = PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=budget.pbt_interval,
            hyperparam_mutations=tune_domains(space),
            quantile_fraction=0.5 if trials < 8 else 0.25,
            resample_probability=0.25,
            custom_explore_fn=_clip_explore(space),
            log_config=True,  # pbt_policy_*.txt: the schedules pbt_replay re-runs
        )
        return ExperimentSpec(name, method, False, {**base, **tune_domains(space)}, metric, mode,
                              search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent),
                              scheduler=scheduler, num_samples=trials, trials=trials)
    if method not in SEARCH_METHODS:  # pragma: no cover - GENERIC_METHODS covers it
        raise ConfigError(f"no searcher for method {method!r}.")
    plan = make_searcher(method, space, metric, mode, seed, trials, max_concurrent=max_concurrent)
    return ExperimentSpec(name, method, False, {**base, **plan.param_space}, metric, mode, search_alg=plan.search_alg,
                          num_samples=plan.num_samples, trials=plan.trials, searcher=plan.searcher,
                          stops_early=method == "greedy")


def iterations_per_step(budget: int, iterations: int) -> int:
    """Steps (outer or lower) per Tune iteration so that a trial takes about ``iterations`` Tune iterations."""
    if budget < 1:
        raise ConfigError(f"the task's step budget must be >= 1, got {budget}.")
    return max(1, math.ceil(budget / max(1, iterations)))
