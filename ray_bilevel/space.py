"""What a task declares about its own search: the space, the benchmark budgets, its own baselines.

Ray-free and diffusion-free data. A :class:`~ray_bilevel.tasks.base.Task` returns a
:class:`SearchSpace` from ``search_space()``, a :class:`Budget` per preset from ``budget(preset)`` and
any baseline of its own (e.g. the λ task's weighted sum) as a :class:`TaskMethod`; ``ray_bilevel.tune``
turns a space into Tune / scikit-optimize / hyperopt spaces and ``ray_bilevel.benchmark`` runs the
budgets, so neither holds a table keyed by task name.

Provenance of the values a task puts here follows docs/algorithms.md §5: [released] = the authors'
code, [paper] = the paper's text, [derived] = our choice where the paper's value is lost.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ray_bilevel.config import ConfigError

__all__ = ["Param", "SearchSpace", "Budget", "TaskMethod", "DEFAULT_BUDGETS", "grid_values", "greedy_grids",
           "dense_points", "space_filling_points"]


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

    ``params`` are in the greedy search's coordinate order (for the noise schedule the paper's order:
    tau, then start, end, eps; docs/algorithms.md §5).
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


@dataclasses.dataclass(frozen=True)
class Budget:
    """Benchmark budget of one (task, preset).

    Attributes:
        trials: trials per searcher method (equal budgets); ``None`` = the space's Bayesian n_calls.
        iterations: Tune iterations per trial; every iteration ends with an in-loop evaluation
            (points of the metric-vs-time curves, PBT's decision points).
        overrides: task settings applied to every trial of every method (same model, data, evaluator).
        pbt_interval: PBT perturbation interval in Tune iterations.
        methods: the methods run when ``--methods`` is not given (``None``: the task's ``baselines``).
        max_concurrent: trials of one method in flight at once (``None``: as many as the cluster fits).
        asha_grace, asha_eta: the ``asha`` method's grace period (Tune iterations before a trial can be stopped) and
            reduction factor (1/eta of the trials at a rung go on); asha_max_trials: it starts at most this many
            times the budget's trials (its compute budget binds first in practice).
            Smoke trials last about a second, so starting a second actor (imports, task build) costs
            more than it saves: one actor runs them in turn.
    """

    trials: int | None
    iterations: int = 4
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pbt_interval: int = 1
    methods: tuple[str, ...] | None = None
    max_concurrent: int | None = None
    asha_grace: int = 1
    asha_eta: float = 2.0
    asha_max_trials: int = 8

    def replaced(self, changes: Mapping[str, Any]) -> Budget:
        """This budget with some of its scheduling fields replaced (compare.py's ``--budget-set KEY=VALUE``).

        Only the fields a user tunes the harness by can change: :data:`BUDGET_SETTABLE`. ``trials`` has its own
        flags (``--trials``, ``--budget``), ``overrides`` is ``--set`` and ``methods`` is ``--methods``.

        Raises:
            ConfigError: an unknown or not settable key, a value of the wrong type, or one out of range.
        """
        out: dict[str, Any] = {}
        for key, value in changes.items():
            kind = BUDGET_SETTABLE.get(key)
            if kind is None:
                raise ConfigError(f"--budget-set {key}: not a settable budget field; choose from "
                                  f"{sorted(BUDGET_SETTABLE)} (trials: --trials or --budget; task settings: --set).")
            if key == "max_concurrent" and value is None:
                out[key] = None
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                wanted = "a whole number" if kind is int else "a number"
                raise ConfigError(f"--budget-set {key}={value!r}: expected {wanted}.")
            low = 1.0 if key != "asha_eta" else 1.0 + 1e-9
            if value < low:
                raise ConfigError(f"--budget-set {key}={value!r}: must be {'> 1' if key == 'asha_eta' else '>= 1'}.")
            out[key] = kind(value)
        return dataclasses.replace(self, **out)


#: The :class:`Budget` fields ``--budget-set`` may change, and their types.
BUDGET_SETTABLE: dict[str, type] = {"iterations": int, "pbt_interval": int, "max_concurrent": int, "asha_grace": int,
                                    "asha_eta": float, "asha_max_trials": int}


#: Budgets of a task that declares none of its own.
DEFAULT_BUDGETS: dict[str, Budget] = {
    "smoke": Budget(trials=2, iterations=2, max_concurrent=1),
    "quick": Budget(trials=4, iterations=4),
    "paper": Budget(trials=None, iterations=10, pbt_interval=2),
}


@dataclasses.dataclass(frozen=True)
class TaskMethod:
    """A baseline a task offers beyond the generic ones: the trials run ``task`` (a registered name or a
    Task class) at fixed hyperparameters drawn from ``space`` by the generic ``searcher`` ("grid",
    "random", "bayes", "tpe" or "greedy"). Its result is reported under the offering task."""

    task: Any
    space: SearchSpace
    searcher: str = "grid"


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
    a time to the first (the most sensitive; for the noise schedule tau, docs/algorithms.md §5) and one
    at a time to the rest, each taking a prefix of its priority-ordered grid.
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


def dense_points(space: SearchSpace, n_1d: int = 13, n_first: int = 9, n_slice: int = 3) -> list[dict[str, float]]:
    """An oracle sweep of ``space``: ``n_1d`` evenly (log-)spaced values of a 1-D space; otherwise ``n_first``
    values of the first parameter at the others' defaults plus an ``n_slice`` × ``n_slice`` grid of the first two
    (the others at their defaults). Points are unique, in order."""
    defaults = space.defaults()
    first = space.params[0]
    spread = dataclasses.replace(first, grid=())
    if len(space.params) == 1:
        return [{first.name: v} for v in grid_values(spread, n_1d)]
    points = [{**defaults, first.name: v} for v in grid_values(spread, n_first)]
    second = dataclasses.replace(space.params[1], grid=())
    for a in grid_values(spread, n_slice):
        for b in grid_values(second, n_slice):
            points.append({**defaults, first.name: a, second.name: b})
    unique: dict[tuple, dict[str, float]] = {}
    for p in points:
        unique.setdefault(tuple(sorted(p.items())), p)
    return list(unique.values())


def space_filling_points(space: SearchSpace, n: int, seed: int = 0, digits: int = 4) -> list[dict[str, float]]:
    """An oracle sweep over the whole box of ``space``: its defaults, then ``n`` points of a scrambled Latin hypercube
    (``scipy.stats.qmc.LatinHypercube``, centred-discrepancy optimised ``"random-cd"``, seeded by ``seed``), each
    coordinate mapped onto ``[low, high]`` on the parameter's prior scale (log for a log prior) and rounded to
    ``digits`` significant digits (readable configs in tables). A fixed ``seed`` gives the same design every run;
    every point lies inside the box, so it is as feasible as the box is."""
    if n < 1:
        raise ConfigError(f"a space-filling design needs n >= 1 points, got n={n}; pass n=1 or more.")
    from scipy.stats import qmc

    unit = qmc.LatinHypercube(d=len(space.params), optimization="random-cd", seed=seed).random(n)
    points = [space.defaults()]
    for row in unit:
        point = {}
        for p, u in zip(space.params, row):
            value = math.exp(math.log(p.low) + u * math.log(p.high / p.low)) if p.log else p.low + u * (p.high - p.low)
            point[p.name] = min(p.high, max(p.low, float(f"{value:.{digits}g}")))
        points.append(point)
    return points
