"""The forked-training hypergradient step as a Tune trainable (:class:`ForkStepTrainable`; docs/algorithms.md,
"Forked training").

A zeroth-order probe that only *evaluates* the lower-level solution at moved hyperparameters measures
∂f/∂x at fixed y, not the total derivative d f(x, y*(x))/dx that bilevel optimisation needs (paper eq. 2): for a
hyperparameter that shapes training (the noise schedule), the two point different ways
(docs/studies/noise_schedule_variants.md). Forked training lets y respond to x: train at x0 for a fraction ``fork``
of the lower-level budget N (the trunk), then one branch per coordinate at x0 + h_i e_i and one at x0, each trained
the remaining (1 − fork)·N steps from the trunk and evaluated on validation. Their differences are forward-difference
estimates of d f(x, y_N(x))/dx_i through the last (1 − fork)·N steps of the lower level's response (y_N: N steps of
the lower-level solver, warm-started at the trunk). One step then moves every improving coordinate by
``fork_scale`` × its probe move (a sign step, projected onto the search box), and the answer is a complete lower-level
run at the stepped x (``retrain``; or, cheaper, the trunk finished at it), kept if it beats the x0 branch on the
validation metric, which is itself a complete default run.

Counted compute: fork·N (trunk) + (1 + n)(1 − fork)·N (branches) + N (retrain) lower steps, plus one evaluation per
branch and answer: 2.75 trainings at fork = 0.75 with three coordinates.

Config keys read here (everything else goes to the task, whose config holds x0):

=================  ===========================================================================================
``fork``           fraction of the lower-level budget trained before the branches (0 < fork < 1; default 0.75)
``fork_moves``     ``{name: h}``: the coordinates probed and their moves (default: every parameter of the task's
                   ``search_space()``, h = 10 % of its range); a move goes up, or down where up leaves the box
``fork_scale``     step = scale × each improving branch's move (default 2.0)
``retrain``        the answer: a fresh complete run at the stepped x (True, default) or the trunk finished at it
=================  ===========================================================================================

One Tune iteration runs one segment of the plan (the trunk, each branch, the answer) and ends with its evaluation,
which the report carries (the trunk's on the partial run), so a checkpoint falls between segments.

Reports carry ``fork_phase`` (0 trunk, 1 branches, 2 answer), ``fork_base`` (the x0 branch's validation value)
and ``fork_<name>`` (each branch's), once known, and the stepped x as ``fork_step_<name>``.
"""
from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from typing import Any

import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.cost import metering
from ray_bilevel.tasks import get_task
from ray_bilevel.tune.trainable import _TaskTrainable

__all__ = ["ForkStepTrainable", "moved", "stepped"]

_FORK_FILE = "ray_bilevel_fork.pt"


def moved(x0: Mapping[str, float], bounds: Mapping[str, tuple[float, float]], name: str, h: float) -> dict[str, float]:
    """``x0`` with ``name`` moved by ``h`` into the box: up, unless that leaves it and down does not."""
    lo, hi = bounds[name]
    if x0[name] + h <= hi:
        return {**x0, name: x0[name] + h}
    if x0[name] - h >= lo:
        return {**x0, name: x0[name] - h}
    raise ConfigError(f"fork_moves[{name!r}] = {h} moves {name} = {x0[name]} out of its box [{lo}, {hi}] either way: "
                      "give a smaller move.")


def stepped(x0: Mapping[str, float], probes: Mapping[str, Mapping[str, float]], improved: Mapping[str, bool],
            scale: float, bounds: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """``x0`` moved ``scale`` × each improving probe's move, clipped to the box."""
    x = dict(x0)
    for name, probe in probes.items():
        if improved[name]:
            lo, hi = bounds[name]
            x[name] = min(hi, max(lo, x0[name] + scale * (probe[name] - x0[name])))
    return x


def _copy(state: dict[str, Any] | None) -> dict[str, Any]:
    """A deep copy of a snapshot (branches must share no tensors with it, nor with each other)."""
    if state is None:  # pragma: no cover - the plan takes snapshots before it reads them
        raise RuntimeError("the fork's plan read a snapshot before taking it.")
    return copy.deepcopy(state)


class ForkStepTrainable(_TaskTrainable):
    """One forked-training hypergradient step, then a complete run at the stepped hyperparameters (module docstring).

    Example::

        tune.run(ForkStepTrainable, config={"task": "noise_schedule", "preset": "quick", "seed": 100,
                                            "fork_moves": {"start": 0.1, "end": 0.1, "tau": 0.1}})

    Generic over :class:`~ray_bilevel.tasks.base.Task`: it needs ``lower_step``, ``lower_budget``, ``evaluate``,
    ``state_dict`` / ``load_state_dict`` (snapshots are deep copies) and ``set_hyperparameters``. Its last checkpoint
    holds the answer (the retrained lower level at the stepped x, or the x0 branch where that was better).
    """

    _kind = "lower"

    def _build(self, config: Mapping[str, Any]) -> None:
        super()._build(config)
        self.fork = float(config.get("fork", 0.75))
        self.scale = float(config.get("fork_scale", 2.0))
        self.retrain = bool(config.get("retrain", True))
        n = self.task.lower_budget
        if not 0 < self.fork < 1:
            raise ConfigError(f"config['fork'] = {config.get('fork')} leaves no trunk or no branch: pick 0 < fork < 1 "
                              "(e.g. 0.75).")
        if n < 2:
            raise ConfigError(f"{type(self.task).__name__}'s lower-level budget is {n} step(s): a fork needs at least "
                              "2 (a trunk and a branch).")
        self.split = min(n - 1, max(1, round(self.fork * n)))  # at least one step of trunk and of branch
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"config['fork_scale'] must be a positive number, got {config.get('fork_scale')!r}.")
        self.x0 = self.task.hyperparameters()
        space = type(self.task).search_space()
        self.bounds = {p.name: (p.low, p.high) for p in space.params} if space is not None else {}
        moves = config.get("fork_moves")
        if moves is None:
            if space is None:
                raise ConfigError(f"{type(self.task).__name__} declares no search space: give config['fork_moves'] "
                                  "as {name: move}.")
            moves = {p.name: 0.1 * (p.high - p.low) for p in space.params}
        if not isinstance(moves, Mapping) or not moves:
            raise ConfigError(f"config['fork_moves'] must be a non-empty {{name: move}} dict, got {moves!r}.")
        unknown = [k for k in moves if k not in self.x0 or k not in self.bounds]
        if unknown:
            raise ConfigError(f"config['fork_moves'] names {unknown}, which are not searchable hyperparameters of "
                              f"{type(self.task).__name__} ({sorted(set(self.x0) & set(self.bounds))}).")
        self.probes = {k: moved(self.x0, self.bounds, k, float(h)) for k, h in moves.items()}
        self.branches = [None, *self.probes]  # None: the x0 branch
        self.answer_steps = n if self.retrain else n - self.split
        self.eval_every = 1  # every report carries the evaluation its segment ended with (``_evaluation``)
        # the plan's progress: the segment (0 trunk, 1..len(branches) branches, then the answer) done next
        self.segment = 0
        self.trunk_state: dict[str, Any] | None = None
        self.base_state: dict[str, Any] | None = None  # the x0 branch's finished lower level (a complete default run)
        self.values: dict[str, float] = {}  # validation value per branch ("" for the x0 branch) and "answer"
        self.base_eval: dict[str, float] = {}  # the x0 branch's evaluation (reported if it is the answer)
        self.current_eval: dict[str, float] = {}  # the evaluation the last segment ended with
        self.x_step: dict[str, float] | None = None
        self.built_at = dict(self.x0)  # the hyperparameters the current task was built with

    # -- the plan: one segment per Tune iteration -------------------------------------------
    def _budget(self) -> int:
        n = self.task.lower_budget
        answer = 0 if self.x_step == self.x0 else self.answer_steps  # no improving branch: the x0 branch answers
        return self.split + len(self.branches) * (n - self.split) + answer

    def _segment_length(self) -> int:
        n = self.task.lower_budget
        if self.segment == 0:
            return self.split
        return n - self.split if self.segment <= len(self.branches) else self.answer_steps

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.task.mode == "min" else a > b

    def _enter(self) -> None:
        """Set up the lower level of the segment about to start."""
        if 1 <= self.segment <= len(self.branches):
            name = self.branches[self.segment - 1]
            self.task.load_state_dict(_copy(self.trunk_state))  # branches share no tensors
            self.task.set_hyperparameters(self.x0 if name is None else self.probes[name])
            return
        x_step = dict(self.x_step or {})  # set where the last branch ended
        if self.retrain:
            self._rebuild(x_step)
        else:
            self.task.load_state_dict(_copy(self.trunk_state))
            self.task.set_hyperparameters(x_step)

    def _rebuild(self, x: Mapping[str, float]) -> None:
        """A fresh task at ``x``, built from the trial's config (a new lower-level run from the same seed)."""
        self.built_at = {k: float(v) for k, v in x.items()}
        self.task = get_task(self.task_config["task"])({**self.task_config, **self.built_at})

    def _evaluate(self, complete: bool) -> float:
        """Evaluate the segment's lower level on validation (``complete``: a whole lower-level run, so
        ``evaluate(final=True)``, which completes a task's answer); keep the metrics, return the tuning metric."""
        metric = self.task.tuning_metric()
        self.current_eval = dict(self.task.evaluate(final=complete))
        value = self.current_eval.get(metric)
        if value is None or not math.isfinite(float(value)):
            raise FloatingPointError(f"the fork's evaluation gave {metric} = {value}; the task must report a finite "
                                     "validation metric.")
        return float(value)

    def _leave(self) -> None:
        """Evaluate what the segment just finished produced and act on it."""
        if self.segment == 0:
            self._evaluate(complete=False)  # the trunk's value: this report's metric
            self.trunk_state = copy.deepcopy(self.task.state_dict())
            return
        value = self._evaluate(complete=True)
        if self.segment <= len(self.branches):
            name = self.branches[self.segment - 1]
            self.values["" if name is None else name] = value
            if name is None:
                self.base_state, self.base_eval = copy.deepcopy(self.task.state_dict()), dict(self.current_eval)
            if self.segment == len(self.branches):  # the last branch: the step
                improved = {k: self._better(self.values[k], self.values[""]) for k in self.probes}
                self.x_step = stepped(self.x0, self.probes, improved, self.scale, self.bounds)
                if self.x_step == self.x0:
                    self._answer_base()
            return
        self.values["answer"] = value
        if not self._better(value, self.values[""]):
            self._answer_base()

    def _answer_base(self) -> None:
        """Make the x0 branch (a complete default run, evaluated) the trial's lower level: the answer."""
        if self.built_at != self.x0:
            with metering(None):  # a container for work already done and booked, not new work
                self._rebuild(self.x0)
        self.task.load_state_dict(_copy(self.base_state))
        self.task.set_hyperparameters(self.x0)
        self.current_eval = dict(self.base_eval)

    def _work(self) -> dict[str, float]:
        if self.segment > 0:
            self._enter()
        metrics = self._run_units(self.task.lower_step, self._segment_length())
        self._leave()
        phase = 0 if self.segment == 0 else (1 if self.segment <= len(self.branches) else 2)
        self.segment += 1
        out = {**metrics, "fork_phase": float(phase)}
        out.update({("fork_base" if k == "" else f"fork_{k}"): v for k, v in self.values.items()})
        if self.x_step is not None:
            out.update({f"fork_step_{k}": v for k, v in self.x_step.items()})
        return out

    def _evaluation(self, final: bool) -> dict[str, float]:
        return dict(self.current_eval)

    # -- checkpoints: the plan's state beside the task's ------------------------------------
    def save_checkpoint(self, checkpoint_dir: str) -> None:
        super().save_checkpoint(checkpoint_dir)
        torch.save({"segment": self.segment, "trunk": self.trunk_state, "base": self.base_state,
                    "values": dict(self.values), "base_eval": self.base_eval, "current_eval": self.current_eval,
                    "x_step": self.x_step, "built_at": dict(self.built_at), "x": self.task.hyperparameters()},
                   os.path.join(checkpoint_dir, _FORK_FILE))

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        path = os.path.join(str(checkpoint), _FORK_FILE)
        if not os.path.exists(path):
            raise ConfigError(f"{checkpoint!r} is not a ForkStepTrainable checkpoint (no {_FORK_FILE} inside).")
        plan = torch.load(path, map_location="cpu", weights_only=True)
        if plan["built_at"] != self.built_at:
            with metering(None):  # the counter comes from the checkpoint
                self._rebuild(plan["built_at"])
        super().load_checkpoint(checkpoint)
        self.task.set_hyperparameters(plan["x"])
        self.segment = int(plan["segment"])
        self.trunk_state, self.base_state = plan["trunk"], plan["base"]
        self.values, self.x_step = dict(plan["values"]), plan["x_step"]
        self.base_eval, self.current_eval = dict(plan["base_eval"]), dict(plan["current_eval"])
