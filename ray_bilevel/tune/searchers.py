"""Baseline searchers of the benchmark and :func:`make_searcher`, which turns a method name and a
:class:`~ray_bilevel.tune.spaces.SearchSpace` into what a ``tune.Tuner`` needs.

How each method expresses its space (docs/algorithms.md §5):

=========  ==========================================  ===============================================
method     search_alg                                   param_space
=========  ==========================================  ===============================================
grid       ``None`` (Tune's BasicVariantGenerator)      ``tune.grid_search`` per parameter
random     ``BasicVariantGenerator(random_state=seed)``  ``tune.uniform`` / ``tune.loguniform``
bayes      :class:`SkoptSearcher` (GP, gp_minimize)     ``{}`` (the searcher owns the space)
tpe        Ray's ``HyperOptSearch``                    ``{}``
greedy     :class:`GreedyGridSearcher`                  ``{}``
optuna_tpe Ray's ``OptunaSearch`` + Optuna's             ``{}``
           ``TPESampler`` (short start-up design)
optuna_gp  Ray's ``OptunaSearch`` + Optuna's             ``{}``
           ``GPSampler`` (logEI, Matérn 5/2, ARD)
=========  ==========================================  ===============================================

The caller merges its constants (``task``, ``preset``, ``seed``, fixed settings) into
``plan.param_space``; Tune merges them with every suggestion.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ray_bilevel.config import ConfigError
from ray_bilevel.tune.greedy import GreedyGridSearcher
from ray_bilevel.tune.skopt_searcher import SkoptSearcher
from ray_bilevel.tune.spaces import SearchSpace, as_space, greedy_grids, grid_values, skopt_dimensions, tune_domains

if TYPE_CHECKING:
    from ray.tune.search import Searcher

__all__ = ["SkoptSearcher", "GreedyGridSearcher", "SearchPlan", "make_searcher", "METHODS", "initial_points"]

#: Method names :func:`make_searcher` knows.
METHODS = ("grid", "random", "bayes", "tpe", "greedy", "optuna_tpe", "optuna_gp")


def optuna_startup(n_calls: int, dims: int) -> int:
    """Random start-up trials of the Optuna samplers: ``max(2, min(dims + 1, n_calls // 3))`` (4 of a 15-call
    budget over 4 parameters, 2 of a 4-trial quick budget), where Optuna's own default of 10 would spend most of a
    small budget at random. A hand choice (docs/algorithms.md, "Hand-chosen settings"), not tuned on any seed."""
    return max(2, min(dims + 1, n_calls // 3))


def optuna_search(sampler: str, space: SearchSpace, metric: str, mode: str, seed: int, n_calls: int) -> Searcher:
    """Ray's ``OptunaSearch`` over ``space`` with Optuna's ``"tpe"``, ``"gp"`` or ``"random"`` sampler, seeded."""
    try:
        import optuna
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:  # pragma: no cover - optuna is a dependency
        raise ConfigError("the optuna methods need optuna: pip install 'optuna>=5'.") from exc
    startup = optuna_startup(n_calls, len(space.params))
    if sampler == "tpe":
        chosen: Any = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    elif sampler == "gp":
        chosen = optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    elif sampler == "random":
        chosen = optuna.samplers.RandomSampler(seed=seed)
    else:
        raise ConfigError(f"unknown Optuna sampler {sampler!r}; choose 'tpe', 'gp' or 'random'.")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return OptunaSearch(OptunaSearch.convert_search_space(tune_domains(space)), metric, mode, sampler=chosen, seed=seed)


def initial_points(n_calls: int, cap: int = 10) -> int:
    """Random points before a model-based searcher uses its model: gp_minimize's 10, scaled down
    for small budgets as ``min(10, max(1, round(2 n / 3)))`` (15 -> 10 and 20 -> 10 as in the paper)."""
    return min(cap, max(1, round(2 * n_calls / 3)))


@dataclasses.dataclass
class SearchPlan:
    """What a Tuner needs for one method.

    Attributes:
        method: the method name.
        search_alg: pass to ``tune.TuneConfig(search_alg=...)`` (``None`` = Tune's default).
        param_space: the Tuner's ``param_space`` (merge your constants into it).
        num_samples: ``tune.TuneConfig(num_samples=...)``.
        trials: the number of trials the plan runs (the method's budget).
        searcher: the unwrapped searcher (for ``best`` / ``history``), if any.
    """

    method: str
    search_alg: Any
    param_space: dict[str, Any]
    num_samples: int
    trials: int
    searcher: Any = None

    def tune_config(self, metric: str, mode: str, **kwargs: Any) -> Any:
        """``tune.TuneConfig`` with this plan's searcher and sample count."""
        from ray import tune

        return tune.TuneConfig(
            metric=metric, mode=mode, search_alg=self.search_alg, num_samples=self.num_samples, **kwargs
        )


def make_searcher(
    name: str,
    space: SearchSpace | Mapping[str, Any],
    metric: str,
    mode: str,
    seed: int | None = None,
    num_samples: int | None = None,
    *,
    max_concurrent: int | None = 2,
    **kwargs: Any,
) -> SearchPlan:
    """Build the :class:`SearchPlan` of method ``name`` over ``space``.

    Args:
        name: one of :data:`METHODS`.
        space: a :class:`SearchSpace` (e.g. ``get_task("noise_schedule").search_space()``) or a dict of Tune domains.
        metric, mode: the objective (e.g. ``"fid_domain"``, ``"min"``).
        seed: the searcher's seed (``None`` = the paper's ``space.random_state``, 42).
        num_samples: the trial budget (``None`` = ``space.n_calls`` for random / bayes / tpe, the
            full grids for grid / greedy). A grid with a budget takes floor(budget^(1/d)) points per
            coordinate, evenly (log-evenly) spaced over each grid's span (1-D: exactly ``budget``
            points; 5 points over the lambda grid's span are the released grid).
        max_concurrent: trials in flight at once (``None`` = no limit; grid search takes Tune's
            ``max_concurrent_trials`` instead).
        **kwargs: passed to the searcher (e.g. ``acq_func="EI"``, ``n_initial_points=5``, ``penalty=``).
    """
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), METHODS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown search method {name!r}; choose one of {list(METHODS)}.{hint}")
    if mode not in ("min", "max"):
        raise ConfigError(f"mode must be 'min' or 'max', got {mode!r}.")
    if num_samples is not None and num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}.")
    space = as_space(space)
    seed = space.random_state if seed is None else seed
    n = space.n_calls if num_samples is None else num_samples

    if name == "grid":
        from ray import tune

        d = len(space.params)
        # a budget spreads k = floor(budget^(1/d)) points per coordinate (k = 1: the default value)
        k = None if num_samples is None else max(1, int(math.floor(num_samples ** (1.0 / d) + 1e-9)))
        values = {p.name: grid_values(p, k) for p in space.params}
        trials = math.prod(len(v) for v in values.values())
        if num_samples is not None and trials != num_samples:
            warnings.warn(f"a {'x'.join(str(len(v)) for v in values.values())} grid runs {trials} trials "
                          f"of the budget num_samples={num_samples}.")
        return SearchPlan(name, None, {k: tune.grid_search(v) for k, v in values.items()}, 1, trials)

    if name == "random":
        from ray.tune.search import BasicVariantGenerator

        generator = BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent or 0, **kwargs)
        return SearchPlan(name, generator, tune_domains(space), n, n)

    if name == "greedy":
        greedy = GreedyGridSearcher(
            greedy_grids(space, num_samples), space.defaults(), order=space.names, metric=metric, mode=mode, **kwargs
        )
        return SearchPlan(name, greedy, {}, greedy.total_trials, greedy.total_trials, greedy)

    if name in ("optuna_tpe", "optuna_gp"):
        searcher: Searcher = optuna_search(name.split("_", 1)[1], space, metric, mode, seed, n)
    elif name == "bayes":
        kwargs.setdefault("acq_func", space.acq_func)
        kwargs.setdefault("n_initial_points", initial_points(n))
        searcher = SkoptSearcher(skopt_dimensions(space), metric, mode, n_calls=n, random_state=seed, **kwargs)
    else:  # tpe
        from ray.tune.search.hyperopt import HyperOptSearch

        kwargs.setdefault("n_initial_points", initial_points(n))
        searcher = HyperOptSearch(
            HyperOptSearch.convert_search_space(tune_domains(space)), metric, mode, random_state_seed=seed, **kwargs
        )
    search_alg: Searcher = searcher
    if max_concurrent:
        from ray.tune.search import ConcurrencyLimiter

        search_alg = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    return SearchPlan(name, search_alg, {}, n, n, searcher)
