"""The paper's search spaces for the baselines of both applications (ALGORITHMS.md §4.9, §5.6).

A :class:`SearchSpace` is data: one :class:`Param` per hyperparameter (range, prior, default,
grid) plus the Bayesian budget and acquisition of the paper. :func:`ray_bilevel.tune.searchers.make_searcher`
turns it into what each method needs (Tune domains for random search, ``tune.grid_search`` for
grid search, skopt dimensions for the GP, hyperopt's space for TPE, per-coordinate grids for the
greedy search).

Provenance tags follow ALGORITHMS.md §2: [released] = the authors' code, [paper] = the paper's text,
[derived] = our choice where the paper's value is [lost] (ALGORITHMS.md §10).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ray_bilevel.config import ConfigError

__all__ = [
    "Param",
    "SearchSpace",
    "noise_schedule_space",
    "reward_lambda_space",
    "weighted_sum_space",
    "toy_space",
    "space_for",
    "greedy_grids",
    "grid_values",
    "as_space",
]


@dataclasses.dataclass(frozen=True)
class Param:
    """One hyperparameter: a box ``[low, high]`` (log prior if ``log``), a default and a grid.

    ``grid`` is listed in *priority order*: a search with a smaller budget takes a prefix
    (see :func:`greedy_grids`); sort it for display.
    """

    name: str
    low: float
    high: float
    log: bool = False
    default: float | None = None
    grid: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ConfigError(f"Param {self.name!r}: low must be < high, got low={self.low} high={self.high}.")
        if self.log and self.low <= 0:
            raise ConfigError(f"Param {self.name!r}: a log prior needs low > 0, got low={self.low}.")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Hyperparameters of one task plus the paper's Bayesian settings (n_calls, acquisition, seed).

    ``params`` are in the greedy search's coordinate order (the paper's order for the noise
    schedule: tau, then start, end, eps; ALGORITHMS.md §5.6).
    """

    params: tuple[Param, ...]
    n_calls: int = 15
    acq_func: str = "gp_hedge"
    random_state: int = 42
    note: str = ""

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"no parameter {name!r} in this space; it has {self.names}.")

    def defaults(self) -> dict[str, float]:
        """Default value per parameter (the first grid value where no default is set)."""
        return {p.name: (p.default if p.default is not None else p.grid[0]) for p in self.params}

    def tune_domains(self) -> dict[str, Any]:
        """``{name: tune.uniform | tune.loguniform}``: Tune's random-search space."""
        from ray import tune

        return {p.name: (tune.loguniform if p.log else tune.uniform)(p.low, p.high) for p in self.params}

    def skopt_dimensions(self) -> dict[str, Any]:
        """``{name: skopt.space.Real}``; the GP's space (``prior="log-uniform"`` for log params)."""
        from skopt.space import Real

        return {
            p.name: Real(p.low, p.high, prior="log-uniform" if p.log else "uniform", name=p.name)
            for p in self.params
        }


# -- Application 2: noise schedule (Algorithm 6, ALGORITHMS.md §5.6) ---------------------------------

#: DDIM default cosine (start, end, tau, eps) = (0, 1, 1, 0.008) [released].
NOISE_SCHEDULE_DEFAULTS = {"start": 0.0, "end": 1.0, "tau": 1.0, "eps": 0.008}


def noise_schedule_space(family: str = "cosine", tau_range: str = "released") -> SearchSpace:
    """Search space of the schedule baselines (ALGORITHMS.md §5.6).

    Ranges [released, ``train_mnist_bayesian.py``]: start ~ U[0, 0.4], end ~ U[0.8, 1],
    tau ~ U[1, 4], eps ~ U[0.005, 0.04]; n_calls = 15, random_state = 42, acquisition
    ``gp_hedge`` (gp_minimize's default, which the released code leaves unset). The random
    search uses "the same range" [paper]; its number of draws is [lost].

    ``tau_range="wide"`` replaces tau's range by log-uniform [0.5, 4] [derived]: at the CPU scale
    of this project the FID valley lies just above tau = 1 and falls steeply on both sides
    (ENVIRONMENT.md §6.1: tau 0.8 -> 71, 1.0 -> 32, 1.2 -> 20, 2 -> 277), so the released U[1, 4]
    puts the default on its edge and only ~7 % of its mass within [1, 1.2]; the log prior centred
    near 1.4 spends half its mass below 1.41 and also covers tau < 1.

    The greedy grids are [lost] (no grid script is released); ours are [derived], listed in
    priority order (the default first, then its neighbours, then outward): tau {1, 1.2, 0.8, 1.5,
    2, 3, 4}, start {0, 0.1, 0.2, 0.3}, end {1, 0.9, 0.8}, eps {0.008, 0.005, 0.02, 0.04}. Because
    each grid holds the default, whose result the greedy search reuses, a full greedy pass costs
    7 + 3 + 2 + 3 = 15 trials, the same as the Bayesian n_calls.
    """
    if family != "cosine":
        raise ConfigError(
            f"no released search ranges for family={family!r} (the sigmoid ranges are [lost], "
            "ALGORITHMS.md §5.6); use family='cosine' or build your own SearchSpace."
        )
    if tau_range == "released":
        tau = Param("tau", 1.0, 4.0, default=1.0, grid=(1.0, 1.2, 0.8, 1.5, 2.0, 3.0, 4.0))
    elif tau_range == "wide":
        tau = Param("tau", 0.5, 4.0, log=True, default=1.0, grid=(1.0, 1.2, 0.8, 1.5, 2.0, 3.0, 4.0))
    else:
        raise ConfigError(f"tau_range must be 'released' or 'wide', got {tau_range!r}.")
    return SearchSpace(
        params=(
            tau,
            Param("start", 0.0, 0.4, default=0.0, grid=(0.0, 0.1, 0.2, 0.3)),
            Param("end", 0.8, 1.0, default=1.0, grid=(1.0, 0.9, 0.8)),
            Param("eps", 0.005, 0.04, default=0.008, grid=(0.008, 0.005, 0.02, 0.04)),
        ),
        n_calls=15,
        acq_func="gp_hedge",
        random_state=42,
        note=f"cosine schedule, tau_range={tau_range}",
    )


# -- Application 1: entropy strength lambda (Algorithms 2 + 5, ALGORITHMS.md §4.9) --------------------


def reward_lambda_space() -> SearchSpace:
    """Search space of the lambda baselines (ALGORITHMS.md §4.9).

    Grid {0.01, 0.1, 1, 10, 100} [released; the paper's grid is [lost]]. Random search: 5 values
    log-uniform on a [lost] range, taken as [0.01, 100] [derived, = the Bayesian range].
    Bayesian: ``Real(0.01, 100, "log-uniform")``, n_calls = 20, random_state = 42 [released];
    acquisition EI [paper] (the released code leaves gp_minimize's ``gp_hedge``; ALGORITHMS.md §7
    item 9 follows the paper).
    """
    return SearchSpace(
        params=(Param("lam", 0.01, 100.0, log=True, default=None, grid=(0.01, 0.1, 1.0, 10.0, 100.0)),),
        n_calls=20,
        acq_func="EI",
        random_state=42,
        note="entropy strength lambda",
    )


def weighted_sum_space(name: str = "w") -> SearchSpace:
    """Weight ``w`` of the weighted-sum baseline (guidance by ``r2 + w * alignment``).

    The paper's grid is [lost]; the released code uses w = 1 only. Ours [derived]: the decade
    grid {0.01, 0.1, 1, 10, 100} (same size as the lambda grid, so the budgets match), with
    log-uniform [0.01, 100] for random / Bayesian search.
    """
    return SearchSpace(
        params=(Param(name, 0.01, 100.0, log=True, default=1.0, grid=(1.0, 0.1, 10.0, 0.01, 100.0)),),
        n_calls=20,
        acq_func="EI",
        random_state=42,
        note="weighted-sum weight w",
    )


# -- the analytic toy (ray_bilevel.tasks.toy): exercises the harness in seconds ----------------------


def toy_space() -> SearchSpace:
    """x = (x0, x1) of the toy task in [-3, 3]^2 around its start (1, -1) [derived; not in the paper]."""
    grid = (0.0, -2.0, 2.0, -1.0, 1.0)
    return SearchSpace(
        params=(Param("x0", -3.0, 3.0, default=1.0, grid=grid), Param("x1", -3.0, 3.0, default=-1.0, grid=grid)),
        n_calls=10,
        acq_func="EI",
        random_state=42,
        note="analytic toy",
    )


_SPACES = {
    "toy": toy_space,
    "noise_schedule": noise_schedule_space,
    "reward_lambda": reward_lambda_space,
    "weighted_sum": weighted_sum_space,
}


def space_for(task: str, **kwargs: Any) -> SearchSpace:
    """The paper's search space of a registered task name (``**kwargs`` go to its builder)."""
    if task not in _SPACES:
        raise ConfigError(f"no built-in search space for task {task!r}; choose one of {sorted(_SPACES)} or pass a SearchSpace.")
    return _SPACES[task](**kwargs)


# -- budgets -----------------------------------------------------------------------------------------


def grid_values(param: Param, budget: int | None = None) -> list[float]:
    """The sorted grid of ``param``; with ``budget`` != len(grid), ``budget`` evenly (log-)spaced
    points over ``[min(grid), max(grid)]`` (or ``[low, high]`` without a grid).

    For lambda, 5 log-spaced points over [0.01, 100] are exactly the released grid.
    """
    grid = sorted(param.grid)
    if budget is None or (grid and budget == len(grid)):
        if not grid:
            raise ConfigError(f"Param {param.name!r} has no grid; pass a budget to space it evenly.")
        return grid
    if budget < 1:
        raise ConfigError(f"grid budget must be >= 1, got {budget}.")
    lo, hi = (grid[0], grid[-1]) if grid else (param.low, param.high)
    if budget == 1:
        return [param.default if param.default is not None else (math.sqrt(lo * hi) if param.log else (lo + hi) / 2)]
    if param.log:
        a, b = math.log10(lo), math.log10(hi)
        return [float(round(10 ** (a + (b - a) * i / (budget - 1)), 12)) for i in range(budget)]
    return [float(round(lo + (hi - lo) * i / (budget - 1), 12)) for i in range(budget)]


def greedy_grids(space: SearchSpace, budget: int | None = None) -> dict[str, list[float]]:
    """Per-coordinate grids of the greedy search whose full pass costs at most ``budget`` trials.

    The first coordinate's stage costs one trial per value; later stages reuse the incumbent,
    so their default value is free. Without a budget (or a budget that covers everything) the
    full grids are used. Otherwise values are handed out round-robin in coordinate order, two at
    a time to the first (most sensitive, ALGORITHMS.md §5.6: tau) and one at a time to the rest,
    each taking a prefix of its priority-ordered grid.
    """
    if budget is not None and budget < 1:
        raise ConfigError(f"greedy budget must be >= 1 trial, got {budget}.")
    defaults = space.defaults()
    grids = {}
    for p in space.params:
        g = list(p.grid) if p.grid else grid_values(p, 5)
        if defaults[p.name] in g:  # the default goes first: it is the incumbent
            g.remove(defaults[p.name])
        grids[p.name] = [defaults[p.name]] + g
    full = sum(len(g) for g in grids.values()) - (len(grids) - 1)
    if budget is None or budget >= full:
        return grids
    take = {name: 1 for name in grids}  # the default of every coordinate
    spent = 1  # the first stage's default trial
    while spent < budget:
        progressed = False
        for i, name in enumerate(grids):
            for _ in range(2 if i == 0 else 1):
                if spent < budget and take[name] < len(grids[name]):
                    take[name] += 1
                    spent += 1
                    progressed = True
        if not progressed:
            break
    return {name: grids[name][: take[name]] for name in grids}


def as_space(space: SearchSpace | Mapping[str, Any], n_calls: int = 15, acq_func: str = "gp_hedge") -> SearchSpace:
    """Accept a :class:`SearchSpace` or a dict of Tune domains (``tune.uniform``, ``tune.loguniform``,
    ``tune.grid_search``) and return a :class:`SearchSpace`."""
    if isinstance(space, SearchSpace):
        return space
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"space must be a SearchSpace or a non-empty dict of Tune domains, got {space!r}.")
    from ray.tune.search.sample import Float, LogUniform

    params = []
    for name, dom in space.items():
        if isinstance(dom, Mapping) and "grid_search" in dom:
            vals = [float(v) for v in dom["grid_search"]]
            lo, hi = min(vals), max(vals)
            log = lo > 0 and hi / lo >= 100
            params.append(Param(name, lo, hi if hi > lo else lo + 1.0, log=log, grid=tuple(vals)))
        elif isinstance(dom, Float) and math.isfinite(dom.lower) and math.isfinite(dom.upper):
            params.append(Param(name, float(dom.lower), float(dom.upper), log=isinstance(dom.get_sampler(), LogUniform)))
        else:
            raise ConfigError(
                f"space[{name!r}] = {dom!r} is not supported; use tune.uniform, tune.loguniform or tune.grid_search."
            )
    return SearchSpace(params=tuple(params), n_calls=n_calls, acq_func=acq_func)
