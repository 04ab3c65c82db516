"""A compute budget for any Tune searcher: stop starting trials when the next would pass it.

:class:`BudgetLimiter` wraps a :class:`ray.tune.search.Searcher` and reads a cost key from the trials' results
(``cost_flops`` for the package's trainables: counted compute, deterministic). It starts a new trial only while

    spent by finished trials  +  Σ over running trials max(their cost so far, one full trial)  +  one full trial
        ≤  budget

where "one full trial" is ``trial_cost`` when given, else the largest cost of a trial that ran to its end (its last
result says ``complete``, or ``done`` for a trainable without that key), else, before any has, the largest
extrapolation ``cost × iterations / training_iteration`` of
a trial seen so far (an over-estimate: building a trial is front-loaded), else nothing limits the first trials (wrap
it in a ``ConcurrencyLimiter``: a budget below ``max_concurrent`` full trials starts that many). So the method's total
stays within one full trial of the budget, and a trial stopped early by a scheduler (ASHA) leaves its unspent share to
new trials: that is how a multi-fidelity method starts more trials than a full-fidelity search for the same compute.

Example::

    searcher = BudgetLimiter(OptunaSearch(sampler=RandomSampler(seed=0)), budget=4e12)
    tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, 2), num_samples=-1,
               scheduler=AsyncHyperBandScheduler(...), metric="fid_domain_val", mode="min"))
"""
from __future__ import annotations

import math
from typing import Any

from ray.tune.search import Searcher

from ray_bilevel.config import ConfigError

__all__ = ["BudgetLimiter"]


class BudgetLimiter(Searcher):
    """Stop a searcher's suggestions once ``budget`` units of ``cost_key`` would be passed (see the module doc).

    Args:
        searcher: the searcher that proposes configurations.
        budget: the method's compute budget, in the units of ``cost_key`` (> 0).
        cost_key: the cumulative cost every result reports (default ``"cost_flops"``).
        max_trials: an upper bound on the trials started, whatever the budget (``None``: none).
        trial_cost: the cost of one full trial, when known (``None``: learnt from the results).
        iterations: the Tune iterations of one full trial (for the extrapolation; ``None``: none).
        in_trials: ``budget`` counts full trials (``4``: four full trials' compute, whatever one costs) instead of
            units of ``cost_key``.
    """

    def __init__(self, searcher: Searcher, budget: float, cost_key: str = "cost_flops",
                 max_trials: int | None = None, trial_cost: float | None = None,
                 iterations: int | None = None, in_trials: bool = False) -> None:
        if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
            raise ConfigError(f"the compute budget must be a finite number > 0, got {budget!r}.")
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.budget = float(budget)
        self.cost_key = cost_key
        self.max_trials = max_trials
        self.trial_cost = trial_cost
        self.iterations = iterations
        self.in_trials = in_trials
        self.spent = 0.0  # by finished trials
        self.full_done = 0.0  # the largest cost of a trial that ran to its end
        self.full_guess = 0.0  # the largest extrapolated cost of a trial seen so far
        self.running: dict[str, float] = {}  # trial id -> its cost so far
        self.started = 0

    @property
    def full(self) -> float:
        """The cost of one full trial (see the module doc; 0: unknown yet)."""
        return float(self.trial_cost or self.full_done or self.full_guess)

    # -- the budget ------------------------------------------------------------------------------
    def committed(self) -> float:
        """What finished trials spent plus what the running ones will spend at most (one full trial each)."""
        return self.spent + sum(max(cost, self.full) for cost in self.running.values())

    def _room(self) -> bool:
        if self.max_trials is not None and self.started >= self.max_trials:
            return False
        if self.full == 0.0:  # no finished trial yet: its cost is unknown, start what the concurrency allows
            return True
        limit = self.budget * self.full if self.in_trials else self.budget
        return self.committed() + self.full <= limit * (1 + 1e-9)

    # -- Searcher ---------------------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        ok = self.searcher.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.searcher.metric, self.searcher.mode
        return ok

    def suggest(self, trial_id: str) -> dict | None:
        if not self._room():  # Tune's Searcher types suggest() as a dict, yet its FINISHED is a string
            return Searcher.FINISHED if not self.running else None  # type: ignore[return-value]
        config = self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            self.running[trial_id] = 0.0
            self.started += 1
        return config

    def _observe(self, result: dict) -> float | None:
        if result.get(self.cost_key) is None:
            return None
        cost = float(result[self.cost_key])
        # `complete`: the package's trainables' own "budget spent" (Tune also sets `done` when a scheduler stops one)
        done, it = bool(result.get("complete", result.get("done"))), result.get("training_iteration")
        if done:
            self.full_done = max(self.full_done, cost)
        elif self.iterations and it:
            self.full_guess = max(self.full_guess, cost * self.iterations / max(1, int(it)))
        return cost

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        cost = self._observe(result)
        if trial_id in self.running and cost is not None:
            self.running[trial_id] = cost
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        cost = self.running.pop(trial_id, 0.0)
        if result:
            observed = self._observe(result)
            cost = cost if observed is None else observed
        self.spent += cost
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as fh:
            pickle.dump({"state": self.get_state(), "searcher": self.searcher}, fh)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as fh:
            data = pickle.load(fh)
        self.set_state(data["state"])
        self.searcher = data["searcher"]

    def get_state(self) -> dict[str, Any]:
        return {"spent": self.spent, "full_done": self.full_done, "full_guess": self.full_guess,
                "running": dict(self.running), "started": self.started, "budget": self.budget,
                "cost_key": self.cost_key, "max_trials": self.max_trials, "trial_cost": self.trial_cost,
                "iterations": self.iterations, "in_trials": self.in_trials}

    def set_state(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
