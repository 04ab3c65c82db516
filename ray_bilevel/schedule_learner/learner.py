"""A learnable noise schedule for your own diffusers training loop (Algorithm 6 of the paper, docs/algorithms.md §3).

:class:`ScheduleLearner` holds the schedule q = (start, end, tau, eps) (eq. 16/34, §3.2) and replaces
``DDPMScheduler.add_noise`` in the user's loop; every k training steps it takes the same hypergradient step of q as
the ``noise_schedule`` task (:class:`~ray_bilevel.estimators.schedule_step.ScheduleStepper`: the two-point ZO estimate
(14) of ∇_q f with common random numbers, eq. (4)/(15) divided by γ, Adam without weight decay, projection). The
user's network is the lower-level solution y of eq. (10): their optimizer on their data is the lower-level oracle.

No Ray here: reporting goes through an optional ``callback`` (``ray_bilevel.tune.report.tune_reporter`` sends it to
``ray.tune.report`` inside a Tune function trainable).
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ray_bilevel.config import ConfigError
from ray_bilevel.cost import FlopMeter, metering, watch
from ray_bilevel.estimators.schedule_step import (
    ScheduleStepper,
    copy_with_moments_,
    draw_t_noise,
    schedule_sm_gradients,
    sm_step,
)
from ray_bilevel.schedule_learner.config import ScheduleLearnerConfig, check_learner_config
from ray_bilevel.schedule_learner.upper import (
    DDIMSampler,
    DomainFID,
    Metric,
    Sampler,
    check_batch,
    checked_value,
    image_shape_of,
)
from ray_bilevel.schedules import NAMES, NoiseSchedule, alphas_cumprod_from

__all__ = ["ScheduleLearner", "NoisyBatch"]

_FORMAT = "ray_bilevel.schedule_learner/1"
_STREAMS = ("draw", "penalty", "hyper", "zo")


class NoisyBatch(NamedTuple):
    """What :meth:`ScheduleLearner.draw` returns: ``t, noise, noisy = learner.draw(x0)``."""

    timesteps: Tensor
    noise: Tensor
    noisy: Tensor


class ScheduleLearner:
    """Learn the noise schedule inside your own diffusers training loop.

    In the loop, ``t, noise, noisy = learner.draw(x0)`` replaces drawing t and ε and calling
    ``DDPMScheduler.add_noise`` (the forward process u_t = sqrt(ᾱ_t) u_0 + sqrt(1 − ᾱ_t) ε of the current schedule,
    docs/algorithms.md §1), and ``learner.step()`` after ``optimizer.step()`` counts the step; every ``config.every``
    steps (after ``warmup_steps``) it takes one hypergradient step of q (docs/algorithms.md §3.4):

    1. (``penalty=True`` only) z ← the U-Net with the optimizer's moments, ``inner_z`` score-matching steps (24) on the
       last batch; h_y, h_z = ∇_q SM(y; q), ∇_q SM(z; q) on the same (x0, t, ε);
    2. ĝ_q = ZO estimate (14) of ∇_q metric(sampler(net, ᾱ(q), x_T)) with one fresh x_T shared by every probe
       (common random numbers, §3.3), net = z with the penalty, else the user's U-Net;
    3. Adam on ĝ_q/γ + (h_z − h_y) (eq. 4/15 divided by γ; h_z − h_y = 0 without the penalty), projection to bounds.

    Args:
        unet: the user's ε-network (e.g. ``diffusers.UNet2DModel``), called as ``unet(x, t)``. It is watched by
            :func:`ray_bilevel.cost.watch` under ``config.network_name``: every call of it while a meter is active
            books its FLOPs (``cost_flops``); the learner's own work is booked to :attr:`meter`, and
            ``with learner.counting():`` books the user's training forward passes there too.
        heldout_images: (N, C, H, W) real images in [-1, 1] that are not trained on: the default metric's reference
            (domain FID). Not needed with your own ``metric``.
        config: a :class:`ScheduleLearnerConfig`, or a dict of its fields (``{"preset": "smoke", "every": 10}``).
        optimizer: the user's Adam/AdamW over ``unet``'s parameters; needed only for ``penalty=True`` (z starts from
            the U-Net with these moments).
        sampler: ``(model, alphas_cumprod, x_T) -> images``; default: the package's DDIM with ``zo_steps`` steps.
        metric: ``images -> float`` (lower is better); default: domain FID against ``heldout_images``.
        callback: called with each hypergradient step's report (a flat ``dict[str, float]``), e.g.
            ``ray_bilevel.tune.report.tune_reporter(...)``.
        meter: the :class:`~ray_bilevel.cost.FlopMeter` to book to (default: a new one, kept in the state).

    Raises:
        ConfigError: a bad config value (e.g. ``every <= 0``), held-out images of the wrong shape, ``penalty=True``
            without an Adam/AdamW optimizer over the U-Net.
    """

    def __init__(self, unet: nn.Module, heldout_images: Tensor | None = None,
                 config: ScheduleLearnerConfig | Mapping[str, Any] | None = None, *,
                 optimizer: torch.optim.Optimizer | None = None, sampler: Sampler | None = None,
                 metric: Metric | None = None, callback: Callable[[dict[str, float]], None] | None = None,
                 meter: FlopMeter | None = None) -> None:
        if not isinstance(unet, nn.Module):
            raise ConfigError(f"unet must be an nn.Module (e.g. diffusers.UNet2DModel), got {type(unet).__name__}.")
        self.cfg = cfg = check_learner_config(ScheduleLearnerConfig() if config is None else config)
        self.unet = watch(unet, cfg.network_name)  # counted compute: every call books FLOPs to the active meter
        self.shape = image_shape_of(unet, heldout_images)
        if metric is None and heldout_images is None:
            raise ConfigError("the default metric (domain FID) needs heldout_images=(N, C, H, W) real images you do "
                              "not "
                              "train on; pass them, or your own metric=images -> float.")
        if metric is None and cfg.fid_shrinkage == 0 and cfg.zo_samples <= 64:
            raise ConfigError(f"zo_samples={cfg.zo_samples} <= 64 digit-feature dimensions with fid_shrinkage=0: the "
                              "FID covariance is singular; set fid_shrinkage=0.2 or zo_samples >= 65.")
        self.schedule = NoiseSchedule(cfg.family, cfg.parameterisation, cfg.T, cfg.start, cfg.end, cfg.tau, cfg.eps,
                                      bounds=cfg.bounds)
        self.stepper = ScheduleStepper(self.schedule, {n: getattr(cfg, f"lr_{n}") for n in NAMES}, cfg.estimator,
                                       cfg.zo_mu, cfg.zo_directions, label="ScheduleLearner")
        self.meter = FlopMeter() if meter is None else meter
        self.sampler: Sampler = sampler if sampler is not None else DDIMSampler(cfg.zo_steps, cfg.sample_batch)
        device = next(unet.parameters()).device
        with metering(self.meter):  # the real images' features: booked once (ray_bilevel.cost)
            self.metric: Metric = metric if metric is not None else DomainFID(heldout_images, cfg.fid_shrinkage, device)  # type: ignore[arg-type]
        self.callback = callback
        self.optimizer = optimizer
        self.z: nn.Module | None = None
        self.opt_z: torch.optim.Optimizer | None = None
        if cfg.penalty:
            self.z, self.opt_z = self._penalty_network(unet, optimizer)
        self.gens = {k: torch.Generator().manual_seed(cfg.seed * 1_000_003 + i) for i, k in enumerate(_STREAMS, 1)}
        self.steps = 0
        self.hyper_steps = 0
        self.last_x0: Tensor | None = None
        self.trajectory: list[dict[str, float]] = []

    # -- the forward process -------------------------------------------------------------------
    @property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t, t = 0..T−1, of the current schedule (float64, detached)."""
        return self.schedule.alphas_cumprod().detach()

    def hyperparameters(self) -> dict[str, float]:
        """The current q = (start, end, tau, eps)."""
        return self.schedule.hyperparameters()

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``DDPMScheduler.add_noise`` under the current schedule: sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε, with ᾱ cast to the
        samples' dtype first (as diffusers does), so it is bitwise diffusers' value for the same ᾱ."""
        abar = self.alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
        a = abar[timesteps.to(original_samples.device)].flatten()
        shape = (-1, *([1] * (original_samples.dim() - 1)))
        return (a**0.5).view(shape) * original_samples + ((1 - a) ** 0.5).view(shape) * noise

    def draw(self, x0: Tensor, generator: torch.Generator | None = None) -> NoisyBatch:
        """Draw t ~ U{0..T−1} and ε ~ N(0, I) (from the learner's seeded stream unless ``generator`` is given) and
        noise the clean batch ``x0`` (B, C, H, W) under the current schedule; remembers ``x0`` for the penalty term."""
        x0 = check_batch(x0, self.shape)
        t, noise = draw_t_noise(x0, self.cfg.T, self.gens["draw"] if generator is None else generator)
        noise = noise.to(x0.dtype)
        self.last_x0 = x0.detach()
        return NoisyBatch(t, noise, self.add_noise(x0, noise, t))

    # -- the schedule's outer loop -------------------------------------------------------------
    def step(self) -> dict[str, float] | None:
        """Count one training step (call it after ``optimizer.step()``); every ``every`` steps after the warm-up, take
        a hypergradient step and return its report (also passed to ``callback``), else ``None``."""
        self.steps += 1
        c = self.cfg
        if self.steps <= c.warmup_steps or (self.steps - c.warmup_steps) % c.every:
            return None
        return self.hyper_step()

    def hyper_step(self) -> dict[str, float]:
        """One hypergradient step of q now (docs/algorithms.md §3.4); its report."""
        if self.last_x0 is None:
            raise ConfigError("ScheduleLearner.hyper_step() before any draw(x0): noise a training batch with "
                              "learner.draw(x0) first.")
        c = self.cfg
        with metering(self.meter):
            report: dict[str, float] = {}
            alphas = self.alphas_cumprod.to(self.last_x0.device)
            net: nn.Module = self.unet
            h_y = h_z = torch.zeros(len(NAMES), dtype=torch.float64)
            if self.z is not None and self.opt_z is not None:
                report.update(self._penalty_steps(alphas))
                t, noise = draw_t_noise(self.last_x0, c.T, self.gens["hyper"])
                h_y, h_z = schedule_sm_gradients(self.schedule, (self.unet, self.z), self.last_x0, t, noise)
                net = self.z
            device = next(net.parameters()).device
            x_T = torch.randn((c.zo_samples, *self.shape), generator=self.gens["zo"]).to(device)

            def f(qv: Tensor) -> float:  # common random numbers: x_T, timesteps and features fixed
                s = self.schedule
                images = self.sampler(
                    net, alphas_cumprod_from(qv, s.family, s.parameterisation, s.T, s.clip_min).to(device), x_T
                )
                return checked_value(self.metric(images), qv.tolist(), c.zo_samples)

            report.update(self.stepper.step(f, c.gamma, h_z, h_y, self.gens["zo"], metric=c.metric_name))
        self.hyper_steps += 1
        hyper = self.hyperparameters()
        self.trajectory.append({"training_step": float(self.steps), **hyper})
        report.update(hyper, training_step=float(self.steps), hyper_steps=float(self.hyper_steps),
                      cost_flops=self.meter.total)
        if self.callback is not None:
            self.callback(dict(report))
        return report

    @contextlib.contextmanager
    def counting(self) -> Iterator[FlopMeter]:
        """Book the U-Net's calls inside the block (e.g. the training forward pass; its backward follows) to
        :attr:`meter`, so ``cost_flops`` covers the whole loop."""
        with metering(self.meter) as meter:
            assert meter is not None
            yield meter

    # -- the penalty term (optional) -----------------------------------------------------------
    @staticmethod
    def _penalty_network(
        unet: nn.Module, optimizer: torch.optim.Optimizer | None
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """z, a separate copy of the U-Net, and an optimizer of the user's class and groups over z's parameters."""
        if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            raise ConfigError("penalty=True copies the optimizer's moments into z and needs the user's Adam/AdamW, "
                              "got "
                              f"optimizer={type(optimizer).__name__}; pass optimizer=<your AdamW> or set "
                              "penalty=False.")
        z = copy.deepcopy(unet)
        index = {id(p): i for i, p in enumerate(unet.parameters())}
        z_params = list(z.parameters())
        groups = []
        for g in optimizer.param_groups:
            missing = [i for i, p in enumerate(g["params"]) if id(p) not in index]
            if missing:
                raise ConfigError(f"the optimizer holds {len(missing)} parameter(s) that are not the U-Net's; pass the "
                                  "optimizer of the U-Net alone with penalty=True.")
            groups.append(
                {
                    **{k: v for k, v in g.items() if k != "params"},
                    "params": [z_params[index[id(p)]] for p in g["params"]],
                }
            )
        return z, type(optimizer)(groups)

    def _penalty_steps(self, alphas: Tensor) -> dict[str, float]:
        """z ← y with the optimizer's moments, then ``inner_z`` score-matching steps on the last batch (§3.4)."""
        assert self.z is not None and self.opt_z is not None and self.optimizer is not None and self.last_x0 is not None
        for gz, g in zip(self.opt_z.param_groups, self.optimizer.param_groups):
            gz["lr"] = g["lr"]  # the user's learning-rate schedule, if any
        copy_with_moments_(self.z, self.opt_z, self.unet, self.optimizer)
        losses = [
            sm_step(self.z, self.opt_z, self.last_x0, alphas, self.gens["penalty"]) for _ in range(self.cfg.inner_z)
        ]
        with torch.no_grad():
            dist = math.sqrt(
                sum(float((pz - py).pow(2).sum()) for pz, py in zip(self.z.parameters(), self.unet.parameters()))
            )
        return {"z_loss": sum(losses) / len(losses), "zy_distance": dist}

    # -- exports ----------------------------------------------------------------------------------
    def ddim_scheduler(self) -> Any:
        """A diffusers ``DDIMScheduler`` with the learned betas (configured like the package's sampler)."""
        from ray_bilevel.tasks.noise_schedule.exports import ddim_scheduler

        return ddim_scheduler(self.schedule)

    def ddpm_scheduler(self) -> Any:
        """A diffusers ``DDPMScheduler`` with the learned betas (its ``add_noise`` is :meth:`add_noise`)."""
        from ray_bilevel.tasks.noise_schedule.exports import ddpm_scheduler

        return ddpm_scheduler(self.schedule)

    def export(self, directory: str | os.PathLike[str]) -> dict[str, str]:
        """Write ``ddim/`` and ``ddpm/`` scheduler configs (``DDIMScheduler.from_pretrained(directory + "/ddim")``)
        and ``noise_schedule.json`` (q with its family and parameterisation, the trajectory); their paths."""
        import json

        out = {"ddim": os.path.join(directory, "ddim"), "ddpm": os.path.join(directory, "ddpm"),
               "noise_schedule": os.path.join(directory, "noise_schedule.json")}
        os.makedirs(directory, exist_ok=True)
        self.ddim_scheduler().save_config(out["ddim"])
        self.ddpm_scheduler().save_config(out["ddpm"])
        with open(out["noise_schedule"], "w") as fh:
            json.dump({"schedule": self.schedule.to_config(), "training_steps": self.steps,
                       "hyper_steps": self.hyper_steps, "trajectory": self.trajectory}, fh, indent=1)
        return out

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The learner's whole state (weights_only-loadable); save it next to the model's and optimizer's."""
        state: dict[str, Any] = {
            "format": _FORMAT, "schedule_config": self.schedule.to_config(),
            "schedule": {k: v.detach().clone() for k, v in self.schedule.state_dict().items()},
            "stepper": self.stepper.state_dict(), "gens": {k: g.get_state() for k, g in self.gens.items()},
            "steps": self.steps, "hyper_steps": self.hyper_steps, "trajectory": [dict(t) for t in self.trajectory],
            "meter": self.meter.state_dict(),
        }
        if self.z is not None and self.opt_z is not None:
            state.update(z=self.z.state_dict(), opt_z=self.opt_z.state_dict())
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` (same family, parameterisation and T)."""
        if not isinstance(state, Mapping) or state.get("format") != _FORMAT:
            got = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise ConfigError(f"not a ScheduleLearner state (format {got!r}, expected {_FORMAT!r}); pass "
                              "learner.state_dict() as saved.")
        mine, theirs = self.schedule.to_config(), state["schedule_config"]
        kind = [k for k in ("family", "parameterisation", "T") if mine[k] != theirs[k]]
        if kind:
            raise ConfigError(f"the saved schedule has {', '.join(f'{k}={theirs[k]!r}' for k in kind)}, this learner "
                              f"{', '.join(f'{k}={mine[k]!r}' for k in kind)}; build the learner with the saved "
                              "settings.")
        with torch.no_grad():
            for name, value in state["schedule"].items():
                getattr(self.schedule, name).copy_(value)
        self.stepper.load_state_dict(state["stepper"])
        for key, value in state["gens"].items():
            self.gens[key].set_state(value)
        self.steps, self.hyper_steps = int(state["steps"]), int(state["hyper_steps"])
        self.trajectory = [dict(t) for t in state["trajectory"]]
        self.meter.load_state_dict(state["meter"])
        if self.z is not None and self.opt_z is not None and "z" in state:
            self.z.load_state_dict(state["z"])
            self.opt_z.load_state_dict(state["opt_z"])
