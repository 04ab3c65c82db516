"""Settings, presets, checks and search space of the noise-schedule task (its benchmark plan: benchmark.py).

Every field of :class:`NoiseScheduleSettings` can be overridden from the Tune config
(``{"tau": 1.2}`` fixes a baseline's schedule); presets are data (docs/algorithms.md §3.4).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ray_bilevel.config import ConfigError
from ray_bilevel.space import Param, SearchSpace

__all__ = [
    "NoiseScheduleSettings",
    "PRESETS",
    "check_settings",
    "search_space",
]


@dataclass
class NoiseScheduleSettings:
    """Every field can be overridden from the Tune config (``{"tau": 1.2}`` fixes a baseline's schedule)."""

    seed: int = 0
    # data (ray_bilevel.data.load_images); the held-out split gives the real FID statistics
    dataset: str = "mnist5k"
    image_size: int = 16
    heldout_fraction: float = 0.2
    split_seed: int = 0
    data_root: str | None = None
    download: bool = False
    # lower-level network y (and the penalty network z)
    block_out_channels: tuple[int, ...] = (16, 32)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    lr_z: float = 2e-3
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine"] = "constant"  # or "cosine" (decay to 0 over lower_budget y steps)
    ema_decay: float = 0.995  # per y step; 0 disables the EMA (reports use y)
    # schedule q (None: the family default, cosine (0, 1, 1, 0.008) = DDIM default)
    family: str = "cosine"
    parameterisation: str = "chen2023"
    T: int = 1000
    start: float | None = None
    end: float | None = None
    tau: float | None = None
    eps: float | None = None
    bounds: dict[str, tuple[float, float]] | None = None
    # Algorithm 6 loop. quick: 5 warm-up outer steps of 40 y steps, 10 bilevel, 8 cool-down and 2 polishing outer
    # steps of 50 y steps (1,200 y steps in all, as the fixed-schedule baseline); see docs/noise_schedule.md
    outer_steps: int = 25
    warmup_outer: int = 5
    cooldown_outer: int = 8
    polish_outer: int = 2  # bilevel outer steps after the cool-down: q adapts to the trained y
    inner_y_warmup: int = 40
    inner_y: int = 50
    inner_z: int = 1
    z_init: Literal["previous", "copy_y"] = "previous"  # or "copy_y"
    # "none": z steps on SM only; "surrogate": + autograd of f~/gamma
    z_fid_grad: Literal["zo", "none", "surrogate"] = "zo"
    # z_fid_grad="surrogate" (surrogate.py): f~ = Fréchet distance of the digit features of surrogate_samples DDIM
    # samples
    # (surrogate_steps steps, a fresh x_T per z step) to the validation real statistics; the fake covariance is shrunk
    surrogate_samples: int = 32
    surrogate_steps: int = 10
    surrogate_shrinkage: float = 0.2
    surrogate_covariance: Literal["full", "diagonal"] = "full"
    surrogate_reference: bool = True  # h_y at y' = y + z's SM steps (same draws), not at y: z - y' is f~'s effect alone
    # the penalty problem: "steps" (inner_z optimiser steps of z, eq. 4 at gamma) or "cg": its gamma -> inf limit
    # -d2_qz SM(y) H^-1 grad f~(y) by truncated conjugate gradients on Hessian-vector products (estimators/implicit.py;
    # needs z_fid_grad="surrogate"; docs/algorithms.md §3.4)
    # cg_damping: the smallest decade at which the solve reaches cg_tol on development seed 100's half-trained quick
    # network (studies/cg_probe.py); undamped, its indefinite Hessian stops CG at negative curvature
    z_solve: Literal["steps", "cg"] = "steps"
    cg_iters: int = 30
    cg_tol: float = 1e-2
    cg_damping: float = 1.0
    gamma: float = 1.0
    gamma_end: float = 1.0
    lr_start: float = 0.005
    lr_end: float = 0.005
    lr_tau: float = 0.06
    lr_eps: float = 0.002
    # or "gaussian": eq. (14) with zo_directions Gaussian directions (paper)
    zo_q_estimator: Literal["coordinate", "gaussian"] = "coordinate"
    zo_mu: float = 0.01
    zo_mu_z: float = 1e-3
    zo_directions: int = 1
    zo_samples: int = 96
    zo_steps: int = 20
    # evaluation
    eval_steps: int | None = None  # None: = zo_steps (docs/algorithms.md §6)
    eval_samples: int = 1000
    eval_seed: int = 12345  # the same x_T for every trial: evaluations share their noise
    # rho in [0, 1] or "ledoit_wolf" (docs/algorithms.md §4); 0 needs >= 65 samples
    fid_shrinkage: float | Literal["ledoit_wolf"] = 0.0
    final_samples: int = 500  # Inception FID / classifier IS samples at final evaluation
    final_real: int = 1000  # held-out real images for the Inception statistics
    sample_batch: int = 500
    device: Literal["cpu", "cuda", "auto"] = "cpu"  # "cpu", "cuda" or "auto"
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes recorded with the results


PRESETS: dict[str, dict[str, Any]] = {
    # tests: seconds
    "smoke": dict(
        dataset="mnist5k",
        image_size=8,
        block_out_channels=(8, 16),
        batch_size=16,
        T=100,
        outer_steps=3,
        warmup_outer=1,
        cooldown_outer=0,
        polish_outer=0,
        inner_y_warmup=2,
        inner_y=2,
        inner_z=1,
        zo_samples=12,
        zo_steps=3,
        surrogate_samples=8,
        surrogate_steps=3,
        eval_samples=16,
        fid_shrinkage=0.2,
        final_samples=6,
        final_real=6,
        sample_batch=64,
    ),
    # the default main job on a 2-core CPU: mnist5k at 16 px, a 160 k-parameter U-Net (about 76 ms per training step at
    # batch 64 on a 2-core CPU).
    # z = y copied (with its AdamW state) before each penalty step, z steps on SM only: measured, a 1-direction ZO
    # step on z's 1.6e5 weights (Adam-normalised) or a z that lags y ("previous") wrecks z, and the schedule's
    # ZO gradient is taken at z (docs/noise_schedule.md)
    "quick": dict(z_init="copy_y", z_fid_grad="none"),
    # the paper's settings (docs/algorithms.md §3.4): full MNIST, 28 px, ~1.06 M-parameter U-Net, batch 128, 3 epochs (2
    # warm-up), GPU
    "paper": dict(
        dataset="mnist",
        image_size=28,
        block_out_channels=(32, 64, 64),
        batch_size=128,
        lr=1e-3,
        lr_z=1e-3,
        weight_decay=0.01,
        lr_schedule="cosine",
        ema_decay=0.999,
        outer_steps=1407,
        warmup_outer=938,
        cooldown_outer=0,
        polish_outer=0,
        inner_y_warmup=10,
        inner_y=10,
        inner_z=1,
        lr_start=0.01,
        lr_end=0.01,
        lr_tau=0.1,
        lr_eps=0.001,
        zo_q_estimator="gaussian",
        zo_samples=256,
        zo_steps=50,
        eval_samples=2000,
        final_samples=10000,
        final_real=10000,
        sample_batch=1000,
        device="auto",
    ),
}


def check_settings(cfg: NoiseScheduleSettings) -> None:
    """Raise a one-line ConfigError for an invalid noise_schedule setting."""
    positive = (
        "image_size",
        "batch_size",
        "T",
        "outer_steps",
        "inner_y_warmup",
        "inner_y",
        "inner_z",
        "zo_directions",
        "zo_samples",
        "zo_steps",
        "surrogate_steps",
        "eval_samples",
        "final_samples",
        "final_real",
        "sample_batch",
    )
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"noise_schedule setting {key!r} must be >= 1, got {getattr(cfg, key)}.")
    phases = (cfg.warmup_outer, cfg.cooldown_outer, cfg.polish_outer)
    if min(phases) < 0 or sum(phases) > cfg.outer_steps:
        raise ConfigError("warmup_outer + cooldown_outer + polish_outer must be in [0, "
                          f"outer_steps={cfg.outer_steps}], "
                          f"got {' + '.join(map(str, phases))}.")
    for key in ("lr", "lr_z", "gamma", "gamma_end", "zo_mu", "zo_mu_z"):
        if not getattr(cfg, key) > 0:
            raise ConfigError(f"noise_schedule setting {key!r} must be > 0, got {getattr(cfg, key)}.")
    for key in ("lr_start", "lr_end", "lr_tau", "lr_eps", "weight_decay"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"noise_schedule setting {key!r} must be >= 0, got {getattr(cfg, key)}.")
    if not 0 <= cfg.ema_decay < 1:
        raise ConfigError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}.")
    choices = {
        "z_init": ("previous", "copy_y"),
        "z_fid_grad": ("zo", "none", "surrogate"),
        "lr_schedule": ("constant", "cosine"),
        "zo_q_estimator": ("coordinate", "gaussian"),
        "surrogate_covariance": ("full", "diagonal"),
        "z_solve": ("steps", "cg"),
        "device": ("cpu", "cuda", "auto"),
    }
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"noise_schedule setting {key!r} must be one of {list(allowed)}, got "
                              f"{getattr(cfg, key)!r}.")
    if cfg.z_solve == "cg" and cfg.z_fid_grad != "surrogate":
        raise ConfigError(f"z_solve='cg' solves the penalty problem for the surrogate's gradient; it needs "
                          f"z_fid_grad='surrogate', got z_fid_grad={cfg.z_fid_grad!r}.")
    if cfg.cg_iters < 1 or cfg.cg_tol < 0 or cfg.cg_damping < 0:
        raise ConfigError(f"cg_iters must be >= 1 and cg_tol, cg_damping >= 0; got {cfg.cg_iters}, {cfg.cg_tol}, "
                          f"{cfg.cg_damping}.")
    steps = cfg.zo_steps if cfg.eval_steps is None else cfg.eval_steps
    if max(steps, cfg.zo_steps, cfg.surrogate_steps) > cfg.T:
        raise ConfigError(f"DDIM steps ({cfg.zo_steps}/{steps}/{cfg.surrogate_steps}) cannot exceed T={cfg.T}; "
                          "lower zo_steps/eval_steps/surrogate_steps.")
    if cfg.surrogate_samples < 2 or not 0 <= cfg.surrogate_shrinkage <= 1:
        raise ConfigError(f"surrogate_samples must be >= 2 and surrogate_shrinkage in [0, 1], got "
                          f"{cfg.surrogate_samples} and {cfg.surrogate_shrinkage}.")
    if cfg.surrogate_covariance == "full" and cfg.surrogate_shrinkage == 0 and cfg.surrogate_samples <= 64:
        raise ConfigError(f"surrogate_samples={cfg.surrogate_samples} <= 64 feature dimensions: the fake covariance is "
                          "singular "
                          "and the surrogate's gradient infinite; set surrogate_shrinkage > 0 or "
                          "surrogate_covariance='diagonal'.")



# -- the baselines' search space (docs/algorithms.md §5) ------------------------------------------------


def search_space(family: str = "cosine", tau_range: str = "released") -> SearchSpace:
    """Search space of the schedule baselines.

    Ranges [released, the authors' Bayesian-search script]: start ~ U[0, 0.4], end ~ U[0.8, 1],
    tau ~ U[1, 4], eps ~ U[0.005, 0.04]; n_calls = 15, random_state = 42, acquisition
    ``gp_hedge`` (gp_minimize's default, which the released code leaves unset). The random
    search uses "the same range" [paper]; its number of draws is lost.

    ``tau_range="wide"`` replaces tau's range by log-uniform [0.5, 4] [derived]: at the CPU scale
    of this project the FID valley lies just above tau = 1 and falls steeply on both sides
    (measured on a 2-core CPU, 16 px mnist5k: tau 0.8 -> 71, 1.0 -> 32, 1.2 -> 20, 2 -> 277), so the
    released U[1, 4] puts the default on its edge and only ~7 % of its mass within [1, 1.2]; the log
    prior centred near 1.4 spends half its mass below 1.41 and also covers tau < 1.

    The greedy grids are lost (no grid script is released); ours are [derived], listed in
    priority order (the default first, then its neighbours, then outward): tau {1, 1.2, 0.8, 1.5,
    2, 3, 4}, start {0, 0.1, 0.2, 0.3}, end {1, 0.9, 0.8}, eps {0.008, 0.005, 0.02, 0.04}. Because
    each grid holds the default, whose result the greedy search reuses, a full greedy pass costs
    7 + 3 + 2 + 3 = 15 trials, the same as the Bayesian n_calls.
    """
    if family != "cosine":
        raise ConfigError(
            f"no released search ranges for family={family!r} (the sigmoid ranges are lost, "
            "docs/algorithms.md §5); use family='cosine' or build your own SearchSpace."
        )
    if tau_range == "released":
        tau = Param("tau", 1.0, 4.0, default=1.0, grid=(1.0, 1.2, 0.8, 1.5, 2.0, 3.0, 4.0))
    elif tau_range == "wide":
        tau = Param("tau", 0.5, 4.0, log=True, default=1.0, grid=(1.0, 1.2, 0.8, 1.5, 2.0, 3.0, 4.0))
    else:
        raise ConfigError(f"tau_range must be 'released' or 'wide', got {tau_range!r}.")
    return SearchSpace(
        params=(
            tau,
            Param("start", 0.0, 0.4, default=0.0, grid=(0.0, 0.1, 0.2, 0.3)),
            Param("end", 0.8, 1.0, default=1.0, grid=(1.0, 0.9, 0.8)),
            Param("eps", 0.005, 0.04, default=0.008, grid=(0.008, 0.005, 0.02, 0.04)),
        ),
        n_calls=15,
        acq_func="gp_hedge",
        random_state=42,
        note=f"cosine schedule, tau_range={tau_range}",
    )
