"""Fault injection for the fault-tolerance tests (test_fault_tolerance*.py) and the driver scripts they start.

:func:`faulty` is a test-only subclass of a real Task that reads extra ``ft_*`` config keys: ``ft_log`` (append
``"<tag> <step index> <pid>"`` per step), ``ft_sleep`` (seconds per step, so a kill lands mid-run), ``ft_crash_at``
+ ``ft_marker`` (raise once at that step index; the marker file makes it once). This module is pickled by value,
so Ray workers need not import it.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import cloudpickle, tune

from ray_bilevel import FixedHyperTrainable
from ray_bilevel.tasks.base import Task
from ray_bilevel.tasks.toy import ToyTask

cloudpickle.register_pickle_by_value(sys.modules[__name__])

def faulty(base: type[Task]) -> type[Task]:
    """``base`` plus fault injection on every ``hyper_step`` / ``lower_step`` (see module doc)."""

    class Faulty(base):  # type: ignore[misc, valid-type]
        def __init__(self, config: dict[str, Any]) -> None:
            config = dict(config)
            self.ft = {k: config.pop(k) for k in list(config) if k.startswith("ft_")}
            super().__init__(config)
            self.ft_index = 0
            if "ft_tag" not in self.ft:  # the trial's starting point names it in the log
                self.ft["ft_tag"] = ",".join(f"{v:.9g}" for v in self.hyperparameters().values())

        def _event(self) -> None:
            index = self.ft_index
            if self.ft.get("ft_log"):
                with open(self.ft["ft_log"], "a") as fh:
                    fh.write(f"{self.ft.get('ft_tag', '-')} {index} {os.getpid()}\n")
            if self.ft.get("ft_sleep"):
                time.sleep(self.ft["ft_sleep"])
            crash_at, marker = self.ft.get("ft_crash_at"), self.ft.get("ft_marker")
            if crash_at is not None and index == crash_at and not os.path.exists(marker):
                Path(marker).touch()
                raise RuntimeError(f"injected failure at step {index}")

        def _step(self, work: Callable[[], dict[str, float]]) -> dict[str, float]:
            if getattr(self, "_ft_busy", False):  # called by the task itself: count the trainable's calls only
                return work()
            self._event()
            self.ft_index += 1
            self._ft_busy = True
            try:
                return work()
            finally:
                self._ft_busy = False

        def hyper_step(self) -> dict[str, float]:
            return self._step(super().hyper_step)

        def lower_step(self) -> dict[str, float]:
            return self._step(super().lower_step)

        def evaluate(self, final: bool = False) -> dict[str, float]:
            # a final evaluation may finish lower-level work itself (reward_lambda): not a trainable call
            busy, self._ft_busy = getattr(self, "_ft_busy", False), True
            try:
                return super().evaluate(final)
            finally:
                self._ft_busy = busy

        def state_dict(self) -> dict[str, Any]:
            return {**super().state_dict(), "ft_index": self.ft_index}

        def load_state_dict(self, state: Any) -> None:
            super().load_state_dict(state)
            self.ft_index = int(state["ft_index"])

    Faulty.__name__ = Faulty.__qualname__ = f"Faulty{base.__name__}"
    return Faulty


FaultyToy = faulty(ToyTask)


def state_settled(storage: Path, terminated: int) -> bool:
    """Tune's experiment state on disk parses and records at least ``terminated`` finished trials.

    A SIGKILL that lands while Tune rewrites that file (it is not written atomically) leaves a
    truncated file that no restore can read — a Tune limitation, documented in
    examples/cluster/README.md — so the tests kill only once the state on disk is complete.
    """
    files = sorted(storage.glob("*/experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return False
    try:
        text = files[-1].read_text()
        json.loads(text)
    except (OSError, ValueError):
        return False
    return text.count("TERMINATED") >= terminated


def read_log(path: Path) -> list[tuple[str, int, int]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            rows.append((parts[0], int(parts[1]), int(parts[2])))
    return rows


def uninterrupted(cls: type, config: dict[str, Any], iterations: int) -> dict[str, Any]:
    """The reference: the same seeded trial run in-process, no Ray, no faults."""
    t = cls(config=config)
    for _ in range(iterations):
        last = t.train()
    t.stop()
    return last


SEARCHER_TRIALS = 5


def searcher_experiment(storage: str, log: str, restore: bool) -> list[tuple[float, float]]:
    """Fixed-x toy trials proposed by the project's GP searcher (``make_searcher("bayes")``), one at a time.

    Returns the final (x0, x1) of every trial. With ``restore``, continues the experiment under
    ``storage`` with ``Tuner.restore`` (the searcher's pickled state included).
    """
    from ray_bilevel.tune.searchers import make_searcher

    space = {"x0": tune.uniform(-2.0, 2.0), "x1": tune.uniform(-2.0, 2.0)}
    plan = make_searcher("bayes", space, metric="upper_loss", mode="min", seed=0, num_samples=SEARCHER_TRIALS,
                         max_concurrent=1, n_initial_points=2)
    constants = {"task": FaultyToy, "preset": "smoke", "seed": 1, "ft_log": log, "ft_sleep": 0.01}
    path = os.path.join(storage, "searcher")
    if restore:
        tuner = tune.Tuner.restore(path, trainable=FixedHyperTrainable, param_space=constants,
                                   resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            FixedHyperTrainable,
            param_space={**plan.param_space, **constants},
            tune_config=plan.tune_config("upper_loss", "min"),
            run_config=tune.RunConfig(
                storage_path=storage,
                name="searcher",
                verbose=0,
                checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=5, checkpoint_at_end=True),
            ),
        )
    grid = tuner.fit()
    assert not grid.errors, grid.errors
    return [(r.metrics["x0"], r.metrics["x1"]) for r in grid]


def first_seen(rows: list[tuple[str, int, int]]) -> list[str]:
    order: list[str] = []
    for tag, _, _ in rows:
        if tag not in order:
            order.append(tag)
    return order
