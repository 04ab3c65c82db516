"""Settings of :class:`~ray_bilevel.schedule_learner.ScheduleLearner`: a dataclass, two presets, one check.

The defaults are the ``quick`` preset of the noise-schedule task (docs/algorithms.md §3.4): Adam on q with learning
rates (0.005, 0.005, 0.06, 0.002), the coordinate ZO estimator with μ = 0.01 (§3.3), 96 DDIM samples of 20 steps per
probe, γ = 1, and the upper-only variant (``penalty=False``: the penalty term of eq. (4) is ≈ 4e-5 of the upper term
at that scale, README "What the evidence says"). ``smoke`` shrinks the probes for tests.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ray_bilevel.config import ConfigError, resolve
from ray_bilevel.estimators.schedule_step import ESTIMATORS

__all__ = ["ScheduleLearnerConfig", "PRESETS", "learner_config", "check_learner_config"]


@dataclass
class ScheduleLearnerConfig:
    """What the learner does, and how often. Every field has the noise-schedule task's field of the same meaning."""

    #: k: one hypergradient step every k training steps (after ``warmup_steps``).
    every: int = 50
    #: training steps before the first hypergradient step (the paper's initial epochs E0).
    warmup_steps: int = 0
    #: seeds the learner's own random streams (draw, penalty, hyper, zo), separate from the user's.
    seed: int = 0
    # the schedule q (None: the family default, cosine (0, 1, 1, 0.008) = DDIM default), docs/algorithms.md §3.2
    family: str = "cosine"
    parameterisation: str = "chen2023"
    T: int = 1000
    start: float | None = None
    end: float | None = None
    tau: float | None = None
    eps: float | None = None
    bounds: dict[str, tuple[float, float]] | None = None
    # the schedule step (Adam without weight decay, eq. 4/15 divided by gamma)
    lr_start: float = 0.005
    lr_end: float = 0.005
    lr_tau: float = 0.06
    lr_eps: float = 0.002
    gamma: float = 1.0
    estimator: Literal["coordinate", "gaussian"] = "coordinate"
    zo_mu: float = 0.01
    zo_directions: int = 1
    # the upper metric's probes: DDIM samples from one x_T per step (common random numbers)
    zo_samples: int = 96
    zo_steps: int = 20
    sample_batch: int = 500
    #: the default metric's covariance shrinkage (docs/algorithms.md §4); 0 needs zo_samples >= 65.
    fid_shrinkage: float = 0.0
    #: the report's name of the upper metric (``<metric_name>_zo``).
    metric_name: str = "fid_domain"
    #: the penalty term h_z - h_y of eq. (4): z = the U-Net copied with the optimizer's moments, ``inner_z`` score-
    #: matching steps, the metric probed at z (the quick preset's variant); needs the user's Adam/AdamW.
    penalty: bool = False
    inner_z: int = 1
    #: the counted-compute name of the user's U-Net (ray_bilevel.cost).
    network_name: str = "unet"


PRESETS: dict[str, dict[str, Any]] = {
    "quick": {},
    # tests and examples: seconds
    "smoke": dict(zo_samples=12, zo_steps=3, fid_shrinkage=0.2, sample_batch=64),
}


def learner_config(preset: str = "quick", **overrides: Any) -> ScheduleLearnerConfig:
    """A checked :class:`ScheduleLearnerConfig` from a preset and overrides (typos are named, types checked)."""
    cfg = resolve(ScheduleLearnerConfig, PRESETS, {"preset": preset, **overrides})
    check_learner_config(cfg)
    return cfg


def check_learner_config(cfg: ScheduleLearnerConfig | Mapping[str, Any]) -> ScheduleLearnerConfig:
    """Raise a one-line ConfigError naming the value and the fix; returns the config (a mapping is resolved first)."""
    if isinstance(cfg, Mapping):
        cfg = resolve(ScheduleLearnerConfig, PRESETS, cfg)
    if not isinstance(cfg, ScheduleLearnerConfig):
        raise ConfigError(f"config must be a ScheduleLearnerConfig or a dict of its fields, got {type(cfg).__name__}.")
    if isinstance(cfg.every, bool) or not isinstance(cfg.every, int) or cfg.every < 1:
        raise ConfigError(f"ScheduleLearner every={cfg.every!r}: k (training steps per hypergradient step) must be an "
                          "integer >= 1; e.g. every=50.")
    for key in ("warmup_steps", "seed"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"ScheduleLearner {key}={getattr(cfg, key)!r} must be >= 0.")
    for key in ("zo_directions", "zo_samples", "zo_steps", "sample_batch", "inner_z"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"ScheduleLearner {key}={getattr(cfg, key)!r} must be >= 1.")
    for key in ("gamma", "zo_mu"):
        if not getattr(cfg, key) > 0:
            raise ConfigError(f"ScheduleLearner {key}={getattr(cfg, key)!r} must be > 0 (defaults: gamma=1, "
                              "zo_mu=0.01).")
    for key in ("lr_start", "lr_end", "lr_tau", "lr_eps"):
        if not getattr(cfg, key) >= 0:
            raise ConfigError(f"ScheduleLearner {key}={getattr(cfg, key)!r} must be >= 0 (0 freezes that parameter).")
    if cfg.estimator not in ESTIMATORS:
        raise ConfigError(f"ScheduleLearner estimator={cfg.estimator!r}; choose one of {list(ESTIMATORS)}.")
    if cfg.zo_steps > cfg.T:
        raise ConfigError(f"ScheduleLearner zo_steps={cfg.zo_steps} DDIM steps cannot exceed T={cfg.T}; lower "
                          "zo_steps.")
    if not 0.0 <= cfg.fid_shrinkage <= 1.0:
        raise ConfigError(f"ScheduleLearner fid_shrinkage={cfg.fid_shrinkage!r} must be in [0, 1].")
    return cfg
