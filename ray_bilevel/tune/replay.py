"""Replay a population-based run's hyperparameter schedule from scratch (PBT / PB2).

PBT and PB2 do not end with one hyperparameter setting but with a *schedule*: the best trial ran under its first
config, then (at each exploit) continued from another trial's checkpoint under a new config. Tune logs every exploit
of trial ``T`` to ``pbt_policy_T.txt`` in the experiment folder (``log_config=True``, the default), one JSON row
``[trial tag, donor tag, trial iteration, donor iteration, donor config, new config]`` per exploit, after copying the
donor's file: so the file holds the lineage of the state the trial ends with. Read backwards, each row's trial is
the next (later) row's donor; the first row of that chain gives the config the lineage started with and each row the
config it switched to after ``donor iteration`` Tune iterations.

:func:`policy_schedule` turns such a file into ``(initial config, [(iteration, config), ...])``;
``FixedHyperTrainable`` replays it with ``config["hyper_schedule"]`` (:func:`schedule_for`): one trial from scratch
that switches its hyperparameters at the same iterations, so the population's answer becomes one a user can re-run
(the idea of Tune's ``PopulationBasedTrainingReplay``, done inside the trial so that it also survives restores).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ray_bilevel.config import ConfigError

__all__ = ["policy_schedule", "schedule_for", "policy_file", "check_schedule", "scheduled_values"]


def policy_file(experiment_path: str, trial_id: str) -> str:
    """Where Tune's PBT logs the exploits of trial ``trial_id`` (it may not exist: a trial that never exploited)."""
    return os.path.join(experiment_path, f"pbt_policy_{trial_id}.txt")


def policy_schedule(path: str) -> tuple[dict[str, Any] | None, list[tuple[int, dict[str, Any]]]]:
    """``(initial config, [(iteration, config), ...])`` of the lineage a PBT policy file ends with; ``(None, [])``
    when the file does not exist (the trial never exploited another: its own config is the whole schedule)."""
    if not os.path.exists(path):
        return None, []
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n} is not a PBT policy row (JSON list of 6): {exc}") from exc
            if not isinstance(row, list) or len(row) != 6:
                raise ConfigError(f"{path}:{n} is not a PBT policy row (a list of 6 items), got {line.strip()[:80]!r}.")
            rows.append(row)
    chain: list[list[Any]] = []
    for row in reversed(rows):
        if chain and row[0] != chain[-1][1]:  # this row's trial is not the donor of the later one: another lineage
            break
        chain.append(row)
    if not chain:
        return None, []
    chain.reverse()
    initial = dict(chain[0][4])
    return initial, [(int(row[3]), dict(row[5])) for row in chain]


def schedule_for(changes: Sequence[tuple[int, Mapping[str, Any]]], names: Sequence[str]) -> list[list[Any]]:
    """The ``hyper_schedule`` config value of ``changes``, keeping only the hyperparameters ``names``."""
    return [[int(step), {k: v for k, v in dict(config).items() if k in names}] for step, config in changes]


def check_schedule(value: Any) -> list[tuple[int, dict[str, Any]]]:
    """``config["hyper_schedule"]`` as sorted ``(iteration, values)`` pairs; a ConfigError names a bad one."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"config['hyper_schedule'] must be a list of [iteration, {{name: value}}] pairs, got "
                          f"{value!r}.")
    out = []
    for item in value:
        if (not isinstance(item, (list, tuple)) or len(item) != 2 or isinstance(item[0], bool)
                or not isinstance(item[0], int) or item[0] < 0 or not isinstance(item[1], Mapping)):
            raise ConfigError(f"config['hyper_schedule'] items must be [iteration >= 0, {{name: value}}], got "
                              f"{item!r}.")
        out.append((int(item[0]), dict(item[1])))
    return sorted(out, key=lambda p: p[0])


def scheduled_values(schedule: Sequence[tuple[int, Mapping[str, Any]]], iterations_done: int) -> dict[str, Any]:
    """The values in force after ``iterations_done`` Tune iterations: every change at or before it, in order."""
    values: dict[str, Any] = {}
    for step, change in schedule:
        if step <= iterations_done:
            values.update(change)
    return values
