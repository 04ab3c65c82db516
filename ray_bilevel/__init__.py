"""ray_bilevel: first-order generative bilevel optimisation for diffusion models, as Ray Tune trainables.

``BilevelTrainable``, ``ForkStepTrainable`` and ``FixedHyperTrainable`` are imported lazily so that
``import ray_bilevel`` (and Ray workers that only need a Task) do not pay for importing Ray.
"""
from __future__ import annotations

from typing import Any

from ray_bilevel.config import ConfigError
from ray_bilevel.tasks import Task, get_task, register_task

__version__ = "0.1.0"
__all__ = ["BilevelTrainable", "ForkStepTrainable", "FixedHyperTrainable", "ConfigError", "Task", "get_task",
           "register_task"]
__all__ += ["ScheduleLearner", "ScheduleLearnerConfig"]  # a learnable noise schedule in your own training loop


def __getattr__(name: str) -> Any:
    if name in ("BilevelTrainable", "ForkStepTrainable", "FixedHyperTrainable"):
        from ray_bilevel import tune as _tune

        return getattr(_tune, name)
    if name in ("ScheduleLearner", "ScheduleLearnerConfig"):
        from ray_bilevel import schedule_learner

        return getattr(schedule_learner, name)
    raise AttributeError(f"module 'ray_bilevel' has no attribute {name!r}")
