"""Task registry: ``config["task"]`` is a registered name or a :class:`Task` subclass.

Task modules are imported lazily, so ``"toy"`` does not import diffusers.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any

from ray_bilevel.config import ConfigError
from ray_bilevel.tasks.base import Task

__all__ = ["Task", "register_task", "get_task", "registered_tasks", "task_ref", "PAPER_TASKS"]

#: The paper's two applications: what ``benchmarks/compare.py`` runs by default (``--task all``).
PAPER_TASKS = ("noise_schedule", "reward_lambda")

_REGISTRY: dict[str, str | type[Task]] = {
    "toy": "ray_bilevel.tasks.toy:ToyTask",
    "noise_schedule": "ray_bilevel.tasks.noise_schedule:NoiseScheduleTask",
    "reward_lambda": "ray_bilevel.tasks.reward_lambda:RewardLambdaTask",
    "weighted_sum": "ray_bilevel.tasks.reward_lambda:WeightedSumTask",
}


#: Names registered as ``"module:Class"``: any process (a Ray worker too) resolves them by importing.
_BY_PATH = {name for name, entry in _REGISTRY.items() if isinstance(entry, str)}


def register_task(name: str, task: str | type[Task]) -> None:
    """Register ``task`` (a class or ``"module:Class"``) under ``name``.

    A class registered at run time lives only in this process's registry: configs sent to Ray workers
    carry the class itself (see :func:`task_ref`); a ``"module:Class"`` path works everywhere.
    """
    _REGISTRY[name] = task
    if isinstance(task, str):
        _BY_PATH.add(name)
    else:
        _BY_PATH.discard(name)


def task_ref(task: Any) -> Any:
    """What a trial config should carry to reach ``task`` in another process: the registered name when any
    process can resolve it (registered by import path), else the Task class itself (Ray pickles it)."""
    if isinstance(task, str) and task in _BY_PATH:
        return task
    return get_task(task)


def registered_tasks() -> list[str]:
    """Names of the registered tasks whose module can be imported."""
    names = []
    for name in sorted(_REGISTRY):
        try:
            get_task(name)
        except (ImportError, ConfigError):
            continue
        names.append(name)
    return names


def get_task(task: Any) -> type[Task]:
    """Resolve a registered name or a Task subclass to the class."""
    if isinstance(task, type) and issubclass(task, Task):
        return task
    if not isinstance(task, str):
        raise ConfigError(f"config['task'] must be a task name or a Task subclass, got {task!r}.")
    if task not in _REGISTRY:
        close = difflib.get_close_matches(task, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown task {task!r}; choose one of {sorted(_REGISTRY)} or pass a Task subclass.{hint}"
        )
    entry = _REGISTRY[task]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        try:
            entry = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"task {task!r} is registered but {entry!r} cannot be imported: {exc}") from exc
        _REGISTRY[task] = entry
    return entry
