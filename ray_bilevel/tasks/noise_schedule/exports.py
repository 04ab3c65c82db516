"""Human-facing exports of the noise-schedule task: the learned schedule as a diffusers DDIMScheduler config,
its trajectory as JSON, and a sample grid (docs/algorithms.md §6 on the exported scheduler's timesteps).
:func:`ddim_scheduler` and :func:`ddpm_scheduler` are also what ``ScheduleLearner`` exports."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import torch

from ray_bilevel.schedules import NoiseSchedule

__all__ = ["image_grid", "write_exports", "ddim_scheduler", "ddpm_scheduler"]


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1):
    """A PIL image of (N, C, H, W) images in [-1, 1] on a grid (grey or RGB)."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = images[
            i
        ]
    array = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if c == 1 else array)


def ddim_scheduler(schedule: NoiseSchedule) -> Any:
    """A diffusers ``DDIMScheduler`` with the learned betas, configured like our sampler: clip_sample=True (ddim_sample
    clips the x0 prediction) and "linspace" timesteps, which diffusers approximates (it steps back by T // S)."""
    return schedule.to_diffusers(clip_sample=True, timestep_spacing="linspace")


def ddpm_scheduler(schedule: NoiseSchedule) -> Any:
    """A diffusers ``DDPMScheduler`` with the learned betas (``trained_betas``; epsilon prediction): its ``add_noise``
    is the forward process of the learned schedule, to train on or to sample with."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=schedule.T, trained_betas=schedule.betas().detach().cpu().tolist(),
                         prediction_type="epsilon", clip_sample=True)


def write_exports(directory: str, schedule: NoiseSchedule, images: torch.Tensor, steps: int,
                  record: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    """``scheduler/scheduler_config.json`` (diffusers DDIMScheduler with the learned betas),
    ``noise_schedule.json`` (our config, the sampler, ``record`` — the q trajectory and step counts — and the
    settings) and ``samples.png`` (a grid of ``images``)."""
    os.makedirs(directory, exist_ok=True)
    ddim_scheduler(schedule).save_config(os.path.join(directory, "scheduler"))
    full = {
        "schedule": schedule.to_config(),
        "sampler": {"ddim": "eta=0, clip x0", "spacing": "linspace", "steps": steps},
        **record,
        "settings": {k: _jsonable(v) for k, v in settings.items()},
    }
    with open(os.path.join(directory, "noise_schedule.json"), "w") as fh:
        json.dump(full, fh, indent=1, allow_nan=False)
    scale = max(1, 128 // images.shape[-1])
    grid = image_grid(images)
    grid.resize((grid.width * scale, grid.height * scale), 0).save(os.path.join(directory, "samples.png"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value
