"""Turn a task's Ray-free :class:`~ray_bilevel.space.SearchSpace` into what Tune and the searchers take.

The spaces themselves are declared by the tasks (``Task.search_space()``; docs/algorithms.md §5). Here:
Tune domains for random search and PBT, scikit-optimize dimensions for the GP, and the reverse
direction (:func:`as_space`: a dict of Tune domains from a user → a :class:`SearchSpace`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ray_bilevel.config import ConfigError
from ray_bilevel.space import Param, SearchSpace, greedy_grids, grid_values

__all__ = ["Param", "SearchSpace", "tune_domains", "skopt_dimensions", "space_of", "as_space", "greedy_grids",
           "grid_values"]

QUANTIZED_IN_SPACE = (
    "space[{name!r}] = {dom} is quantized (q={q}), which a SearchSpace (and so make_searcher's methods) cannot "
    "express; use tune.uniform / tune.loguniform, or pass the quantized domain to SkoptSearcher directly.")
NESTED_IN_SPACE = (
    "space[{name!r}] is a nested dict, which a SearchSpace (and so make_searcher's methods) cannot express; use flat "
    "names, or pass the nested space to SkoptSearcher directly.")


def tune_domains(space: SearchSpace) -> dict[str, Any]:
    """``{name: tune.uniform | tune.loguniform}``: Tune's random-search space."""
    from ray import tune

    return {p.name: (tune.loguniform if p.log else tune.uniform)(p.low, p.high) for p in space.params}


def skopt_dimensions(space: SearchSpace) -> dict[str, Any]:
    """``{name: skopt.space.Real}``; the GP's space (``prior="log-uniform"`` for log params)."""
    from skopt.space import Real

    return {p.name: Real(p.low, p.high, prior="log-uniform" if p.log else "uniform", name=p.name) for p in space.params}


def space_of(task: Any) -> SearchSpace:
    """The search space a task declares (``task``: a registered name or a Task class)."""
    from ray_bilevel.tasks import get_task

    cls = get_task(task)
    space = cls.search_space()
    if space is None:
        raise ConfigError(f"task {cls.name or cls.__name__!r} declares no search space (Task.search_space() is None); "
                          "pass a SearchSpace or a dict of Tune domains.")
    return space


def as_space(space: SearchSpace | Mapping[str, Any], n_calls: int = 15, acq_func: str = "gp_hedge") -> SearchSpace:
    """Accept a :class:`SearchSpace` or a dict of Tune domains (``tune.uniform``, ``tune.loguniform``,
    ``tune.grid_search``) and return a :class:`SearchSpace`."""
    if isinstance(space, SearchSpace):
        return space
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"space must be a SearchSpace or a non-empty dict of Tune domains, got {space!r}.")
    from ray.tune.search.sample import Float, LogUniform

    from ray_bilevel.tune._searcher_util import describe_domain, quantum

    params = []
    for name, dom in space.items():
        if isinstance(dom, Mapping) and "grid_search" in dom:
            vals = [float(v) for v in dom["grid_search"]]
            lo, hi = min(vals), max(vals)
            log = lo > 0 and hi / lo >= 100
            params.append(Param(name, lo, hi if hi > lo else lo + 1.0, log=log, grid=tuple(vals)))
        elif quantum(dom) is not None:
            raise ConfigError(QUANTIZED_IN_SPACE.format(name=name, dom=describe_domain(dom), q=quantum(dom)))
        elif isinstance(dom, Mapping):
            raise ConfigError(NESTED_IN_SPACE.format(name=name))
        elif isinstance(dom, Float) and math.isfinite(dom.lower) and math.isfinite(dom.upper):
            params.append(
                Param(name, float(dom.lower), float(dom.upper), log=isinstance(dom.get_sampler(), LogUniform))
            )
        else:
            raise ConfigError(
                f"space[{name!r}] = {describe_domain(dom)} is not supported; use tune.uniform, tune.loguniform or "
                "tune.grid_search."
            )
    return SearchSpace(params=tuple(params), n_calls=n_calls, acq_func=acq_func)
