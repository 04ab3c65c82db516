"""Lower-level rewards r2 of Application 1 (docs/algorithms.md §2.1, §2.5): differentiable image → (B,) scores.

* :class:`InkReward` — the offline default: stroke boldness, the mean ink of an image in percent. Moderately
  rewarded it prefers bold, well-formed digits; over-optimised it floods the canvas with ink and destroys the
  digit, which is the realism-vs-reward trade-off the entropy strength λ controls.
* :class:`StrokeTargetScore` — the offline default upper score r1 (docs/reward_lambda.md): a per-sample score
  times a Gaussian window on the ink, "recognisable AND at the target stroke weight". Ink is then a cheap proxy
  reward r2 that over-optimises: some guidance moves the strokes towards the target, too much overshoots it.
* :class:`ResNetReward` — the paper's synthetic "colorfulness/vibrancy" reward (Yuan et al. 2024, released
  ``RCGDM/fake_dataset.py``): torchvision ResNet-18 features and a fixed random linear head. ImageNet weights
  are used only when they are already on disk (torch hub cache or an explicit file); otherwise the backbone
  is random and the instance says so (``weights == "random"``).

Every scorer takes images in **[-1, 1]**, shape (B, C, H, W), and has one tested conversion function
(docs/algorithms.md §6.15): :func:`ink_preprocess` and :func:`resnet_preprocess`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ray_bilevel.config import ConfigError

__all__ = ["check_range", "ink_preprocess", "InkReward", "StrokeTargetScore", "resnet_preprocess", "ResNetReward",
           "CLIP_MEAN", "CLIP_STD", "RESNET18_IMAGENET_FILE"]

#: CLIP normalisation (the released reward model normalises with these, not ImageNet's; docs/algorithms.md §2.5).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: File name of torchvision's ImageNet ResNet-18 weights in the torch hub cache.
RESNET18_IMAGENET_FILE = "resnet18-f37072fd.pth"


def check_range(x: torch.Tensor, lo: float = -1.0, hi: float = 1.0, name: str = "images", tol: float = 1e-3) -> None:
    """Raise if ``x`` is not a (B, C, H, W) batch with values in [lo, hi] (± tol)."""
    if x.dim() != 4:
        raise ConfigError(f"{name} must be (B, C, H, W), got shape {tuple(x.shape)}.")
    lo_x, hi_x = (float(x.detach().min()), float(x.detach().max())) if x.numel() else (lo, hi)
    if lo_x < lo - tol or hi_x > hi + tol:
        raise ConfigError(
            f"{name} must lie in [{lo:g}, {hi:g}], got [{lo_x:.3g}, {hi_x:.3g}]; "
            "map uint8 pixels with x / 127.5 - 1 and [0, 1] images with 2 x - 1."
        )


def ink_preprocess(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (1 or 3 channels) → grey ink in [0, 1] (ITU-R 601 luma for RGB), shape (B, 1, H, W)."""
    check_range(x)
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * w).sum(1, keepdim=True)
    elif x.shape[1] != 1:
        raise ConfigError(f"ink reward expects 1 or 3 channels, got {x.shape[1]}.")
    return (x + 1) / 2


class InkReward(nn.Module):
    """Stroke boldness: ``r2(x) = scale · mean_pixels (x + 1)/2``; 100 = a fully inked canvas (default scale 100)."""

    name = "ink"

    def __init__(self, scale: float = 100.0) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * ink_preprocess(x).flatten(1).mean(1)


class StrokeTargetScore(nn.Module):
    """``r1(x) = score(x) · exp(−½ ((ink(x) − target) / scale)²)``: recognisable AND at the target stroke weight.

    ``score`` is any differentiable per-sample score (offline: class alignment in percent, so r1 is in [0, 100]);
    ``ink`` defaults to :class:`InkReward` (percent of an inked canvas). The window is 1 at ``ink = target`` and
    e^{−½} ≈ 0.61 one ``scale`` away. Being a per-sample score, its mean under the sampled distribution is the
    upper objective of problem (9), so the closed-form hypergradient (docs/algorithms.md §2.2) applies unchanged.
    """

    name = "stroke_target"

    def __init__(self, score: Callable[[torch.Tensor], torch.Tensor], target: float, scale: float,
                 ink: nn.Module | None = None) -> None:
        super().__init__()
        if not (math.isfinite(target) and math.isfinite(scale) and scale > 0):
            raise ConfigError(f"the stroke target needs a finite target and a scale > 0, got {target}, {scale}.")
        self.score = score
        self.ink = ink if ink is not None else InkReward()
        self.target, self.scale = float(target), float(scale)

    def window(self, x: torch.Tensor) -> torch.Tensor:
        """``exp(−½ ((ink(x) − target) / scale)²)`` per sample, in (0, 1]."""
        return torch.exp(-0.5 * ((self.ink(x) - self.target) / self.scale).square())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x) * self.window(x)


def resnet_preprocess(x: torch.Tensor, size: int = 224) -> torch.Tensor:
    """[-1, 1] images → ``((x+1)/2).clamp(0,1)`` → RGB → bilinear (antialiased) resize to ``size`` → CLIP-normalised.

    This is the released reward model's input pipeline (docs/algorithms.md §2.5) without its double rescaling bug
    (§6.15).
    """
    check_range(x)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ConfigError(f"the ResNet reward expects 1 or 3 channels, got {x.shape[1]}.")
    x = ((x + 1) / 2).clamp(0, 1)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=bool(x.shape[-1] > size))
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _find_imagenet_weights(path: str | os.PathLike | None) -> Path | None:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"ResNet-18 weights {p} not found; pass an existing .pth file or "
                                    "weights_path=None.")
        return p
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_IMAGENET_FILE
    return candidate if candidate.is_file() else None


class ResNetReward(nn.Module):
    """The synthetic reward of docs/algorithms.md §2.5: ResNet-18 backbone, ``fc = Linear(512, 1)`` with a seeded
    random init.

    Args:
        weights_path: ImageNet ResNet-18 ``.pth`` (state dict); ``None`` looks in the torch hub cache and
            falls back to a random backbone. ``self.weights`` says which: ``"imagenet"`` (hub cache),
            ``"file"`` (``weights_path``) or ``"random"``; nothing is downloaded.
        seed: seeds the random head (and the random backbone); the released model was unseeded.
        size: input resolution (224 as released; smaller is faster for tests).
    """

    name = "resnet18"

    def __init__(self, weights_path: str | os.PathLike | None = None, seed: int = 0, size: int = 224) -> None:
        super().__init__()
        from torchvision.models import resnet18

        with torch.random.fork_rng(devices=[]):  # torchvision init uses the global RNG; keep the caller's intact
            torch.manual_seed(seed)
            net = resnet18(weights=None)
            net.fc = nn.Linear(512, 1)
        found = _find_imagenet_weights(weights_path)
        if found is not None:
            state = torch.load(found, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            if unexpected or set(missing) != {"fc.weight", "fc.bias"}:
                raise ConfigError(f"{found} is not a torchvision ResNet-18 state dict (missing {missing}, unexpected "
                                  f"{unexpected}).")
        self.weights = "random" if found is None else ("file" if weights_path is not None else "imagenet")
        self.weights_file = str(found) if found is not None else ""
        self.net = net.eval().requires_grad_(False)
        self.size = int(size)
        from ray_bilevel.cost import watch

        watch(self, "reward_resnet18")  # counted towards cost_flops (ray_bilevel.cost)

    def train(self, mode: bool = True) -> ResNetReward:  # frozen scorer: BatchNorm stays in eval mode
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(resnet_preprocess(x, self.size)).squeeze(1)
