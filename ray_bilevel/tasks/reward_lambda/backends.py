"""Models and scorers behind the reward-λ tasks: the offline digits model and the Stable Diffusion backend.

A backend exposes what Algorithms 2 and 5 need (docs/algorithms.md §2.3, §2.4), identically for a pixel-space
class-conditional U-Net and for Stable Diffusion:

* ``noise(n, seed)`` — initial noise z_T (seeded; the same seed gives the same z_T in every trial);
* ``sample(z_T)`` — unguided pre-trained samples (pool of Algorithm 2, FID reference);
* ``guided_round(z_T, lin, beta)`` — one round of Algorithm 5 (``lin=None``: round 0, unguided);
* ``r1(x)`` — upper score, differentiable: ``upper="stroke_target"`` (offline default) the prompt alignment times a
  Gaussian window on the ink (:class:`~ray_bilevel.metrics.rewards.StrokeTargetScore`), ``upper="alignment"`` the
  prompt alignment alone (class alignment in percent, or CLIP score);
* ``alignment(x)`` — the prompt alignment alone (reported as ``prompt_alignment``);
* ``r2(x)`` — lower reward (ink or the ResNet-18 synthetic reward), differentiable.

``reward`` and ``upper`` may also name your own function ``f(images, prompts) -> Tensor[N]`` (an import path
``"package.module:function"`` or a callable; :mod:`.user_scores`), and ``model="diffusers"`` loads your own pipeline
folder (:mod:`.diffusers_backend`). Images are in [-1, 1]. This module never imports ray.

Where each piece lives: what every backend shares in :mod:`.backend_base`, Stable Diffusion in :mod:`.sd_backend`,
your own pipeline in :mod:`.diffusers_backend`; here the digits backend and :func:`make_backend`, which picks and
caches one per settings (imports run one way: this module → those three, :mod:`.diffusers_backend` → the other two).
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.cost import capture, charge_once
from ray_bilevel.data import load_images
from ray_bilevel.guidance import EpsilonModel
from ray_bilevel.metrics.alignment import ClassAlignment, prompt_to_class
from ray_bilevel.models.cond_unet import class_eps_model, load_cond_unet
from ray_bilevel.tasks.reward_lambda.backend_base import _Backend, _clip_r1, make_r2, resolve_device
from ray_bilevel.tasks.reward_lambda.sd_backend import SDBackend

__all__ = ["make_backend", "make_r2", "DigitsBackend", "SDBackend", "resolve_device"]


class DigitsBackend(_Backend):
    """The shipped class-conditional MNIST U-Net (16×16) with CFG against the null class.

    Prompt alignment = 100 · p_classifier(prompt digit | x) (class alignment in percent, the CLIP-score scale) or
    the CLIP score when ``alignment="clip"``; ``r1`` = alignment × ink window (``upper="stroke_target"``, default)
    or the alignment alone; ``r2`` = ink (default) or the ResNet-18 synthetic reward.
    """

    decode_is_identity = True

    def __init__(self, cfg: Any) -> None:
        self.device = resolve_device(cfg.device)
        self.digit = prompt_to_class(cfg.prompt)
        self.unet, self.scheduler = load_cond_unet(cfg.model_path or None)
        self.unet.to(self.device)
        self.steps, self.reduction, self.cfg_scale = cfg.steps, cfg.reduction, cfg.cfg_scale
        size = self.unet.config.sample_size
        self.latent_shape = (self.unet.config.in_channels, size, size)
        self.image_shape = self.latent_shape
        self._class_eps = class_eps_model
        self.r2 = make_r2(cfg, self.device)
        if cfg.alignment == "class":
            align = ClassAlignment().to(self.device)
            self._set_upper(cfg, lambda x: 100.0 * align(x, self.digit))
        elif cfg.alignment == "clip":
            self._set_upper(cfg, _clip_r1(cfg, self.device))
        else:
            raise ConfigError(f"unknown alignment {cfg.alignment!r}; choose 'class' or 'clip'.")
        self.probe_user_scores()

    def eps_model(self, n: int) -> EpsilonModel:
        labels = torch.full((n,), self.digit, dtype=torch.long, device=self.device)
        return self._class_eps(self.unet, labels, self.cfg_scale)

    def real_images(self, cfg: Any, split: str) -> torch.Tensor | None:
        """Held-out real images of the prompt's digit in ``split`` ("val" or "test"; for ``fid_domain_real``)."""
        data = load_images(cfg.dataset, image_size=self.latent_shape[-1], split=split, split_seed=cfg.split_seed)
        return data.images[data.labels == self.digit]


#: Settings that determine a backend (models, scorers, sampler); tasks with equal values share one per process.
BACKEND_KEYS = ("model", "model_path", "sd_model", "allow_download", "prompt", "reward", "alignment", "upper",
                "ink_target", "ink_scale", "clip_model", "device", "steps", "reduction", "cfg_scale", "seed", "height",
                "width", "dataset", "split_seed")
_CACHE: dict[tuple, _Backend] = {}


def make_backend(cfg: Any) -> _Backend:
    """The backend for ``cfg``; frozen models are loaded once per process and shared (e.g. by reused Tune actors)."""
    key = tuple(getattr(cfg, k) for k in BACKEND_KEYS)
    if key not in _CACHE:
        with capture() as built:
            if cfg.model == "digits":
                backend: _Backend = DigitsBackend(cfg)
            elif cfg.model == "sd":
                backend = SDBackend(cfg)
            elif cfg.model == "diffusers":
                from ray_bilevel.tasks.reward_lambda.diffusers_backend import make_diffusers_backend

                backend = make_diffusers_backend(cfg)
            else:
                raise ConfigError(f"unknown model {cfg.model!r}; choose 'digits' (offline, shipped), 'sd' (Stable "
                                  "Diffusion) or 'diffusers' (your pipeline folder in model_path).")
        backend.cost_key = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
        backend.build_flops = dict(built.by_network)
        if len(_CACHE) >= 4:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = backend
    backend = _CACHE[key]
    charge_once(f"backend:{backend.cost_key}", backend.build_flops)  # a shared backend costs each trial its build
    return backend
