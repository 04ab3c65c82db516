"""A Tune ``Searcher`` that runs a fixed list of configurations, once each, in order.

The benchmark's ``dense`` method (the oracle sweep a task declares with ``Task.oracle_points()``) runs
through it, so it gets the same trainable, resources, checkpoints and resume as every searcher.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ray.tune.search import Searcher

from ray_bilevel.config import ConfigError
from ray_bilevel.tune._searcher_util import PickledStateMixin

__all__ = ["PointsSearcher"]


class PointsSearcher(PickledStateMixin, Searcher):
    """Suggest ``points[0]``, ``points[1]``, ... then ``Searcher.FINISHED``.

    Args:
        points: configurations (hyperparameter name -> value), merged by Tune into the param space's constants.
        metric, mode: the reported metric and ``"min"``/``"max"`` (may come from ``TuneConfig``).
    """

    def __init__(self, points: Sequence[Mapping[str, Any]], metric: str | None = None, mode: str | None = None) -> None:
        if not points:
            raise ConfigError("PointsSearcher needs at least one configuration to evaluate.")
        super().__init__(metric=metric, mode=mode)
        self.points = [dict(p) for p in points]
        self.next = 0
        self.live: dict[str, int] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]  # Ray says Optional[Dict], but its Searcher.FINISHED is a str
        if self.next >= len(self.points):
            return Searcher.FINISHED
        self.live[trial_id] = self.next
        self.next += 1
        return dict(self.points[self.live[trial_id]])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.live.pop(trial_id, None)
