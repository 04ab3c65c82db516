"""The seam between the bilevel mathematics and Ray Tune: the ``Task`` protocol.

A Task owns everything about one bilevel problem (data, models, seeds, evaluator) and nothing
about Ray. ``ray_bilevel.tune`` drives any Task through the methods below, so every method of
the benchmark (bilevel, grid, random, Bayesian, TPE, PBT) sees the same data, model and
evaluator, and a user's own bilevel problem plugs in by subclassing :class:`Task`.

Life cycle (who calls what, and when):

* ``Task(config)`` — built once per trial from a flat config dict (preset name, seed,
  overrides; see :func:`ray_bilevel.config.resolve`). Raise early on bad input.
* ``hyper_step()`` — called by :class:`~ray_bilevel.tune.BilevelTrainable` once per outer
  iteration of Algorithm 1: lower-level work, penalty work, hypergradient, projected step on x.
* ``lower_step()`` — called by :class:`~ray_bilevel.tune.FixedHyperTrainable` (the baselines'
  trial): one unit of lower-level work at the *fixed* hyperparameters. ``lower_budget`` units
  make one complete lower-level run; the bilevel run spends the same amount of lower-level work.
* ``evaluate(final)`` — upper-level metrics of the current lower-level solution on the *validation* split
  (what tuning may read). ``final=True`` first completes the lower-level answer (e.g. the λ task's guided
  generation), which is part of a method's cost.
* ``evaluate_test()`` — the reporting protocol on the *test* split (un-suffixed keys) and the validation
  split (``_val`` twins). Only reporting code calls it (the benchmark's final evaluation, excluded from cost
  for every method alike); nothing that tunes may.
* ``hyperparameters()`` — the upper variable x by name, e.g. ``{"tau": 1.0, ...}`` or ``{"lam": 5.0}``.
* ``set_hyperparameters(values)`` — change x in place, keeping the lower-level state (PBT's
  exploit/explore goes through ``reset_config``).
* ``state_dict()`` / ``load_state_dict()`` — everything needed to continue *identically*
  (weights, optimizer states, RNG states, trajectories). Values must be tensors, numbers,
  strings, lists or dicts of those, so that ``torch.load(weights_only=True)`` reads them.
* ``export(directory)`` — optional human-facing artifacts next to a checkpoint (JSON, PNG).

What a task declares about its own search, read by ``ray_bilevel.tune`` and ``ray_bilevel.benchmark``:

* ``metric`` / ``mode`` — the upper-level objective and its Tune direction; ``metric_modes`` the direction
  of every other report key a user may select on.
* ``search_space()`` — the baselines' :class:`~ray_bilevel.space.SearchSpace` (``None``: no searcher runs).

What the benchmark runs on it (default methods, budgets, oracle design, task-specific baselines) is the task's
``benchmark`` (:class:`~ray_bilevel.benchspec.BenchmarkSpec`, kept in the task's folder), read only by
``ray_bilevel.benchmark``.
"""
from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

from ray_bilevel.benchspec import BenchmarkSpec
from ray_bilevel.space import SearchSpace

__all__ = ["Task"]


class Task(abc.ABC):
    """A bilevel problem ``min_x f(x, y*(x))``, ``y*(x) = argmin_y g(x, y)`` (paper eq. 1)."""

    #: Registered name (``config["task"]``).
    name: ClassVar[str] = ""
    #: Upper-level metric the bilevel method minimises and its Tune mode.
    metric: ClassVar[str] = "fid_domain"
    mode: ClassVar[str] = "min"
    #: The report key tuning selects on: the validation twin of ``metric`` (``""``: ``metric`` itself, for a task
    #: whose evaluation has no held-out data to split, like the analytic toy).
    selection_metric: ClassVar[str] = ""
    #: Direction of the other report keys (``check_objective`` refuses e.g. ``fid`` with ``mode="max"``).
    metric_modes: ClassVar[Mapping[str, str]] = {}
    #: What the benchmark runs on this task (default methods, budgets, oracle design); only ``benchmark/`` reads it.
    benchmark: ClassVar[BenchmarkSpec] = BenchmarkSpec()

    # -- what the task declares about its search (docs/algorithms.md §5) -------------------
    @classmethod
    def search_space(cls) -> SearchSpace | None:
        """The baselines' search space over :meth:`hyperparameters` (``None``: only default and bilevel run)."""
        return None

    @classmethod
    def tuning_metric(cls) -> str:
        """The key searchers, schedulers and early stopping select on (never a test-split value)."""
        return cls.selection_metric or cls.metric

    @classmethod
    def metric_mode(cls, metric: str) -> str | None:
        """The direction of ``metric`` (or of its ``_val`` twin) as this task reports it (``None``: unknown)."""
        base = metric[: -len("_val")] if metric.endswith("_val") else metric
        if metric in (cls.metric, cls.tuning_metric()) or base == cls.metric:
            return cls.mode
        return cls.metric_modes.get(metric, cls.metric_modes.get(base))

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    # -- the upper variable ---------------------------------------------------------------
    @abc.abstractmethod
    def hyperparameters(self) -> dict[str, float]:
        """The current upper-level variable x, by name."""

    def set_hyperparameters(self, values: Mapping[str, float]) -> None:
        """Set x in place without rebuilding models (Tune's PBT ``reset_config`` path)."""
        raise NotImplementedError(f"{type(self).__name__} cannot change its hyperparameters in place.")

    # -- work -----------------------------------------------------------------------------
    @abc.abstractmethod
    def hyper_step(self) -> dict[str, float]:
        """One outer iteration of Algorithm 1; returns at least ``hypergrad_norm``."""

    @abc.abstractmethod
    def lower_step(self) -> dict[str, float]:
        """One unit of lower-level work at fixed x; returns at least ``lower_loss`` if defined."""

    @property
    @abc.abstractmethod
    def lower_budget(self) -> int:
        """Number of ``lower_step`` calls that make one complete lower-level run."""

    @property
    @abc.abstractmethod
    def outer_budget(self) -> int:
        """Number of ``hyper_step`` calls that make one complete bilevel run."""

    @abc.abstractmethod
    def evaluate(self, final: bool = False) -> dict[str, float]:
        """Validation metrics of the current lower-level solution (flat, finite floats)."""

    def evaluate_test(self, full: bool = True) -> dict[str, float]:
        """Reporting metrics: test values un-suffixed, validation twins ``_val``; ``full=False`` may restrict them
        to ``metric`` (cheaper; the benchmark's anytime curves). Default: a task without a held-out split reports
        its final evaluation."""
        return self.evaluate(final=True)

    # -- state ----------------------------------------------------------------------------
    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically (weights_only-loadable values). Like torch's ``state_dict``,
        the values may be the task's live tensors (weights, optimiser state), which later steps change in place: save
        it at once, or ``copy.deepcopy`` it to keep a snapshot in memory."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def export(self, directory: str) -> None:  # noqa: B027 - optional hook
        """Write human-facing artifacts (schedule JSON, sample grids) into ``directory``."""
