"""The learner's upper level: the default sampler (the package's DDIM, docs/algorithms.md §4) and the default metric
(domain FID, the Fréchet distance on the digit classifier's features against the user's held-out images), and the
checks of what a user passes instead (a sampler ``(model, alphas_cumprod, x_T) -> images`` and a metric
``images -> float``)."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ray_bilevel.config import ConfigError
from ray_bilevel.diffusion import ddim_sample

__all__ = ["Sampler", "Metric", "DDIMSampler", "DomainFID", "image_shape_of", "check_batch", "checked_value"]

#: ``sampler(model, alphas_cumprod, x_T) -> images`` (N, C, H, W) in [-1, 1], deterministic given x_T.
Sampler = Callable[[nn.Module, Tensor, Tensor], Tensor]
#: ``metric(images) -> float``, lower is better (the upper objective f of eq. 10).
Metric = Callable[[Tensor], float]


class DDIMSampler:
    """Deterministic DDIM (eta = 0, x0 clipped, ``linspace`` timesteps) of :func:`~ray_bilevel.diffusion.ddim_sample`
    with ``steps`` steps, no grad; the model is put in eval mode for the call and restored after."""

    def __init__(self, steps: int, batch_size: int | None = None) -> None:
        self.steps, self.batch_size = int(steps), batch_size

    def __call__(self, model: nn.Module, alphas_cumprod: Tensor, x_T: Tensor) -> Tensor:
        mode = model.training
        model.eval()
        try:
            return ddim_sample(model, alphas_cumprod, x_T, self.steps, batch_size=self.batch_size)
        finally:
            model.train(mode)


class DomainFID:
    """Domain FID of images against the user's held-out real images (docs/algorithms.md §4): the Fréchet distance of
    the shipped digit classifier's 64-d features (grey or RGB, any size: resized to 28 px), the real statistics
    computed once (and cached on disk by :class:`~ray_bilevel.metrics.fid.FIDEvaluator`)."""

    def __init__(self, heldout_images: Tensor, shrinkage: float = 0.0, device: str | torch.device = "cpu") -> None:
        from ray_bilevel.metrics.features import digit_extractor
        from ray_bilevel.metrics.fid import FIDEvaluator

        self.evaluator = FIDEvaluator(digit_extractor(device=device), heldout_images.detach().float().cpu(),
                                      cache_key="schedule_learner", shrinkage=shrinkage)

    def __call__(self, images: Tensor) -> float:
        return float(self.evaluator(images))


def image_shape_of(unet: nn.Module, heldout_images: Tensor | None) -> tuple[int, ...]:
    """(C, H, W) of the images the learner samples: the held-out images' (checked against the U-Net's config), or
    the U-Net's ``config.in_channels`` and ``config.sample_size``."""
    config = getattr(unet, "config", None)
    channels, size = getattr(config, "in_channels", None), getattr(config, "sample_size", None)
    if isinstance(size, Sequence):
        size = tuple(int(s) for s in size)
    elif size is not None:
        size = (int(size), int(size))
    if heldout_images is None:
        if channels is None or size is None:
            raise ConfigError("without heldout_images the learner needs the U-Net's config.in_channels and "
                              "config.sample_size (a diffusers UNet2DModel has them); pass heldout_images=(N, C, H, "
                              "W).")
        return (int(channels), *size)
    if not isinstance(heldout_images, Tensor) or heldout_images.dim() != 4 or heldout_images.shape[0] < 2:
        shape = tuple(heldout_images.shape) if isinstance(heldout_images, Tensor) else type(heldout_images).__name__
        raise ConfigError(f"heldout_images has shape {shape}; pass an (N, C, H, W) tensor of N >= 2 images in [-1, 1] "
                          "(e.g. images[:, None] for (N, H, W) grey images).")
    shape = tuple(int(s) for s in heldout_images.shape[1:])
    if channels is not None and shape[0] != channels or size is not None and shape[1:] != size:
        raise ConfigError(f"heldout_images are {shape} (C, H, W) but the U-Net takes ({channels}, "
                          f"{size[0] if size else '?'}, "
                          f"{size[1] if size else '?'}); resize the held-out images to the training images' shape.")
    return shape


def check_batch(x0: Any, shape: tuple[int, ...]) -> Tensor:
    """``x0`` as a (B, C, H, W) tensor of the learner's image shape, else a one-line ConfigError naming the fix."""
    if not isinstance(x0, Tensor) or x0.dim() != 4 or tuple(x0.shape[1:]) != shape:
        got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ConfigError(f"the training batch has shape {got}, but the learner's images are (B, "
                          f"{', '.join(map(str, shape))}); "
                          "pass the clean (B, C, H, W) images in [-1, 1] you train on.")
    return x0


def checked_value(value: Any, q: Sequence[float], n: int) -> float:
    """The metric's value as a finite float, else a one-line error naming the value and the fix."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"the upper metric returned {value!r} ({type(value).__name__}); make it return one float "
                          "(lower is better).") from None
    if not math.isfinite(out):
        raise FloatingPointError(f"the upper metric returned {out} on {n} samples at q={[round(v, 6) for v in q]}; "
                                 "make "
                                 "it return a finite float (the default domain FID needs fid_shrinkage > 0 below 65 "
                                 "samples).")
    return out
