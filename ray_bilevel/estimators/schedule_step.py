"""The schedule's hypergradient step of Algorithm 6, in one place (docs/algorithms.md §3.3-§3.4).

Used by :class:`~ray_bilevel.tasks.noise_schedule.task.NoiseScheduleTask` and by
:class:`~ray_bilevel.schedule_learner.ScheduleLearner` alike. One step of :class:`ScheduleStepper`:

1. ``ĝ_q`` = a two-point zeroth-order estimate of ∇_q f (eq. 14: Gaussian directions, or central differences along
   each coordinate kept inside the bounds, §3.3); ``f`` is the caller's closure over common random numbers (the same
   x_T, DDIM timesteps and feature network for every probe);
2. the direction ``ĝ_q/γ + (h_z − h_y)`` = ∇F_γ(q)/γ (eq. 4/15), h = ∇_q SM(·; q) of eq. (24) on the SAME
   (x0, t, ε) for both networks (:func:`schedule_sm_gradients`);
3. Adam on q (no weight decay, one learning rate per parameter), then the projection onto the schedule's bounds
   (§3.2), warning once per parameter.

The helpers around it are the pieces of the penalty problem both users share: :func:`draw_t_noise` (the (t, ε) draw
of eq. 24 from a seeded stream), :func:`sm_step` (one optimiser step of a network on eq. 24) and
:func:`copy_with_moments_` (z ← y with y's AdamW moments, §3.4).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ray_bilevel.config import ConfigError
from ray_bilevel.diffusion import score_matching_loss
from ray_bilevel.estimators.penalty import penalty_combine, penalty_signal
from ray_bilevel.estimators.zeroth_order import coordinate_zo, zo_gradient
from ray_bilevel.schedules import NAMES, NoiseSchedule

__all__ = ["ESTIMATORS", "ScheduleStepper", "draw_t_noise", "schedule_sm_gradients", "sm_step", "copy_with_moments_"]

#: The zeroth-order estimators of ∇_q f (docs/algorithms.md §3.3).
ESTIMATORS = ("coordinate", "gaussian")
Estimator = Literal["coordinate", "gaussian"]


def draw_t_noise(x0: Tensor, T: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``t ~ U{0..T-1}`` per sample and ``ε ~ N(0, I)`` of ``x0``'s shape (float32), drawn on the CPU from
    ``generator`` in this order and moved to ``x0``'s device (eq. 24; the same numbers on any device)."""
    t = torch.randint(0, T, (x0.shape[0],), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    return t, noise


def schedule_sm_gradients(schedule: NoiseSchedule, networks: Sequence[torch.nn.Module], x0: Tensor, t: Tensor,
                          noise: Tensor) -> list[Tensor]:
    """∇_q SM(net; q) of eq. (24) for each network on the SAME (x0, t, ε) (docs/algorithms.md §3.4), by autograd
    through ``alphas_cumprod(q)``; each a (4,) float64 CPU tensor in the order of :data:`~ray_bilevel.schedules.NAMES`.
    With two networks this gives (h_y, h_z) of eq. (15): ``h_z − h_y`` is exactly 0 when z = y."""
    params = [getattr(schedule, n) for n in NAMES]
    out = []
    for net in networks:
        loss = score_matching_loss(net, x0, schedule.alphas_cumprod().to(x0.device), t=t, noise=noise)
        out.append(torch.stack(torch.autograd.grad(loss, params)).detach().cpu())
    return out


def sm_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x0: Tensor,
    alphas: Tensor,
    generator: torch.Generator,
    before_step: Callable[[], None] | None = None,
) -> float:
    """One optimiser step of ``net`` on SM(net; q) (eq. 24) with (t, ε) from ``generator``; ``before_step`` runs after
    the backward pass (e.g. to add (1/γ) ĝ_z, §3.4). Returns the loss."""
    t, noise = draw_t_noise(x0, alphas.shape[0], generator)
    loss = score_matching_loss(net, x0, alphas, t=t, noise=noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if before_step is not None:
        before_step()
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def copy_with_moments_(dst: torch.nn.Module, opt_dst: torch.optim.Optimizer, src: torch.nn.Module,
                       opt_src: torch.optim.Optimizer) -> None:
    """Copy ``src``'s weights into ``dst`` in place (``opt_dst`` keeps pointing at ``dst``'s live tensors) together with
    ``opt_src``'s per-parameter state (AdamW moments and step): a fresh Adam's first step moves every weight by ~lr
    (docs/algorithms.md §3.4)."""
    for pd, ps in zip(dst.parameters(), src.parameters()):
        pd.copy_(ps)
        opt_dst.state[pd] = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt_src.state[ps].items()}


class ScheduleStepper:
    """Adam on the schedule q (no weight decay, one learning rate per parameter) driven by eq. (4)/(15) divided by γ,
    with a zeroth-order estimate (14) of the upper gradient, then the projection onto the bounds (§3.2, §3.4).

    Args:
        schedule: the learnable :class:`~ray_bilevel.schedules.NoiseSchedule` (stepped in place).
        lrs: the learning rate of each of start, end, tau, eps; a parameter with learning rate 0 is not probed.
        estimator: ``"coordinate"`` (central differences inside the bounds) or ``"gaussian"`` (eq. 14).
        mu: the ZO radius μ; directions: the number m of Gaussian directions (``"gaussian"`` only).
        label: the prefix of the projection warning (e.g. ``"noise_schedule"``).

    Attributes:
        opt: the Adam optimiser over the four parameters (its state is part of a checkpoint).
        projected: the parameters already warned about (one warning per parameter).
    """

    def __init__(self, schedule: NoiseSchedule, lrs: Mapping[str, float], estimator: Estimator = "coordinate",
                 mu: float = 0.01, directions: int = 1, label: str = "noise_schedule") -> None:
        missing = [n for n in NAMES if n not in lrs]
        if missing:
            raise ConfigError(f"schedule learning rates for {missing} are missing; give one per parameter of "
                              f"{list(NAMES)}.")
        if estimator not in ESTIMATORS:
            raise ConfigError(f"unknown schedule estimator {estimator!r}; choose one of {list(ESTIMATORS)}.")
        self.schedule, self.lrs = schedule, {n: float(lrs[n]) for n in NAMES}
        self.estimator, self.mu, self.directions, self.label = estimator, float(mu), int(directions), label
        self.opt = torch.optim.Adam(
            [{"params": [getattr(schedule, n)], "lr": self.lrs[n], "name": n} for n in NAMES], weight_decay=0.0)
        self.projected: list[str] = []

    def step(self, f: Callable[[Tensor], float], gamma: float, h_z: Tensor, h_y: Tensor, generator: torch.Generator,
             metric: str = "fid_domain") -> dict[str, float]:
        """One schedule step on ``ĝ_q/γ + (h_z − h_y)``; ``f(q)`` is the upper metric at a (perturbed) q with common
        random numbers, ``generator`` draws the Gaussian directions. Reports the unscaled estimate of ∇F_γ(q)
        (``hypergrad_<name>``, ``hypergrad_norm``), ``zo_grad_norm``, ``penalty_grad_norm`` = ‖h_z − h_y‖, the split
        of :func:`~ray_bilevel.estimators.penalty.penalty_signal` and ``<metric>_zo`` (the mean over the probes)."""
        s = self.schedule
        params = [getattr(s, n) for n in NAMES]
        q0 = s.q.detach()
        if self.estimator == "gaussian":
            res = zo_gradient(f, q0, self.mu, self.directions, generator)
        else:
            lower, upper = zip(*(s.bounds[n] for n in NAMES))
            frozen = [self.lrs[n] == 0 for n in NAMES]  # a zero hyper learning rate: not probed
            res = coordinate_zo(f, q0, self.mu, lower, upper, skip=frozen)
        direction = penalty_combine(res.grad, h_z, h_y, gamma) / gamma  # = g_q/gamma + (h_z - h_y)
        if not bool(torch.isfinite(direction).all()):
            raise FloatingPointError(f"non-finite schedule hypergradient {direction.tolist()} at q={q0.tolist()}; "
                                     "lower zo_mu or the hyper learning rates.")
        self.opt.zero_grad(set_to_none=True)
        for p, g in zip(params, direction):
            p.grad = g.clone().to(p.dtype)
        self.opt.step()
        self.project()
        values = res.f_plus + res.f_minus
        full = penalty_combine(res.grad, h_z, h_y, gamma)  # the estimate of grad F_gamma(q), eq. (4)/(15)
        return {
            **{f"hypergrad_{n}": float(g) for n, g in zip(NAMES, full)},
            "hypergrad_norm": float(full.norm()),
            "zo_grad_norm": float(res.grad.norm()),
            "penalty_grad_norm": float((h_z - h_y).norm()),
            **penalty_signal(res.grad, h_z, h_y, gamma),  # hypergrad_{upper,penalty}_norm, hypergrad_cosine
            f"{metric}_zo": sum(values) / len(values) if values else float("nan"),
        }

    def project(self) -> None:
        """Clamp q onto the bounds (§3.2); warn once per parameter; a q outside the feasible set is an error."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            before = self.schedule.hyperparameters()
            after = self.schedule.project_()
        moved = sorted(n for n in NAMES if before[n] != after[n] and n not in self.projected)
        if moved:  # warn once per parameter and trial; later clamps are silent but counted in the trajectory
            self.projected += moved
            warnings.warn(f"{self.label}: projected {moved} onto the bounds {[self.schedule.bounds[n] for n in moved]} "
                          f"(now {after}); widen `bounds` to let them move further.", stacklevel=4)
        try:
            self.schedule.check_feasible()
        except ConfigError as exc:
            raise FloatingPointError(f"the learned schedule left the feasible set: {exc}") from exc

    def state_dict(self) -> dict[str, Any]:
        """The optimiser's state and the warned parameters (the schedule's values are the caller's to save)."""
        return {"opt": self.opt.state_dict(), "projected": list(self.projected)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.opt.load_state_dict(state["opt"])
        self.projected = list(state["projected"])
