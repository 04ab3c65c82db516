"""``model="diffusers"``: the λ task on your own diffusers pipeline folder (docs/your_own_problem.md).

``model_path`` is a folder written by ``pipeline.save_pretrained(DIR)``:

* a pipeline whose denoiser is a ``UNet2DModel`` (``DDPMPipeline``, ``DDIMPipeline``, ...), unconditional or
  class-conditional (``num_class_embeds``; the class is the prompt's number: ``"3"``, ``"class 3"`` or
  ``"a handwritten three"``), sampled in pixel space: :class:`PixelPipelineBackend`;
* a Stable Diffusion folder (``unet`` = ``UNet2DConditionModel`` with ``vae``, ``text_encoder``, ``tokenizer``):
  the Stable Diffusion backend on that folder.

The sampler is Algorithm 5 (docs/algorithms.md §2.3) with DDIM (η = 0, deterministic) on the noise schedule of the
scheduler saved with the pipeline (its betas, ``num_train_timesteps``, ``clip_sample``, ...): a ``DDPMScheduler``'s
ancestral steps would draw fresh noise every step, so the same seed would not give the same images in every
trial. The guidance formula needs an ε-prediction model; other ``prediction_type`` values are refused. Images are
what the pipeline produces before its PIL conversion: (N, C, H, W) in [-1, 1]. This module never imports ray.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.guidance import EpsilonModel
from ray_bilevel.tasks.reward_lambda.backend_base import _Backend, _clip_r1, make_r2, resolve_device
from ray_bilevel.tasks.reward_lambda.sd_backend import SDBackend
from ray_bilevel.tasks.reward_lambda.user_scores import is_user_spec

__all__ = ["pipeline_kind", "load_pixel_pipeline", "prompt_class", "PixelPipelineBackend", "make_diffusers_backend"]


def pipeline_kind(path: str | Path) -> str:
    """``"pixel"`` (a ``UNet2DModel`` pipeline) or ``"sd"`` (a Stable Diffusion folder) for the folder ``path``."""
    folder = Path(path) if path else None
    if folder is None or not folder.is_dir():
        raise ConfigError(f"model='diffusers' needs model_path, a folder written by pipeline.save_pretrained(DIR); "
                          f"got model_path={str(path)!r}.")
    index = folder / "model_index.json"
    if not index.is_file():
        raise ConfigError(f"model_path {str(folder)!r} has no model_index.json, so it is not a diffusers pipeline "
                          "folder; write one with pipeline.save_pretrained(DIR) (e.g. DDPMPipeline(unet, scheduler)).")
    components = json.loads(index.read_text())
    unet = components.get("unet", [None, None])[1] if isinstance(components.get("unet"), list) else None
    if unet == "UNet2DModel":
        return "pixel"
    if unet == "UNet2DConditionModel" and all(k in components for k in ("vae", "text_encoder", "tokenizer")):
        return "sd"
    raise ConfigError(f"model_path {str(folder)!r} holds a {components.get('_class_name')!r} whose denoiser is "
                      f"{unet!r}; model='diffusers' takes a pipeline with a UNet2DModel (e.g. DDPMPipeline) or a "
                      "Stable Diffusion folder.")


def load_pixel_pipeline(path: str | Path) -> tuple[Any, Any]:
    """``(UNet2DModel in eval mode, frozen; DDIMScheduler on the saved scheduler's noise schedule)`` from a pipeline
    folder; the U-Net is watched for ``cost_flops``."""
    from diffusers import DDIMScheduler, UNet2DModel

    from ray_bilevel.cost import watch

    unet = UNet2DModel.from_pretrained(path, subfolder="unet", torch_dtype=torch.float32, low_cpu_mem_usage=False)
    saved = DDIMScheduler.load_config(path, subfolder="scheduler")
    kind = saved.get("prediction_type", "epsilon")
    if kind != "epsilon":
        raise ConfigError(f"the scheduler saved in {str(path)!r} has prediction_type={kind!r}; Algorithm 5's guidance "
                          "(docs/algorithms.md §2.3) needs an ε-prediction model (prediction_type='epsilon').")
    scheduler = DDIMScheduler.from_config(saved)
    return watch(unet.eval().requires_grad_(False), "unet"), scheduler


def prompt_class(prompt: str, num_classes: int) -> int:
    """The class label a prompt names for a class-conditional U-Net: ``"3"``, ``"class 3"``, ``"a handwritten
    three"``."""
    from ray_bilevel.metrics.alignment import prompt_to_class

    text = str(prompt).strip().lower().removeprefix("class").strip()
    label = int(text) if text.isdigit() else prompt_to_class(prompt)
    if not 0 <= label < num_classes:
        raise ConfigError(f"prompt {prompt!r} names class {label}, but the U-Net has num_class_embeds={num_classes}; "
                          f"name a class in 0-{num_classes - 1}.")
    return label


class PixelPipelineBackend(_Backend):
    """A ``UNet2DModel`` pipeline from ``cfg.model_path`` (unconditional or class-conditional), pixel space, DDIM."""

    decode_is_identity = True

    def __init__(self, cfg: Any) -> None:
        self.device = resolve_device(cfg.device)
        self.unet, self.scheduler = load_pixel_pipeline(cfg.model_path)
        self.unet.to(self.device)
        self.steps, self.reduction, self.cfg_scale = cfg.steps, cfg.reduction, cfg.cfg_scale
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        self.latent_shape = (int(self.unet.config.in_channels), int(h), int(w))
        self.image_shape = (int(self.unet.config.out_channels), int(h), int(w))
        classes = self.unet.config.num_class_embeds
        self.digit = prompt_class(cfg.prompt, int(classes)) if classes else -1
        if cfg.cfg_scale != 1.0:
            raise ConfigError(f"cfg_scale={cfg.cfg_scale}, but a UNet2DModel pipeline has no null condition to guide "
                              "against; set cfg_scale=1.")
        self.r2 = make_r2(cfg, self.device)
        if is_user_spec(cfg.upper):
            self._set_upper(cfg, None)
        elif cfg.alignment == "class":
            from ray_bilevel.metrics.alignment import ClassAlignment, prompt_to_class

            digit = prompt_to_class(cfg.prompt)
            align = ClassAlignment().to(self.device)
            self._set_upper(cfg, lambda x: 100.0 * align(x, digit))
        else:
            self._set_upper(cfg, _clip_r1(cfg, self.device))
        self.probe_user_scores()

    def eps_model(self, n: int) -> EpsilonModel:
        if self.digit < 0:
            return EpsilonModel(self.unet)
        return EpsilonModel(self.unet, {"class_labels": torch.full((n,), self.digit, dtype=torch.long,
                                                                   device=self.device)})


def make_diffusers_backend(cfg: Any) -> _Backend:
    """The backend for a pipeline folder: :class:`PixelPipelineBackend`, or Stable Diffusion on that folder."""
    if pipeline_kind(cfg.model_path) == "sd":
        return SDBackend(dataclasses.replace(cfg, sd_model=cfg.model_path))
    return PixelPipelineBackend(cfg)
