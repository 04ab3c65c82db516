"""The Ray Tune layer: trainables that drive any Task, and the baselines' searchers.

Nothing here knows about diffusion; a Task is reached only through ``ray_bilevel.tasks.base``.
"""
from __future__ import annotations

from typing import Any

from ray_bilevel.tune.fork import ForkStepTrainable
from ray_bilevel.tune.trainable import BilevelTrainable, FixedHyperTrainable

__all__ = ["BilevelTrainable", "FixedHyperTrainable", "ForkStepTrainable", "SkoptSearcher", "GreedyGridSearcher",
           "make_searcher"]

_SEARCHERS = ("SkoptSearcher", "GreedyGridSearcher", "make_searcher")


def __getattr__(name: str) -> Any:
    if name in _SEARCHERS:
        from ray_bilevel.tune import searchers

        return getattr(searchers, name)
    raise AttributeError(f"module 'ray_bilevel.tune' has no attribute {name!r}")
