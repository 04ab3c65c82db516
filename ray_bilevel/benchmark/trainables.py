"""The benchmark's trials: the package's trainables with fresh state on actor reuse, and the reporting
evaluation of a chosen checkpoint.

1. **Cost inside, reporting outside.** A trial's steps (and its final ``evaluate(final=True)``, which completes
   the method's answer, e.g. the λ task's guided generation) are the method's cost: each report carries the
   trial's ``cpu_s``. The test-split evaluation (``Task.evaluate_test``) runs only in :func:`final_evaluation`,
   on checkpoints the harness chose by their validation metric: reporting, excluded from every method's cost.
2. **Fresh state on actor reuse.** With ``reuse_actors=True`` Tune hands a finished trial's actor to
   the next trial through ``reset_config``; the task is rebuilt so a new trial never inherits the
   previous trial's network. PBT's exploit still works: Tune restores the checkpoint right after.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from ray_bilevel.tune.fork import ForkStepTrainable
from ray_bilevel.tune.trainable import BilevelTrainable, FixedHyperTrainable

__all__ = ["BenchBilevelTrainable", "BenchFixedTrainable", "BenchForkTrainable", "trainable_class",
           "final_evaluation"]

#: Largest exported file returned by :func:`final_evaluation` (bytes).
MAX_EXPORT_BYTES = 8 * 2**20


class _Fresh:
    """Mixin: a reused actor rebuilds its task (no test-split reads happen in a trial); every report carries
    ``reported_at`` (``time.time()``, sub-second: Tune's own ``timestamp`` is whole seconds, too coarse to order two
    trials that finish in the same second, which the anytime curve needs) and ``work_fraction`` (the share of the
    trial's complete run done: the harness's progress line, :mod:`.progress`)."""

    def step(self) -> dict[str, Any]:
        report = super().step()  # type: ignore[misc]
        report["reported_at"] = time.time()
        report["work_fraction"] = self.work_fraction()  # type: ignore[attr-defined]
        return report

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._build(new_config)  # type: ignore[attr-defined]
        return True


class BenchFixedTrainable(_Fresh, FixedHyperTrainable):
    """:class:`~ray_bilevel.tune.FixedHyperTrainable` for the benchmark (see the module docstring)."""


class BenchBilevelTrainable(_Fresh, BilevelTrainable):
    """:class:`~ray_bilevel.tune.BilevelTrainable` for the benchmark (see the module docstring)."""


class BenchForkTrainable(_Fresh, ForkStepTrainable):
    """:class:`~ray_bilevel.tune.ForkStepTrainable` for the benchmark (see the module docstring)."""


def trainable_class(bilevel: bool, config: Mapping[str, Any]) -> type:
    """The benchmark's trainable of a method's trials: the bilevel kinds (a ``fork`` key selects the forked-training
    step) or the fixed-hyperparameter trial."""
    if not bilevel:
        return BenchFixedTrainable
    return BenchForkTrainable if "fork" in config else BenchBilevelTrainable


def final_evaluation(bilevel: bool, config: dict[str, Any], checkpoint: Any, full: bool = True,
                     export: bool = True) -> dict[str, Any]:
    """Restore a trial from ``checkpoint`` (a ``tune.Checkpoint``), run ``Task.evaluate_test(full)`` (the reporting
    protocol on the test split and its validation twins) and ``export``; return the metrics, the exported files as
    bytes (so a remote worker can ship them to the driver), the seconds and the process CPU-seconds it took. Run it
    as a Ray task with the trial's resources."""
    t0, c0 = time.perf_counter(), time.process_time()
    cls = trainable_class(bilevel, config)
    trainable = cls(config={k: v for k, v in config.items() if k != "test_at_end"})
    with checkpoint.as_directory() as directory:
        trainable.load_checkpoint(directory)
    metrics = trainable.task.evaluate_test(full=full)
    files: dict[str, bytes] = {}
    if export:
        with tempfile.TemporaryDirectory() as out:
            trainable.task.export(out)
            for root, _, names in os.walk(out):
                for name in names:
                    path = os.path.join(root, name)
                    if os.path.getsize(path) <= MAX_EXPORT_BYTES:
                        with open(path, "rb") as fh:
                            files[os.path.relpath(path, out)] = fh.read()
    trainable.stop()
    return {"metrics": metrics, "files": files, "seconds": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0}
