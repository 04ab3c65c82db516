"""Bilevel noise-schedule learning, Algorithm 6 of the paper (docs/algorithms.md §3.4; departures in §6).

Upper variable q = (start, end, tau, eps) of a cosine (16) or sigmoid (34) schedule; lower level
y = score matching (24) of a U-Net under q; upper objective = FID of DDIM samples. One
``hyper_step`` is one outer iteration of Algorithm 6:

1. K_y AdamW steps of y on SM(y; q), each on a fresh minibatch (K_y^warm in the first ``warmup_outer`` steps, which
   make no hyperparameter update; nor do the ``cooldown_outer`` steps before the last ``polish_outer`` ones).
2. Penalty problem: z, a second U-Net with its own AdamW on its live parameters (the released z update is a no-op,
   docs/algorithms.md §6), initialised in place from y (once, or before every step for ``z_init="copy_y"``);
   K_z steps on ``(1/gamma) grad_z f + grad_z SM(z; q)``, grad_z f = a ZO estimate of grad_z FID (``z_fid_grad="zo"``),
   0 (``"none"``) or the autograd gradient of a differentiable surrogate of FID (``"surrogate"``, surrogate.py).
3. h_y = grad_q SM(y; q), h_z = grad_q SM(z; q) by autograd through alphas_cumprod(q) on the SAME
   (x0, t, eps); g_q = two-point ZO estimate (14) of grad_q FID(z, q).
4. Adam (no weight decay, one learning rate per parameter) on ``g_q/gamma + (h_z - h_y)`` = grad F_gamma/gamma
   (eq. 4/15), then projection onto the schedule bounds; gamma follows a linear schedule.

Every ZO evaluation uses common random numbers (the same x_T, DDIM timesteps and features for the ± points) at
the live (z, q), never at the EMA (docs/algorithms.md §3.3). The upper objective is the Fréchet distance on the digit
classifier's features against the *validation* real images (``fid_domain_val``; the test split is read only by
``evaluate_test``). Random streams are separate (y's data/t/eps, z, hypergradient, ZO), so y's stream is identical in
a bilevel run and in a fixed-schedule run until q first moves.
"""
from __future__ import annotations

import copy
import functools
import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch

from ray_bilevel.config import ConfigError, resolve
from ray_bilevel.diffusion import EMA, build_unet, ddim_sample, initial_noise, score_matching_loss
from ray_bilevel.estimators.flat import add_flat_to_grads_, zo_gradient_of_parameters
from ray_bilevel.estimators.schedule_step import (
    ScheduleStepper,
    copy_with_moments_,
    draw_t_noise,
    schedule_sm_gradients,
    sm_step,
)
from ray_bilevel.schedules import NAMES, NoiseSchedule, alphas_cumprod_from
from ray_bilevel.space import SearchSpace
from ray_bilevel.tasks.base import Task
from ray_bilevel.tasks.noise_schedule import settings
from ray_bilevel.tasks.noise_schedule.benchmark import SPEC
from ray_bilevel.tasks.noise_schedule.evaluation import UpperMetrics, abar_report
from ray_bilevel.tasks.noise_schedule.exports import write_exports
from ray_bilevel.tasks.noise_schedule.settings import NoiseScheduleSettings
from ray_bilevel.tasks.noise_schedule.surrogate import SurrogateFID, SurrogatePenalty

__all__ = ["NoiseScheduleTask"]

_FORMAT = "ray_bilevel.noise_schedule/1"


class NoiseScheduleTask(Task):
    """Algorithm 6 as a :class:`~ray_bilevel.tasks.base.Task` (registered as ``"noise_schedule"``)."""

    name = "noise_schedule"
    metric = "fid_domain"
    mode = "min"
    selection_metric = "fid_domain_val"
    metric_modes = {"fid": "min", "fid_domain": "min", "is": "max", "lower_loss": "min"}
    benchmark = SPEC

    @classmethod
    def search_space(cls) -> SearchSpace:
        return settings.search_space()

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.cfg = cfg = resolve(NoiseScheduleSettings, settings.PRESETS, config)
        settings.check_settings(cfg)
        if cfg.device == "auto":
            cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device='cuda' but no CUDA device is visible; use device='cpu' or 'auto'.")
        self.device = torch.device(cfg.device)
        self.schedule = NoiseSchedule(cfg.family, cfg.parameterisation, cfg.T, cfg.start, cfg.end, cfg.tau, cfg.eps,
                                      bounds=cfg.bounds)
        self.upper = UpperMetrics(cfg, self.device)
        self.train_images = self.upper.train_images
        self.shape = tuple(self.train_images.shape[1:])
        with torch.random.fork_rng(devices=[]):  # deterministic init without touching the global RNG
            torch.manual_seed(cfg.seed)
            self.y = build_unet(cfg.image_size, self.shape[0], cfg.block_out_channels, cfg.layers_per_block,
                                norm_num_groups=cfg.norm_num_groups).to(self.device)
        self.z = copy.deepcopy(self.y)  # a second, separate network (docs/algorithms.md §3.4)
        self.opt_y = torch.optim.AdamW(self.y.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.opt_z = torch.optim.AdamW(self.z.parameters(), lr=cfg.lr_z, weight_decay=cfg.weight_decay)
        # the schedule's hypergradient step (ZO estimate, eq. 4/15, Adam, projection) is shared with ScheduleLearner
        self.stepper = ScheduleStepper(self.schedule, {n: getattr(cfg, f"lr_{n}") for n in NAMES}, cfg.zo_q_estimator,
                                       cfg.zo_mu, cfg.zo_directions, label="noise_schedule")
        self.opt_q = self.stepper.opt
        self.ema = EMA(self.y, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.gens = {
            k: torch.Generator().manual_seed(cfg.seed * 1_000_003 + i)
            for i, k in enumerate(("lower", "penalty", "hyper", "zo"), 1)
        }
        self.eval_noise = initial_noise(cfg.eval_samples, self.shape, cfg.eval_seed + 7919 * cfg.seed)
        self.perm = torch.randperm(len(self.train_images), generator=self.gens["lower"])
        self.cursor = 0
        self.lower_steps = 0
        self.outer_done = 0
        self.bilevel_steps = 0
        self.trajectory: list[dict[str, float]] = []
        self._surrogate: SurrogateFID | None = None
        self._surrogate_penalty: SurrogatePenalty | None = None

    # -- the penalty network's differentiable surrogate (z_fid_grad="surrogate", surrogate.py) ----------------------
    @property
    def surrogate(self) -> SurrogateFID:
        """f̃, against the validation evaluator's real statistics (the ``fid_domain`` "val" evaluator, shared)."""
        if self._surrogate is None:
            c, evaluator = self.cfg, self.upper.domain_evaluator("val")
            self._surrogate = SurrogateFID(evaluator.extractor.model, evaluator.real, c.surrogate_steps,
                                           c.surrogate_shrinkage, c.surrogate_covariance)
        return self._surrogate

    @property
    def surrogate_penalty(self) -> SurrogatePenalty:
        """The penalty network's steps on SM + f̃/γ, built on first use (its y' is rebuilt from y every step)."""
        if self._surrogate_penalty is None:
            c = self.cfg
            self._surrogate_penalty = SurrogatePenalty(
                self.surrogate, T=c.T, inner_z=c.inner_z, samples=c.surrogate_samples, lr=c.lr_z,
                weight_decay=c.weight_decay, use_reference=c.surrogate_reference, shape=self.shape,
                device=self.device, generator=self.gens["penalty"])
        return self._surrogate_penalty

    # -- the upper variable ---------------------------------------------------------------
    def hyperparameters(self) -> dict[str, float]:
        return self.schedule.hyperparameters()

    def set_hyperparameters(self, values: Mapping[str, float]) -> None:
        self.schedule.set_hyperparameters({k: float(v) for k, v in values.items()})

    @property
    def lower_budget(self) -> int:
        c = self.cfg
        return c.warmup_outer * c.inner_y_warmup + (c.outer_steps - c.warmup_outer) * c.inner_y

    @property
    def outer_budget(self) -> int:
        return self.cfg.outer_steps

    # -- lower level (y) ------------------------------------------------------------------
    def _next_batch(self) -> torch.Tensor:
        n, b = len(self.train_images), min(self.cfg.batch_size, len(self.train_images))
        if self.cursor + b > n:
            self.perm = torch.randperm(n, generator=self.gens["lower"])
            self.cursor = 0
        idx = self.perm[self.cursor : self.cursor + b]
        self.cursor += b
        return self.train_images[idx].to(self.device)

    def _lr_y(self) -> float:
        if self.cfg.lr_schedule == "constant":
            return self.cfg.lr
        progress = min(1.0, self.lower_steps / max(1, self.lower_budget))
        return self.cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _alphas(self) -> torch.Tensor:
        return self.schedule.alphas_cumprod().detach().to(self.device)

    def _y_step(self, alphas: torch.Tensor) -> float:
        x0 = self._next_batch()
        t, noise = self._draw_t_noise(x0, self.gens["lower"])
        for group in self.opt_y.param_groups:
            group["lr"] = self._lr_y()
        loss = score_matching_loss(self.y, x0, alphas, t=t, noise=noise)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"score-matching loss is {float(loss)} at lower step {self.lower_steps}; "
                f"lower lr (now {self._lr_y():g}) — the U-Net diverged."
            )
        self.opt_y.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_y.step()
        self.lower_steps += 1
        self.last_x0 = x0
        if self.ema is not None:
            self.ema.update(self.y)
        return float(loss.detach())

    def _draw_t_noise(self, x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return draw_t_noise(x0, self.cfg.T, gen)

    def lower_step(self) -> dict[str, float]:
        """One AdamW step of y on SM(y; q) at the fixed q (the baselines' unit of work)."""
        loss = self._y_step(self._alphas())
        return {"lower_loss": loss, "samples_seen": float(self.lower_steps * self.cfg.batch_size)}

    # -- the upper objective with common random numbers -------------------------------------
    def _fid(self, model: torch.nn.Module, alphas: torch.Tensor, x_T: torch.Tensor) -> float:
        images = ddim_sample(model, alphas, x_T, self.cfg.zo_steps, batch_size=self.cfg.sample_batch)
        return self.upper.fid_domain(images)

    def _zo_noise(self) -> torch.Tensor:
        return torch.randn((self.cfg.zo_samples, *self.shape), generator=self.gens["zo"]).to(self.device)

    # -- one outer iteration -----------------------------------------------------------------
    def _gamma(self) -> float:
        c = self.cfg
        span = max(1, c.outer_steps - c.warmup_outer - c.cooldown_outer - 1)  # gamma_end at the last bilevel step
        return c.gamma + (c.gamma_end - c.gamma) * min(1.0, self.bilevel_steps / span)

    def hyper_step(self) -> dict[str, float]:
        c = self.cfg
        warm = self.outer_done < c.warmup_outer
        end_cool = c.outer_steps - c.polish_outer
        cool = end_cool - c.cooldown_outer <= self.outer_done < end_cool
        alphas = self._alphas()
        losses = [self._y_step(alphas) for _ in range(c.inner_y_warmup if warm else c.inner_y)]
        report = {"lower_loss": sum(losses) / len(losses), "samples_seen": float(self.lower_steps * c.batch_size)}
        self.outer_done += 1
        if warm or cool:  # no hyperparameter update: warm-up (E0 epochs) or cool-down (y adapts to the final q)
            report.update(hypergrad_norm=0.0, warmup=float(warm), cooldown=float(cool))
            return report
        gamma = self._gamma()
        x0 = self.last_x0
        if c.z_solve == "cg":  # the penalty problem solved in its gamma -> inf limit: no z steps (surrogate.py)
            report.update(self._schedule_step_cg(x0, gamma))
        else:
            report.update(self._penalty_steps(alphas, x0, gamma))
            report.update(self._schedule_step(x0, gamma))
        self.bilevel_steps += 1
        report.update(warmup=0.0, cooldown=0.0, gamma=gamma)
        self.trajectory.append({"outer_step": float(self.outer_done), **self.hyperparameters()})
        return report

    def _penalty_steps(self, alphas: torch.Tensor, x0: torch.Tensor, gamma: float) -> dict[str, float]:
        """K_z AdamW steps of the real network z on (1/gamma) grad_z f + grad_z SM(z; q) (docs/algorithms.md §3.4)."""
        c = self.cfg
        if self.bilevel_steps == 0 or c.z_init == "copy_y":  # in place (opt_z keeps pointing at z's live tensors), with
            # y's AdamW moments: a fresh Adam's first step moves every weight by ~lr (z's 96-sample FID ~290 -> ~770)
            copy_with_moments_(self.z, self.opt_z, self.y, self.opt_y)
        if c.z_fid_grad == "surrogate":  # autograd of a differentiable surrogate of FID (surrogate.py)
            return self.surrogate_penalty.steps(self.z, self.opt_z, self.y, self.opt_y, alphas, x0, gamma)
        params = list(self.z.parameters())
        z_losses, zo_norm, fids = [], 0.0, []
        for _ in range(c.inner_z):
            add_zo = None
            if c.z_fid_grad == "zo":
                x_T = self._zo_noise()
                res = zo_gradient_of_parameters(functools.partial(self._fid, self.z, alphas, x_T), params, c.zo_mu_z,
                                                c.zo_directions, self.gens["zo"])
                zo_norm = float(res.grad.norm())
                fids += res.f_plus + res.f_minus
                add_zo = functools.partial(add_flat_to_grads_, params, res.grad, alpha=1.0 / gamma)
            z_losses.append(sm_step(self.z, self.opt_z, x0, alphas, self.gens["penalty"], before_step=add_zo))
        with torch.no_grad():
            dist = math.sqrt(
                sum(float((pz - py).pow(2).sum()) for pz, py in zip(self.z.parameters(), self.y.parameters()))
            )
        out = {"z_loss": sum(z_losses) / len(z_losses), "z_zo_grad_norm": zo_norm, "zy_distance": dist}
        if fids:
            out["fid_domain_z"] = sum(fids) / len(fids)
        return out

    def _schedule_step(self, x0: torch.Tensor, gamma: float) -> dict[str, float]:
        """Eq. (4)/(15) divided by gamma: Adam on g_q/gamma + (h_z - h_y), then projection (the shared
        :class:`~ray_bilevel.estimators.schedule_step.ScheduleStepper`; draws: hyper stream, then the ZO stream)."""
        t, noise = self._draw_t_noise(x0, self.gens["hyper"])
        h_y, h_z = self.sm_schedule_gradients(x0, t, noise)
        x_T = self._zo_noise()

        def f(qv: torch.Tensor) -> float:  # common random numbers: x_T, timesteps and features fixed
            return self._fid(self.z, self._alphas_of(qv), x_T)

        return self.stepper.step(f, gamma, h_z, h_y, self.gens["zo"], metric="fid_domain")

    def _schedule_step_cg(self, x0: torch.Tensor, gamma: float) -> dict[str, float]:
        """``z_solve="cg"``: Adam on ĝ_q/γ + term/γ, term = −∇²_qy SM H⁻¹ ∇_y f̃ (eq. 4 as γ → ∞, docs/algorithms.md
        §3.4), with ĝ_q the ZO estimate at y (z would equal y); same hyper- and ZO-stream draws as the z-step path."""
        c, s = self.cfg, self.schedule
        t, noise = self._draw_t_noise(x0, self.gens["hyper"])
        term, out = self.surrogate_penalty.limit(self.y, [getattr(s, n) for n in NAMES],
                                                 lambda: s.alphas_cumprod().to(self.device), x0, t, noise,
                                                 iters=c.cg_iters, tol=c.cg_tol, damping=c.cg_damping)
        x_T = self._zo_noise()

        def f(qv: torch.Tensor) -> float:  # common random numbers: x_T, timesteps and features fixed
            return self._fid(self.y, self._alphas_of(qv), x_T)

        zero = torch.zeros_like(term)
        return {**out, **self.stepper.step(f, gamma, term / gamma, zero, self.gens["zo"], metric="fid_domain")}

    def sm_schedule_gradients(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_y, h_z) = grad_q SM(y; q), grad_q SM(z; q) on the SAME (x0, t, eps) (docs/algorithms.md §3.4), as (4,)
        tensors."""
        ref = self._surrogate_penalty.reference(self.y) if self._surrogate_penalty is not None else self.y  # y or y'
        h_y, h_z = schedule_sm_gradients(self.schedule, (ref, self.z), x0, t, noise)
        return h_y, h_z

    def _alphas_of(self, qv: torch.Tensor) -> torch.Tensor:
        """alphas_cumprod of a (perturbed) q without touching the module (ZO probes may leave the bounds)."""
        s = self.schedule
        return alphas_cumprod_from(qv, s.family, s.parameterisation, s.T, s.clip_min).to(self.device)

    # -- evaluation ---------------------------------------------------------------------------
    def _eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.y

    def _noise(self, n: int, split: str, kind: str = "domain") -> torch.Tensor:
        """Initial noise of the evaluation samples: fixed per (seed, split, kind), so every trial of a seed shares it,
        validation and test never do, and seeds differ (docs/algorithms.md §4)."""
        c = self.cfg
        seed = c.eval_seed + 7919 * c.seed + (104_729 if split == "test" else 0) + (1 if kind == "final" else 0)
        if kind == "domain" and split == "val" and n == c.eval_samples:
            return self.eval_noise
        return initial_noise(n, self.shape, seed)

    def samples(self, n: int | None = None, split: str = "val", kind: str = "domain") -> torch.Tensor:
        """DDIM samples of the reported network (EMA of y) under the current q from the split's fixed noise."""
        c = self.cfg
        steps = c.zo_steps if c.eval_steps is None else c.eval_steps
        x_T = self._noise(n or c.eval_samples, split, kind).to(self.device)
        return ddim_sample(self._eval_model(), self._alphas(), x_T, steps, batch_size=c.sample_batch).cpu()

    def evaluate(self, final: bool = False) -> dict[str, float]:
        """Validation metrics only (``fid_domain_val``: what every searcher and early stopper selects on)."""
        images = self.samples(self.cfg.eval_samples, "val")
        out = {"fid_domain_val": self.upper.fid_domain(images, "val"), **abar_report(self._alphas())}
        self.last_images = images[:64]
        return out

    def evaluate_test(self, full: bool = True) -> dict[str, float]:
        """The reporting protocol on both splits: ``fid_domain``, Inception ``fid`` and classifier ``is`` on the test
        split (un-suffixed) and their ``_val`` twins (``full=False``: ``fid_domain`` only). Reads the test split;
        never called while tuning."""
        c = self.cfg
        out = dict(abar_report(self._alphas()))
        for split, suffix in (("val", "_val"), ("test", "")):
            out[f"fid_domain{suffix}"] = self.upper.fid_domain(self.samples(c.eval_samples, split), split)
            if not full:
                continue
            final = self.upper.final(self.samples(c.final_samples, split, "final"), split)
            out.update({f"fid{suffix}": final["fid"], f"is{suffix}": final["is"], "fid_samples": final["fid_samples"],
                        f"fid_real{suffix}": final["fid_real"]})
        return out

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically; weights_only-loadable."""
        return {
            "format": _FORMAT, "seed": self.cfg.seed, "y": self.y.state_dict(), "z": self.z.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {}, "opt_y": self.opt_y.state_dict(),
            "opt_z": self.opt_z.state_dict(), "opt_q": self.opt_q.state_dict(),
            "schedule": {k: v.detach().clone() for k, v in self.schedule.state_dict().items()},
            "gens": {k: g.get_state() for k, g in self.gens.items()}, "perm": self.perm.clone(), "cursor": self.cursor,
            "lower_steps": self.lower_steps, "outer_done": self.outer_done, "bilevel_steps": self.bilevel_steps,
            "trajectory": [dict(t) for t in self.trajectory], "projected": list(self.stepper.projected),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != _FORMAT:
            raise ConfigError(f"not a noise_schedule task state (format {state.get('format')!r}, expected "
                              f"{_FORMAT!r}).")
        self.y.load_state_dict(state["y"])
        self.z.load_state_dict(state["z"])
        if self.ema is not None and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        self.opt_y.load_state_dict(state["opt_y"])
        self.opt_z.load_state_dict(state["opt_z"])
        with torch.no_grad():
            for name, value in state["schedule"].items():
                getattr(self.schedule, name).copy_(value)
        self.opt_q.load_state_dict(state["opt_q"])
        for key, value in state["gens"].items():
            self.gens[key].set_state(value)
        self.perm = state["perm"].clone()
        self.cursor = int(state["cursor"])
        self.lower_steps = int(state["lower_steps"])
        self.outer_done = int(state["outer_done"])
        self.bilevel_steps = int(state["bilevel_steps"])
        self.trajectory = [dict(t) for t in state["trajectory"]]
        self.stepper.projected = list(state["projected"])

    def export(self, directory: str) -> None:
        if not hasattr(self, "last_images"):
            self.last_images = self.samples(min(64, self.cfg.eval_samples))
        record = {"trajectory": self.trajectory, "outer_steps": self.outer_done, "lower_steps": self.lower_steps}
        write_exports(directory, self.schedule, self.last_images, self.cfg.eval_steps or self.cfg.zo_steps, record,
                      settings=asdict(self.cfg))
