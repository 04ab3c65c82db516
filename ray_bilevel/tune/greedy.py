"""Greedy coordinate-wise grid search as a Ray Tune ``Searcher`` (docs/algorithms.md §5).

The paper's schedule baseline tunes one coordinate at a time, "tau first and then start, end, and
epsilon" [README of the released code]; its grids are [lost]. Stage k tries every value of
coordinate k's grid with the coordinates searched before it fixed at their best values and the
later ones at their defaults; when the stage's last trial has finished (trials may finish in any
order), the best value is fixed and the next stage starts. A configuration already evaluated
(the incumbent, whose value sits in the next grid) is not run again. After the last stage
``suggest`` returns ``Searcher.FINISHED``.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.variant_generator import parse_spec_vars

from ray_bilevel.config import ConfigError
from ray_bilevel.tune._searcher_util import (
    UNDEFINED_METRIC_MODE,
    PickledStateMixin,
    finite_objective,
    flat_space,
    nested,
    take_search_properties,
)

__all__ = ["GreedyGridSearcher"]



def _key(config: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, float(v)) for k, v in config.items()))


class GreedyGridSearcher(PickledStateMixin, Searcher):
    """Coordinate-wise grid search: each coordinate's best value is fixed before the next is searched.

    Args:
        grids: ``{name: [values]}``; the dict's order is the search order unless ``order`` is given.
            Grids may nest (``{"opt": {"lr": [...]}}``): each coordinate is then named by its path
            (``"opt/lr"``, in ``order``) and every config is handed back nested, as Tune's searchers do.
        defaults: value of each coordinate before it is searched (defaults to its grid's first value),
            nested as ``grids``.
        order: coordinate order (the paper: ``["tau", "start", "end", "eps"]``).
        metric, mode: the reported metric and ``"min"``/``"max"`` (may come from ``TuneConfig``, taken
            as Tune's HyperOptSearch takes them when it owns its space: see ``take_search_properties``).
        max_trials: stop suggesting after this many trials (``None`` = the full pass).

    A trial that fails, or reports a missing / NaN / inf metric, is skipped with a warning (it
    can never become the incumbent). ``best`` is the incumbent ``(config, value)``; ``history`` the
    evaluated ``(config, value)`` pairs in completion order.
    """

    def __init__(
        self,
        grids: Mapping[str, Any],
        defaults: Mapping[str, Any] | None = None,
        order: Sequence[str] | None = None,
        metric: str | None = None,
        mode: str | None = None,
        max_trials: int | None = None,
    ) -> None:
        if mode is not None and mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'min' or 'max', got {mode!r}.")
        grids, defaults = flat_space(grids), flat_space(defaults or {})
        order = list(order) if order is not None else list(grids)
        if sorted(order) != sorted(grids):
            raise ConfigError(f"order {order} must name each grid coordinate {sorted(grids)} exactly once.")
        empty = [n for n in order if not list(grids[n])]
        if empty:
            raise ConfigError(f"greedy grids must be non-empty; {empty} are empty.")
        unknown = set(defaults) - set(grids)
        if unknown:
            raise ConfigError(f"defaults for {sorted(unknown)} have no grid; grids are {sorted(grids)}.")
        super().__init__(metric=metric, mode=mode)
        self.grids = {n: [float(v) for v in grids[n]] for n in order}
        self.order = order
        self.max_trials = max_trials
        self._incumbent = {n: float(defaults.get(n, self.grids[n][0])) for n in order}
        g = self.grids
        full = len(g[order[0]]) + sum(len(g[n]) - (self._incumbent[n] in g[n]) for n in order[1:])
        #: Trials of the full pass (exact unless trials fail); ``max_trials`` caps it.
        self.total_trials = full if max_trials is None else min(full, max_trials)
        self._incumbent_value: float | None = None  # to minimise (sign-flipped for mode="max")
        self._stage = -1
        self._queue: list[dict[str, float]] = []
        self._stage_results: list[tuple[dict[str, float], float]] = []
        self._live: dict[str, dict[str, float]] = {}
        self._seen: dict[tuple, float | None] = {}
        self._n_suggested = 0
        self._finished = False
        self.history: list[tuple[dict[str, float], float]] = []
        self._next_stage()

    # -- stages ------------------------------------------------------------------------------
    def _next_stage(self) -> None:
        """Fix the best value of the stage just finished, then queue the next non-trivial stage."""
        for config, y in self._stage_results:
            if self._incumbent_value is None or y < self._incumbent_value:
                self._incumbent, self._incumbent_value = dict(config), y
        self._stage_results = []
        while True:
            self._stage += 1
            if self._stage >= len(self.order):
                self._finished = True
                return
            name = self.order[self._stage]
            queue = [{**self._incumbent, name: v} for v in self.grids[name]]
            if any(_key(c) not in self._seen for c in queue):
                self._queue = queue
                return

    def suggest(self, trial_id: str) -> dict[str, float] | str | None:  # type: ignore[override]  # Ray says Optional[Dict], but its Searcher.FINISHED is a str
        if not self._metric or not self._mode:
            raise RuntimeError(UNDEFINED_METRIC_MODE.format(cls=type(self).__name__))
        while True:
            if self._finished:
                return Searcher.FINISHED
            budget_spent = self.max_trials is not None and self._n_suggested >= self.max_trials
            while self._queue and not budget_spent:
                config = self._queue.pop(0)
                if _key(config) in self._seen:  # evaluated before: reuse its value, run nothing
                    y = self._seen[_key(config)]
                    if y is not None:
                        self._stage_results.append((config, y))
                    continue
                self._seen[_key(config)] = None  # in flight
                self._live[trial_id] = config
                self._n_suggested += 1
                return nested(config)
            if self._live:
                return None  # wait for this stage's trials to finish
            if budget_spent:
                self._queue = []
                self._stage = len(self.order)  # no more stages
            self._next_stage()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        config = self._live.pop(trial_id, None)
        if config is None:
            return
        y, why = finite_objective(self, result, error)
        if y is None:
            warnings.warn(f"GreedyGridSearcher: trial {trial_id} at {config} {why}; skipped.")
            return
        self._seen[_key(config)] = y
        self._stage_results.append((config, y))
        self.history.append((nested(config), y if self._mode == "min" else -y))

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        _, domains, grids = parse_spec_vars(config)
        take_search_properties(self, metric, mode, owns_space=True)
        return not (domains or grids)  # False: the greedy searcher owns its space, Tune reports the clash

    # -- results and state -------------------------------------------------------------------
    @property
    def best(self) -> tuple[dict[str, float], float] | None:
        """The incumbent (config, metric value), including a finished-but-unclosed stage."""
        candidates = list(self._stage_results)
        if self._incumbent_value is not None:
            candidates.append((self._incumbent, self._incumbent_value))
        if not candidates:
            return None
        config, y = min(candidates, key=lambda c: c[1])
        return nested(config), (y if self._mode == "min" else -y)
