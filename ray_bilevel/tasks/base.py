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
* ``evaluate(final)`` — upper-level metrics of the current lower-level solution. ``final=True``
  may run the expensive reporting protocol (Inception FID, more samples).
* ``hyperparameters()`` — the upper variable x by name, e.g. ``{"tau": 1.0, ...}`` or ``{"lam": 5.0}``.
* ``set_hyperparameters(values)`` — change x in place, keeping the lower-level state (PBT's
  exploit/explore goes through ``reset_config``).
* ``state_dict()`` / ``load_state_dict()`` — everything needed to continue *identically*
  (weights, optimizer states, RNG states, trajectories). Values must be tensors, numbers,
  strings, lists or dicts of those, so that ``torch.load(weights_only=True)`` reads them.
* ``export(directory)`` — optional human-facing artifacts next to a checkpoint (JSON, PNG).
"""
from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = ["Task"]


class Task(abc.ABC):
    """A bilevel problem ``min_x f(x, y*(x))``, ``y*(x) = argmin_y g(x, y)`` (paper eq. 1)."""

    #: Registered name (``config["task"]``).
    name: ClassVar[str] = ""
    #: Upper-level metric the bilevel method minimises and its Tune mode.
    metric: ClassVar[str] = "fid_domain"
    mode: ClassVar[str] = "min"

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
        """Upper-level metrics of the current lower-level solution (flat, finite floats)."""

    # -- state ----------------------------------------------------------------------------
    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically (weights_only-loadable values)."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def export(self, directory: str) -> None:  # noqa: B027 - optional hook
        """Write human-facing artifacts (schedule JSON, sample grids) into ``directory``."""
