"""Shared pieces of the baseline searchers: the objective of a finished trial, pickled state."""
from __future__ import annotations

import math
import pickle
from collections.abc import Mapping

from ray.tune.search import Searcher

__all__ = ["finite_objective", "PickledStateMixin"]


def finite_objective(searcher: Searcher, result: Mapping | None, error: bool) -> tuple[float | None, str]:
    """The metric of a finished trial as a value to *minimise*, or (None, why it is unusable)."""
    if error:
        return None, "errored"
    if not result or searcher.metric not in result:
        return None, f"reported no {searcher.metric!r}"
    try:
        value = float(result[searcher.metric])
    except (TypeError, ValueError):
        return None, f"reported a non-numeric {searcher.metric!r}={result[searcher.metric]!r}"
    if not math.isfinite(value):
        return None, f"reported {searcher.metric}={value}"
    return (value if searcher.mode == "min" else -value), ""


class PickledStateMixin:
    """``get_state`` / ``set_state`` / ``save`` / ``restore`` by pickling the searcher's ``__dict__``
    (what ``Tuner.restore`` and ``ConcurrencyLimiter`` call)."""

    def get_state(self) -> dict:
        return dict(self.__dict__)

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))
