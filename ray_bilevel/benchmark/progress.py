"""Progress of one method while it runs: trials done of its budget, compute done and left, and an ETA.

A Tune callback of the method's ``tune.Tuner`` (it runs where the Tuner runs). Each benchmark trial reports
``work_fraction`` (the share of its complete run done, :mod:`.trainables`) and ``cost_flops`` (its counted compute so
far). One trial's compute is estimated from the trials seen so far (``cost_flops / work_fraction``, their median), so
the method's budget is ``trials ×`` that estimate; the ETA is the compute left at the rate this method has run so far.
A task that books no compute (``cost_flops`` 0) is measured in work fractions instead. A line is printed when a trial
completes and at most every ``every_s`` seconds in between, and appended to ``file`` (``OUT/progress.log``): a method
running in a Ray task of its own (``--concurrent-methods`` > 1) prints nowhere the user sees, so the driver echoes that
file's new lines (:class:`ProgressTail`).
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

from ray_bilevel.benchmark.common import log

__all__ = ["MethodProgress", "ProgressTail", "format_eta"]


def format_eta(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class MethodProgress(Callback):
    """Prints ``LABEL: k of N trials done, X of ~Y GFLOP, ETA T`` while a method runs.

    Args:
        label: e.g. ``"noise_schedule / random / seed 0"``.
        trials: the method's budget in trials (for ``asha``: full trainings' worth of compute).
        every_s: the most frequent a line is printed between trial completions.
        printer, clock: where lines go and the time source (tests replace them).
        file: a file each line is appended to (``None``: none).
    """

    def __init__(self, label: str, trials: int, every_s: float = 60.0, printer: Callable[[str], None] = log,
                 clock: Callable[[], float] = time.monotonic, file: str | None = None) -> None:
        self.label, self.trials, self.every_s = label, max(1, int(trials)), float(every_s)
        self.printer, self.clock, self.file = printer, clock, file
        self.start = self.last = clock()
        self.seen: dict[str, tuple[float, float]] = {}  # trial id -> (work_fraction, cost_flops)
        self.done: set[str] = set()
        self.restored: set[str] = set()  # finished in an earlier invocation (--resume): done, not this run's rate

    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        """The experiment starts (again, after a restore): the clock and the counts start afresh. (A restore may hand
        back a callback pickled by an older version of this class, so the counters are made anew, not cleared.)"""
        self.start = self.last = self.clock()
        self.seen, self.done, self.restored = {}, set(), set()

    def _absorb_restored(self, trials: list[Any] | None) -> None:
        """Count the trials a restored experiment finished before this invocation (Tune reports nothing for
        them again): done, with their last result's compute, but not part of this invocation's rate."""
        for t in trials or []:
            tid = str(getattr(t, "trial_id", ""))
            if tid in self.seen or str(getattr(t, "status", "")) != "TERMINATED":
                continue
            last = getattr(t, "last_result", None) or {}
            self.seen[tid] = (1.0, max(0.0, float(last.get("cost_flops") or 0.0)))
            self.done.add(tid)
            self.restored.add(tid)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        self._absorb_restored(trials)
        fraction = float(result.get("work_fraction") or 0.0)
        flops = float(result.get("cost_flops") or 0.0)
        self.seen[str(trial.trial_id)] = (min(1.0, max(0.0, fraction)), max(0.0, flops))
        if self.clock() - self.last >= self.every_s:
            self.emit()

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._absorb_restored(trials)
        self.done.add(str(trial.trial_id))
        self.emit()

    def estimate(self) -> tuple[float, float, str]:
        """(done, total) in the method's unit (FLOPs, or trials' work when nothing books compute) and the unit."""
        seen = [v for v in self.seen.values() if v[0] > 0]
        if seen and all(f > 0 for _, f in seen):
            per_trial = statistics.median(f / w for w, f in seen)
            done = sum(f for _, f in self.seen.values())
            return done, max(done, per_trial * self.trials), "GFLOP"
        done = sum(1.0 if k in self.done else w for k, (w, _) in self.seen.items())
        return done, float(max(done, self.trials)), "trials"

    def _restored_work(self, unit: str) -> float:
        return sum(self.seen[t][1] if unit == "GFLOP" else 1.0 for t in self.restored)

    def line(self) -> str:
        done, total, unit = self.estimate()
        elapsed = self.clock() - self.start
        text = f"{self.label}: {len(self.done)} of {self.trials} trial(s) done"
        if self.restored:
            text += f" ({len(self.restored)} before --resume)"
        if unit == "GFLOP":
            text += f", {done / 1e9:,.1f} of ~{total / 1e9:,.1f} GFLOP"
        here = done - self._restored_work(unit)  # this invocation's work: the rate of the ETA
        if here > 0 and total > done:
            text += f", ETA {format_eta(elapsed * (total - done) / here)}"
        return text

    def emit(self) -> None:
        self.last = self.clock()
        line = self.line()
        self.printer(line)
        if self.file is not None:
            try:
                with open(self.file, "a", encoding="utf-8") as fh:  # one short line: a single append
                    fh.write(line + "\n")
            except OSError:  # progress is a courtesy: never fail a method over it
                pass


class ProgressTail:
    """Echoes the lines other processes append to a progress file, each once (call it now and then)."""

    def __init__(self, file: str, printer: Callable[[str], None] = log) -> None:
        self.file, self.printer, self.offset = file, printer, 0
        try:
            self.offset = os.path.getsize(file)  # lines of an earlier run (--resume) are not news
        except OSError:
            pass

    def __call__(self) -> None:
        try:
            with open(self.file, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # whole lines only: a line being written waits for the next call
        self.offset += end
        for line in data[:end].decode("utf-8", "replace").splitlines():
            self.printer(line)
