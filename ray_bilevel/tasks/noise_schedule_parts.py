"""Helpers of the noise-schedule task (Algorithm 6): data + metrics, flat parameters, state, exports.

Kept apart from :mod:`ray_bilevel.tasks.noise_schedule` so that file holds the algorithm only.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.estimators.zeroth_order import ZOResult

if TYPE_CHECKING:  # pragma: no cover
    from ray_bilevel.tasks.noise_schedule import NoiseScheduleSettings, NoiseScheduleTask

__all__ = ["UpperMetrics", "abar_report", "check_settings", "coordinate_zo", "get_flat", "set_flat_", "state_of", "load_state",
           "write_exports", "image_grid"]

_FORMAT = "ray_bilevel.noise_schedule/1"


def check_settings(cfg: "NoiseScheduleSettings") -> None:
    """Raise a one-line ConfigError for an invalid noise_schedule setting."""
    positive = ("image_size", "batch_size", "T", "outer_steps", "inner_y_warmup", "inner_y", "inner_z", "zo_directions",
                "zo_samples", "zo_steps", "eval_samples", "final_samples", "final_real", "sample_batch")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"noise_schedule setting {key!r} must be >= 1, got {getattr(cfg, key)}.")
    phases = (cfg.warmup_outer, cfg.cooldown_outer, cfg.polish_outer)
    if min(phases) < 0 or sum(phases) > cfg.outer_steps:
        raise ConfigError(f"warmup_outer + cooldown_outer + polish_outer must be in [0, outer_steps={cfg.outer_steps}], "
                          f"got {' + '.join(map(str, phases))}.")
    for key in ("lr", "lr_z", "gamma", "gamma_end", "zo_mu", "zo_mu_z"):
        if not getattr(cfg, key) > 0:
            raise ConfigError(f"noise_schedule setting {key!r} must be > 0, got {getattr(cfg, key)}.")
    for key in ("lr_start", "lr_end", "lr_tau", "lr_eps", "weight_decay"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"noise_schedule setting {key!r} must be >= 0, got {getattr(cfg, key)}.")
    if not 0 <= cfg.ema_decay < 1:
        raise ConfigError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}.")
    choices = {"z_init": ("previous", "copy_y"), "z_fid_grad": ("zo", "none"), "lr_schedule": ("constant", "cosine"),
               "zo_q_estimator": ("coordinate", "gaussian"),
               "device": ("cpu", "cuda", "auto")}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"noise_schedule setting {key!r} must be one of {list(allowed)}, got {getattr(cfg, key)!r}.")
    steps = cfg.zo_steps if cfg.eval_steps is None else cfg.eval_steps
    if max(steps, cfg.zo_steps) > cfg.T:
        raise ConfigError(f"DDIM steps ({cfg.zo_steps}/{steps}) cannot exceed T={cfg.T}; lower zo_steps/eval_steps.")


class UpperMetrics:
    """Training images, and the upper-level metrics against the held-out real images.

    * ``fid_domain`` — Fréchet distance on the digit classifier's 64-d features (decision (f));
      the real statistics are computed once and cached by :class:`~ray_bilevel.metrics.fid.FIDEvaluator`.
    * ``final`` — Inception FID (pool3, 2048-d) against ``final_real`` held-out images and the
      classifier Inception Score, with the numbers of samples recorded in the report.
    """

    def __init__(self, cfg: "NoiseScheduleSettings", device: torch.device) -> None:
        from ray_bilevel.data import load_images
        from ray_bilevel.metrics.features import digit_extractor
        from ray_bilevel.metrics.fid import FIDEvaluator

        kw = dict(image_size=cfg.image_size, heldout_fraction=cfg.heldout_fraction, split_seed=cfg.split_seed,
                  root=cfg.data_root, download=cfg.download)
        if cfg.dataset == "mnist" and cfg.data_root is None and not cfg.download:
            raise ConfigError("dataset 'mnist' (full MNIST) needs data_root=<folder with MNIST/raw> or download=True; "
                              "offline, use dataset='mnist5k'.")
        train = load_images(cfg.dataset, split="train", **kw)
        self.heldout = load_images(cfg.dataset, split="heldout", **kw)
        if train.images.shape[0] < cfg.batch_size:
            raise ConfigError(f"the training split has {train.images.shape[0]} images, fewer than batch_size={cfg.batch_size}.")
        self.train_images = train.images
        self.cfg, self.device = cfg, device
        self.domain = FIDEvaluator(digit_extractor(device=device), self.heldout.images, cache_key=self.heldout.name,
                                   shrinkage=cfg.fid_shrinkage)
        self._inception = None

    def fid_domain(self, images: torch.Tensor) -> float:
        return float(self.domain(images))

    def final(self, images: torch.Tensor) -> dict[str, float]:
        """Inception ``fid`` and classifier ``is`` of ``images``, with the protocol recorded."""
        from ray_bilevel.metrics.features import inception_extractor
        from ray_bilevel.metrics.fid import FIDEvaluator
        from ray_bilevel.metrics.inception_score import classifier_inception_score

        cfg = self.cfg
        if self._inception is None:
            real = self.heldout.images[: cfg.final_real]
            self._inception = FIDEvaluator(inception_extractor(device=self.device), real,
                                           cache_key=f"{self.heldout.name}[:{len(real)}]",
                                           shrinkage=cfg.fid_shrinkage)
        score, _ = classifier_inception_score(images)
        return {"fid": float(self._inception(images)), "is": float(score), "fid_samples": float(len(images)),
                "fid_real": float(min(cfg.final_real, len(self.heldout.images)))}


def coordinate_zo(f: Callable[[torch.Tensor], float], x: torch.Tensor, mu: float,
                  lower: Sequence[float], upper: Sequence[float], skip: Sequence[bool] | None = None) -> ZOResult:
    """Two-point differences (14) along the coordinate directions v_j = e_j, kept inside the box [lower, upper].

    Central ``(f(x + mu e_j) - f(x - mu e_j)) / (2 mu)`` where both probes are feasible; one-sided
    (forward/backward, sharing one f(x)) at an active bound; 0 if neither probe fits or ``skip[j]``. With common
    random numbers inside ``f`` this is the gradient up to O(mu^2) (O(mu) one-sided), with no
    cross-talk between coordinates of very different sensitivity, which a single Gaussian
    direction has (in 4-d, the tau component of a one-direction estimate is dominated by the
    end/start components at the DDIM default). Cost: 2 evaluations per free coordinate.
    """
    x = x.detach()
    grad = torch.zeros_like(x)
    res = ZOResult(grad=grad)
    f0: float | None = None
    for j in range(x.numel()):
        e = torch.zeros_like(x)
        e.view(-1)[j] = mu
        xj = float(x.view(-1)[j])
        up, down = xj + mu <= upper[j], xj - mu >= lower[j]
        if skip is not None and skip[j]:
            continue
        if up and down:
            fp, fm = float(f(x + e)), float(f(x - e))
            grad.view(-1)[j] = (fp - fm) / (2 * mu)
        elif up or down:
            if f0 is None:
                f0 = float(f(x))
            fp, fm = (float(f(x + e)), f0) if up else (f0, float(f(x - e)))
            grad.view(-1)[j] = (fp - fm) / mu
        else:
            continue
        res.f_plus.append(fp)
        res.f_minus.append(fm)
    return res


def abar_report(alphas: torch.Tensor) -> dict[str, float]:
    """``abar_t{t}`` at t = T/10, T/4, T/2, 3T/4, 9T/10 (the learned schedule in a few numbers)."""
    T = alphas.shape[0]
    points = sorted({max(0, min(T - 1, int(round(T * f)))) for f in (0.1, 0.25, 0.5, 0.75, 0.9)})
    return {f"abar_t{t}": float(alphas[t]) for t in points}


def get_flat(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """A detached copy of the parameters as one flat vector."""
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


@torch.no_grad()
def set_flat_(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy ``flat`` into the parameters in place (optimizers keep pointing at the same tensors)."""
    offset = 0
    for p in params:
        p.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} entries, the parameters {offset}.")


def state_of(task: "NoiseScheduleTask") -> dict[str, Any]:
    """Everything needed to continue identically; weights_only-loadable."""
    return {
        "format": _FORMAT,
        "seed": task.cfg.seed,
        "y": task.y.state_dict(),
        "z": task.z.state_dict(),
        "ema": task.ema.state_dict() if task.ema is not None else {},
        "opt_y": task.opt_y.state_dict(),
        "opt_z": task.opt_z.state_dict(),
        "opt_q": task.opt_q.state_dict(),
        "schedule": {k: v.detach().clone() for k, v in task.schedule.state_dict().items()},
        "gens": {k: g.get_state() for k, g in task.gens.items()},
        "perm": task.perm.clone(),
        "cursor": task.cursor,
        "lower_steps": task.lower_steps,
        "outer_done": task.outer_done,
        "bilevel_steps": task.bilevel_steps,
        "trajectory": [dict(t) for t in task.trajectory],
        "projected": list(task.projected),
    }


def load_state(task: "NoiseScheduleTask", state: Mapping[str, Any]) -> None:
    if state.get("format") != _FORMAT:
        raise ConfigError(f"not a noise_schedule task state (format {state.get('format')!r}, expected {_FORMAT!r}).")
    task.y.load_state_dict(state["y"])
    task.z.load_state_dict(state["z"])
    if task.ema is not None and state["ema"]:
        task.ema.load_state_dict(state["ema"])
    task.opt_y.load_state_dict(state["opt_y"])
    task.opt_z.load_state_dict(state["opt_z"])
    with torch.no_grad():
        for name, value in state["schedule"].items():
            getattr(task.schedule, name).copy_(value)
    task.opt_q.load_state_dict(state["opt_q"])
    for key, value in state["gens"].items():
        task.gens[key].set_state(value)
    task.perm = state["perm"].clone()
    task.cursor = int(state["cursor"])
    task.lower_steps = int(state["lower_steps"])
    task.outer_done = int(state["outer_done"])
    task.bilevel_steps = int(state["bilevel_steps"])
    task.trajectory = [dict(t) for t in state["trajectory"]]
    task.projected = list(state["projected"])


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1):
    """A PIL image of (N, C, H, W) images in [-1, 1] on a grid (grey or RGB)."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = images[i]
    array = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if c == 1 else array)


def write_exports(task: "NoiseScheduleTask", directory: str, settings: Mapping[str, Any]) -> None:
    """``scheduler/scheduler_config.json`` (diffusers DDIMScheduler with the learned betas),
    ``noise_schedule.json`` (our config, the q trajectory, the settings) and ``samples.png``."""
    os.makedirs(directory, exist_ok=True)
    # clip_sample=True like our sampler (ddim_sample clips the x0 prediction); our timesteps are "linspace" with
    # steps between consecutive entries, which diffusers' DDIMScheduler approximates (it steps back by T // S)
    task.schedule.to_diffusers(clip_sample=True, timestep_spacing="linspace").save_config(os.path.join(directory, "scheduler"))
    record = {"schedule": task.schedule.to_config(), "sampler": {"ddim": "eta=0, clip x0", "spacing": "linspace",
              "steps": task.cfg.eval_steps or task.cfg.zo_steps}, "trajectory": task.trajectory, "outer_steps": task.outer_done,
              "lower_steps": task.lower_steps, "settings": {k: _jsonable(v) for k, v in settings.items()}}
    with open(os.path.join(directory, "noise_schedule.json"), "w") as fh:
        json.dump(record, fh, indent=1, allow_nan=False)
    scale = max(1, 128 // task.last_images.shape[-1])
    grid = image_grid(task.last_images)
    grid.resize((grid.width * scale, grid.height * scale), 0).save(os.path.join(directory, "samples.png"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value
