"""The benchmark's trials: the package's trainables with two changes that keep the comparison fair
and affordable.

1. **One final evaluation per method.** Trials report the in-loop metric only (e.g. ``fid_domain``
   on 1,000 samples); the expensive reporting protocol (``Task.evaluate(final=True)``: Inception
   FID / IS, or the alignment protocol) runs once per method, on the checkpoint of its best trial,
   by :func:`final_evaluation` — the same evaluator for every method, and not N times per searcher.
2. **Fresh state on actor reuse.** With ``reuse_actors=True`` Tune hands a finished trial's actor to
   the next trial through ``reset_config``; the task is rebuilt so a new trial never inherits the
   previous trial's network. PBT's exploit still works: Tune restores the checkpoint right after.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from ray_bilevel.tune.trainable import BilevelTrainable, FixedHyperTrainable

__all__ = ["BenchBilevelTrainable", "BenchFixedTrainable", "final_evaluation"]

#: Largest exported file returned by :func:`final_evaluation` (bytes).
MAX_EXPORT_BYTES = 8 * 2**20


class _InLoopOnly:
    """Mixin: trials evaluate with ``final=False``; :meth:`final_evaluation_now` runs the full protocol."""

    def _build(self, config: Any) -> None:
        super()._build(config)  # type: ignore[misc]
        full = self.task.evaluate
        self._full_evaluate = full
        self.task.evaluate = lambda final=False: full(final=False)  # type: ignore[method-assign]

    def step(self) -> dict[str, Any]:
        report = super().step()  # type: ignore[misc]
        report["final"] = False
        return report

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._build(new_config)
        return True

    def final_evaluation_now(self) -> dict[str, float]:
        return self._full_evaluate(final=True)


class BenchFixedTrainable(_InLoopOnly, FixedHyperTrainable):
    """:class:`~ray_bilevel.tune.FixedHyperTrainable` for the benchmark (see the module docstring)."""


class BenchBilevelTrainable(_InLoopOnly, BilevelTrainable):
    """:class:`~ray_bilevel.tune.BilevelTrainable` for the benchmark (see the module docstring)."""


def final_evaluation(bilevel: bool, config: dict[str, Any], checkpoint: Any) -> dict[str, Any]:
    """Restore a trial from ``checkpoint`` (a ``tune.Checkpoint``), run ``evaluate(final=True)`` and
    ``export``; return the metrics, the exported files as bytes (so a remote worker can ship them
    to the driver) and the seconds it took. Run it as a Ray task with the trial's resources."""
    t0 = time.perf_counter()
    cls = BenchBilevelTrainable if bilevel else BenchFixedTrainable
    trainable = cls(config=config)
    with checkpoint.as_directory() as directory:
        trainable.load_checkpoint(directory)
    metrics = trainable.final_evaluation_now()
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as out:
        trainable.task.export(out)
        for root, _, names in os.walk(out):
            for name in names:
                path = os.path.join(root, name)
                if os.path.getsize(path) <= MAX_EXPORT_BYTES:
                    with open(path, "rb") as fh:
                        files[os.path.relpath(path, out)] = fh.read()
    trainable.stop()
    return {"metrics": metrics, "files": files, "seconds": time.perf_counter() - t0}
