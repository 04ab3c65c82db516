"""Reporting from a Tune *function* trainable: the seam between a loop that knows no Ray (e.g. one driven by
:class:`~ray_bilevel.schedule_learner.ScheduleLearner`) and ``ray.tune.report``.

* :func:`tune_reporter` — a callback ``metrics -> None`` that calls ``ray.tune.report(metrics, checkpoint=...)``,
  the checkpoint holding ``state()`` (the user's model, optimizer and learner state dicts) as one ``torch.save`` file;
* :func:`tune_restore` — that state from ``ray.tune.get_checkpoint()`` (``torch.load(weights_only=True)``), or
  ``None`` when the trial starts fresh.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["STATE_FILE", "tune_reporter", "tune_restore"]

#: The file a :func:`tune_reporter` checkpoint holds.
STATE_FILE = "state.pt"


def tune_reporter(state: Callable[[], Mapping[str, Any]] | None = None,
                  extra: Callable[[], Mapping[str, Any]] | None = None,
                  files: Callable[[str], Any] | None = None) -> Callable[[dict[str, float]], None]:
    """A callback for ``ScheduleLearner(callback=...)``: each call reports ``metrics`` (plus ``extra()``, e.g. the
    user's training loss) to Tune, with a checkpoint of ``state()`` when given; ``files(folder)`` may write more into
    the checkpoint folder (e.g. ``learner.export``: the scheduler configs travel with the checkpoint). Call it only
    inside a Tune trial."""

    def report(metrics: dict[str, float]) -> None:
        from ray import tune

        merged = {**metrics, **(dict(extra()) if extra is not None else {})}
        if state is None:
            tune.report(merged)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(dict(state()), os.path.join(folder, STATE_FILE))
            if files is not None:
                files(folder)
            tune.report(merged, checkpoint=tune.Checkpoint.from_directory(folder))

    return report


def tune_restore() -> dict[str, Any] | None:
    """The state saved by :func:`tune_reporter` in this trial's latest checkpoint, or ``None`` (a fresh trial)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
