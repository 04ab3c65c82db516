"""Ray Tune trainables that drive any :class:`~ray_bilevel.tasks.base.Task`.

* :class:`BilevelTrainable` — the gradient-based bilevel method: each ``step()`` runs
  ``iterations_per_step`` outer iterations (``Task.hyper_step``), then evaluates.
* :class:`FixedHyperTrainable` — the baselines' trial: the hyperparameters come from the config
  (chosen by a searcher), each ``step()`` runs lower-level work only (``Task.lower_step``), and the
  trial reports ``done=True`` once a complete lower-level run (``Task.lower_budget``) is spent.

Both use only ``ray.tune`` names and know nothing of diffusion: everything task-specific goes
through the Task protocol. Config keys read here (everything else goes to the task):

===========================  ==========================================================================
``task``                     registered task name or Task subclass (required)
``preset``                   ``"smoke"``, ``"quick"`` (default) or ``"paper"``; passed to the task
``iterations_per_step``      outer iterations per Tune iteration (default 1)
``lower_steps_per_iteration``  FixedHyperTrainable: lower steps per Tune iteration (default: so that
                             the fixed trial takes as many Tune iterations as the bilevel one)
``eval_every``               evaluate every N Tune iterations (default 1; the last one always)
``final_every``              also run the final evaluation every N iterations (default 0)
``retrain``                  BilevelTrainable: after the outer budget, train the lower level afresh at the learned
                             hyperparameters (learn, then retrain; default False), see :class:`BilevelTrainable`
``hyper_schedule``           FixedHyperTrainable: ``[[iteration, {name: value}], ...]``, hyperparameters that change
                             after that many Tune iterations (a PBT / PB2 schedule replayed from scratch,
                             :mod:`ray_bilevel.tune.replay`; default: none)
``fork``, ``fork_moves``,    :class:`~ray_bilevel.tune.fork.ForkStepTrainable`: the forked-training step (see there)
``fork_scale``
``test_at_end``              add the task's reporting metrics (``Task.evaluate_test``: the test split) to the
                             last report (default False: a searcher selecting on them would tune on the test
                             split; select on ``Task.tuning_metric()``, the validation twin)
===========================  ==========================================================================

Every report carries ``cost_flops``: the counted FLOPs of every network this trial has run so far (building its task,
then its steps: work and evaluation; kept across checkpoints; :mod:`ray_bilevel.cost`), the cost the benchmark books
for every method alike, deterministic at any concurrency and on any machine; ``cost_flops_by_network`` splits it by
network and ``cost_flops_step`` is this report's share. ``cpu_s`` beside it: the process CPU-seconds, as measured.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from ray import tune

from ray_bilevel.config import ConfigError
from ray_bilevel.cost import FlopMeter, metering
from ray_bilevel.tasks import Task, get_task
from ray_bilevel.tune.replay import check_schedule, scheduled_values

__all__ = ["BilevelTrainable", "FixedHyperTrainable", "TRAINABLE_KEYS", "CHECKPOINT_FILE"]

TRAINABLE_KEYS = frozenset({"iterations_per_step", "lower_steps_per_iteration", "eval_every", "final_every",
                            "test_at_end", "retrain", "hyper_schedule", "fork", "fork_moves", "fork_scale"})
CHECKPOINT_FILE = "ray_bilevel_state.pt"
_LEARNED_FILE = "ray_bilevel_learned.json"  # BilevelTrainable(retrain=True): the hyperparameters it retrains at
_FORMAT = "ray_bilevel.trainable/1"


def _positive_int(config: Mapping[str, Any], key: str, default: int, minimum: int = 1) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < minimum:
        raise ConfigError(f"config[{key!r}] must be an integer >= {minimum}, got {value!r}.")
    return int(value)


class _TaskTrainable(tune.Trainable):
    """Shared plumbing: build the task, evaluate, checkpoint, reset."""

    #: counts units of work done ("outer" for bilevel, "lower" for fixed trials)
    _kind = ""

    def setup(self, config: dict[str, Any]) -> None:
        self._build(config)

    def _build(self, config: Mapping[str, Any]) -> None:
        if "task" not in config:
            raise ConfigError("config must name a task: a registered name (ray_bilevel.tasks.registered_tasks()) or a "
                              "Task subclass.")
        cpu0 = time.process_time()
        task_cls = get_task(config["task"])
        self.task_config = {k: v for k, v in config.items() if k not in TRAINABLE_KEYS}
        self.meter = FlopMeter()  # counted compute of this trial (ray_bilevel.cost): building, steps, evaluations
        with metering(self.meter):
            self.task: Task = task_cls(self.task_config)
        self.iterations_per_step = _positive_int(config, "iterations_per_step", 1)
        self.eval_every = _positive_int(config, "eval_every", 1)
        self.final_every = _positive_int(config, "final_every", 0, minimum=0)
        self.test_at_end = bool(config.get("test_at_end", False))
        self.work_done = 0
        self.cpu_s = time.process_time() - cpu0  # building the task (data, models) is part of the trial's cost
        self._cpu_unreported = self.cpu_s  # CPU-s spent since the last report (this build), for cpu_s_step
        self.trajectory: list[dict[str, float]] = []
        self._last_eval: dict[str, float] = {}

    # -- the work of one Tune iteration ----------------------------------------------------
    def _budget(self) -> int:
        raise NotImplementedError

    def _work(self) -> dict[str, float]:
        raise NotImplementedError

    def _evaluation(self, final: bool) -> dict[str, float]:
        """The validation metrics this report carries (``Task.evaluate``; a trainable that evaluates inside its work
        returns those)."""
        return self.task.evaluate(final=final)

    def work_fraction(self) -> float:
        """The share of the trial's complete run done, for progress estimates (the units of work are alike)."""
        return self.work_done / max(1, self._budget())

    def _run_units(
        self, unit: Callable[[], dict[str, float]], count: int, limit: int | None = None
    ) -> dict[str, float]:
        """Run up to ``count`` units of work without passing ``limit`` (default: the budget); the last unit's
        metrics."""
        metrics: dict[str, float] = {}
        limit = self._budget() if limit is None else limit
        for _ in range(count):
            if self.work_done >= limit:
                break
            metrics = unit()
            self.work_done += 1
        return metrics

    def step(self) -> dict[str, Any]:
        cpu0, flops0 = time.process_time(), self.meter.total
        with metering(self.meter):
            metrics = self._work()
            done = self.work_done >= self._budget()
            n = self.iteration + 1  # Tune's counter is incremented after step() returns
            final = done or (self.final_every > 0 and n % self.final_every == 0)
            if final or n % self.eval_every == 0:
                self._last_eval = self._evaluation(final)
        spent = time.process_time() - cpu0
        self.cpu_s += spent
        cpu_step, self._cpu_unreported = spent + self._cpu_unreported, 0.0
        if done and self.test_at_end:  # reporting, not cost: counted by no meter
            with metering(None):
                self._last_eval = {**self._last_eval, **self.task.evaluate_test()}
        hyper = self.task.hyperparameters()
        for key, value in hyper.items():
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"hyperparameter {key!r} became {value} after {self.work_done} {self._kind} steps; "
                    "lower the hyper learning rate or raise gamma."
                )
        report: dict[str, Any] = {**metrics, **self._last_eval, **hyper}
        bad = [k for k, v in report.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            warnings.warn(
                f"non-finite metrics {bad} at {self._kind} step {self.work_done}; searchers skip this point — "
                "check the task's evaluator (e.g. more eval_samples or fid_shrinkage for FID).",
                RuntimeWarning,
                stacklevel=1,
            )
        self.trajectory.append({f"{self._kind}_steps": float(self.work_done), **hyper})
        report[f"{self._kind}_steps"] = self.work_done
        report["cpu_s"] = self.cpu_s
        # this report's CPU-s, the rebuild of a restored or PBT-exploiting actor included: summed over a trial's
        # reports it is what the trial spent, where cpu_s after a restore is the checkpoint's (the donor's, for PBT)
        report["cpu_s_step"] = cpu_step
        report["cost_flops"] = self.meter.total
        report["cost_flops_step"] = self.meter.total - flops0  # this report's work (PBT: the donor's is not in it)
        report["cost_flops_by_network"] = dict(self.meter.by_network)
        report["final"] = bool(final)
        report["done"] = done
        report["complete"] = done  # the budget is spent (Tune sets `done` on a trial a scheduler stops, too)
        return report

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, checkpoint_dir: str) -> None:
        state = {
            "format": _FORMAT,
            "trainable": type(self).__name__,
            "task": self.task.name or type(self.task).__name__,
            "task_state": self.task.state_dict(),
            "work_done": self.work_done,
            "cpu_s": self.cpu_s,
            "cost": self.meter.state_dict(),
            "trajectory": list(self.trajectory),
            "last_eval": dict(self._last_eval),
        }
        torch.save(state, os.path.join(checkpoint_dir, CHECKPOINT_FILE))
        self.task.export(checkpoint_dir)

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        path = os.path.join(str(checkpoint), CHECKPOINT_FILE)
        if not os.path.exists(path):
            raise ConfigError(f"{checkpoint!r} is not a ray_bilevel checkpoint (no {CHECKPOINT_FILE} inside).")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling error means a corrupt or foreign file
            first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
            reason = f"{type(exc).__name__}: {first[0] if first else ''}"
            if "weights only load failed" in str(exc).lower():
                reason = "refused by torch.load(weights_only=True): it holds objects that are not plain data"
            raise ConfigError(f"cannot read checkpoint {path} ({reason}); it is corrupt or not from "
                              "ray_bilevel.") from exc
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ConfigError(f"{path} is not a {_FORMAT} checkpoint; it was written by something else.")
        expected = self.task.name or type(self.task).__name__
        if state["task"] != expected:
            raise ConfigError(f"checkpoint {path} is for task {state['task']!r}, but this trial runs {expected!r}.")
        self.task.load_state_dict(state["task_state"])
        self.work_done = int(state["work_done"])
        self.cpu_s = float(state.get("cpu_s", 0.0))  # the counter continues; this actor's build stays unreported
        self.meter.load_state_dict(state.get("cost", {}))
        self.trajectory = list(state["trajectory"])
        self._last_eval = dict(state["last_eval"])

    # -- actor reuse and PBT ---------------------------------------------------------------
    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Reuse this actor for ``new_config``: always a fresh task.

        A reused actor starts a *new* trial, so nothing of the previous trial's lower-level state
        may leak into it. PBT restores the donor's checkpoint right after the reset, and
        :meth:`FixedHyperTrainable.load_checkpoint` then applies the config's hyperparameters.
        """
        self._build(new_config)
        return True


class BilevelTrainable(_TaskTrainable):
    """The first-order bilevel method (Algorithm 1) as a Tune trainable.

    Example::

        tune.run(BilevelTrainable, config={"task": "toy", "seed": 0}, stop={"training_iteration": 20})

    Each report carries the task's metrics, the current hyperparameters by name,
    ``outer_steps``, ``final`` (whether the expensive evaluation ran) and ``done`` (the outer
    budget is spent). The hyperparameter trajectory is kept in every checkpoint.

    **Learn, then retrain** (``config["retrain"] = True``): once the outer budget is spent, the trial builds the task
    afresh at the learned hyperparameters (a new lower-level solution from the same seed: e.g. a new network trained
    under the learned noise schedule, not the one trained while the schedule moved) and runs one complete lower-level
    run (``Task.lower_budget`` steps, ``lower_steps_per_iteration`` per Tune iteration), so its answer and its last
    checkpoint are those of the retrained lower level; both phases are the trial's cost. Reports then carry
    ``retrain_steps`` and ``phase`` (0 learning, 1 retraining); ``outer_steps`` counts the work of both phases.
    """

    _kind = "outer"

    def _build(self, config: Mapping[str, Any]) -> None:
        super()._build(config)
        self.retrain = bool(config.get("retrain", False))
        self.learned: dict[str, float] | None = None  # the hyperparameters the retrain phase trains at
        self._outer = self.task.outer_budget
        self._lower = self.task.lower_budget
        outer_iters = max(1, math.ceil(self._outer / self.iterations_per_step))
        self.lower_steps_per_iteration = _positive_int(config, "lower_steps_per_iteration",
                                                       max(1, math.ceil(self._lower / outer_iters)))

    def _budget(self) -> int:
        return self._outer + (self._lower if self.retrain else 0)

    def work_fraction(self) -> float:
        """With ``retrain``, each phase is half the run: the learning phase trains its own lower level for a
        complete run (and probes on top), the retraining phase one complete run, so an outer step weighs
        ``lower_budget / outer_budget`` retraining steps, not one (a progress estimate that counted them alike
        projected ~40× the trial's compute from its first outer steps)."""
        if not self.retrain:
            return super().work_fraction()
        learning = min(self.work_done, self._outer) / max(1, self._outer)
        retraining = max(0, self.work_done - self._outer) / max(1, self._lower)
        return 0.5 * learning + 0.5 * retraining

    def _start_retrain(self, learned: Mapping[str, float]) -> None:
        """The retrain phase's task: built afresh from the trial's config at the learned hyperparameters."""
        self.learned = {k: float(v) for k, v in learned.items()}
        self.task = get_task(self.task_config["task"])({**self.task_config, **self.learned})

    def _work(self) -> dict[str, float]:
        if self.work_done < self._outer:
            return self._run_units(self.task.hyper_step, self.iterations_per_step, limit=self._outer)
        if self.learned is None:
            self._start_retrain(self.task.hyperparameters())
        metrics = self._run_units(self.task.lower_step, self.lower_steps_per_iteration)
        return {**metrics, "retrain_steps": float(self.work_done - self._outer)}

    def step(self) -> dict[str, Any]:
        report = super().step()
        if self.retrain:
            report["phase"] = 0 if self.learned is None else 1
        return report

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        super().save_checkpoint(checkpoint_dir)
        if self.learned is not None:  # the retrain phase's task is rebuilt from these on restore
            with open(os.path.join(checkpoint_dir, _LEARNED_FILE), "w") as fh:
                json.dump(self.learned, fh)

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        path = os.path.join(str(checkpoint), _LEARNED_FILE)
        if os.path.exists(path):
            with open(path) as fh:
                learned = json.load(fh)
            with metering(None):  # the counter comes from the checkpoint
                self._start_retrain(learned)
        super().load_checkpoint(checkpoint)


class FixedHyperTrainable(_TaskTrainable):
    """The baselines' trial: train/sample the lower level at fixed hyperparameters from the config.

    A searcher (grid, random, Bayesian, TPE) or PBT sets the hyperparameters, e.g.
    ``{"task": "noise_schedule", "preset": "quick", "tau": 1.2}``. The trial spends exactly
    ``Task.lower_budget`` lower-level steps — the same lower-level work as one bilevel run — in
    as many Tune iterations as the bilevel run takes, then reports the final evaluation with
    ``done=True``.
    """

    _kind = "lower"

    def _build(self, config: Mapping[str, Any]) -> None:
        super()._build(config)
        outer_iters = max(1, math.ceil(self.task.outer_budget / self.iterations_per_step))
        default = max(1, math.ceil(self.task.lower_budget / outer_iters))
        self.lower_steps_per_iteration = _positive_int(config, "lower_steps_per_iteration", default)
        self.hyper_schedule = check_schedule(config.get("hyper_schedule", []))
        names = set(self.task.hyperparameters())
        for _, change in self.hyper_schedule:
            if set(change) - names:
                raise ConfigError(f"config['hyper_schedule'] changes {sorted(set(change) - names)}, which are not "
                                  f"hyperparameters of {type(self.task).__name__} ({sorted(names)}).")
        self._scheduled: dict[str, Any] = {}

    def _budget(self) -> int:
        return self.task.lower_budget

    def _work(self) -> dict[str, float]:
        if self.hyper_schedule:  # a replayed schedule: the values in force after the iterations done (restores too)
            values = scheduled_values(self.hyper_schedule, self.iteration)
            if values and values != self._scheduled:
                self.task.set_hyperparameters(values)
                self._scheduled = values
        return self._run_units(self.task.lower_step, self.lower_steps_per_iteration)

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        """Restore the lower-level state; the hyperparameters stay those of this trial's config.

        Under PBT the checkpoint comes from another (better) trial while the config carries the
        mutated hyperparameters, so the config wins.
        """
        super().load_checkpoint(checkpoint)
        names = set(self.task.hyperparameters())
        fixed = {k: v for k, v in self.task_config.items() if k in names}
        if fixed:
            self.task.set_hyperparameters(fixed)
        self._scheduled = {}  # a replayed schedule is re-applied at the next step (the restored iteration's values)
