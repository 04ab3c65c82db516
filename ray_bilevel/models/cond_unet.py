"""Loader for the shipped class-conditional MNIST U-Net (Application 1's offline pretrained model).

The weights in ``ray_bilevel/assets/cond_unet_mnist16/`` are rebuilt by ``python tools/train_cond_unet.py``
(seed, data split, steps and the quality check are in ``cond_unet_mnist16/training.json``). The model
is a ``diffusers.UNet2DModel`` (16×16, 1 channel, ε-prediction, classes 0-9 plus the null class 10 for
classifier-free guidance) with a DDIM scheduler on the cosine schedule; both load with
``from_pretrained`` from the local folder, so nothing downloads.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ray_bilevel.guidance import EpsilonModel, guided_sample
from ray_bilevel.paths import ASSETS_DIR

__all__ = ["COND_UNET_DIR", "NULL_CLASS", "load_cond_unet", "class_eps_model", "sample_class_conditional",
           "training_record"]

COND_UNET_DIR = ASSETS_DIR / "cond_unet_mnist16"
NULL_CLASS = 10


def load_cond_unet(model_dir: str | Path | None = None) -> tuple[Any, Any]:
    """``(UNet2DModel in eval mode, fp32, frozen; DDIMScheduler)`` from ``model_dir`` (default: shipped)."""
    from diffusers import DDIMScheduler, UNet2DModel

    from ray_bilevel.cost import watch

    path = Path(model_dir) if model_dir is not None else COND_UNET_DIR
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"no pretrained U-Net in {path}; rebuild it with `python tools/train_cond_unet.py --out "
            f"{path}`."
        )
    unet = UNet2DModel.from_pretrained(path, torch_dtype=torch.float32, low_cpu_mem_usage=False)
    unet = watch(unet.eval().requires_grad_(False), "unet")  # counted towards cost_flops (ray_bilevel.cost)
    scheduler = DDIMScheduler.from_pretrained(path)
    return unet, scheduler


def training_record(model_dir: str | Path | None = None) -> dict:
    """The ``training.json`` written by the training script (seed, steps, quality check)."""
    path = Path(model_dir) if model_dir is not None else COND_UNET_DIR
    return json.loads((path / "training.json").read_text())


def class_eps_model(unet: Any, labels: torch.Tensor, cfg_scale: float = 1.0) -> EpsilonModel:
    """ε̂ for digit classes ``labels`` (B,), with classifier-free guidance against the null class."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    uncond = {"class_labels": torch.full_like(labels, NULL_CLASS)} if cfg_scale != 1.0 else None
    return EpsilonModel(unet, {"class_labels": labels}, uncond, cfg_scale)


@torch.no_grad()
def sample_class_conditional(unet: Any, scheduler: Any, labels: torch.Tensor, steps: int = 50,
                             cfg_scale: float = 1.0, generator: torch.Generator | None = None,
                             eta: float = 0.0, batch_size: int = 500) -> torch.Tensor:
    """Unguided DDIM samples ``(len(labels), 1, 16, 16)`` in [-1, 1], one per label, in batches."""
    size = unet.config.sample_size
    out = []
    for start in range(0, len(labels), batch_size):
        y = labels[start:start + batch_size]
        z_T = torch.randn((len(y), unet.config.in_channels, size, size), generator=generator)
        out.append(guided_sample(class_eps_model(unet, y, cfg_scale), scheduler, z_T, steps, eta=eta,
                                 generator=generator).clamp(-1, 1))
    return torch.cat(out)
