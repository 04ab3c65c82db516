"""What every reward-λ backend shares (the interface is described in :mod:`.backends`): the device, the lower
reward r2 (:func:`make_r2`), the CLIP prompt alignment (:func:`_clip_r1`) and :class:`_Backend`, the base class with
the rewards and the guided round on top of ``eps_model``/``scheduler``/``decode``. The digits backend
(:mod:`.backends`), Stable Diffusion (:mod:`.sd_backend`) and your own pipeline (:mod:`.diffusers_backend`) build on
it. This module never imports ray.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.cost import cached
from ray_bilevel.guidance import Linearisation, guided_sample
from ray_bilevel.metrics.alignment import CLIPScore
from ray_bilevel.metrics.rewards import InkReward, ResNetReward, StrokeTargetScore
from ray_bilevel.tasks.reward_lambda.user_scores import UserScore, is_user_spec

__all__ = ["make_r2", "resolve_device"]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch sees no GPU; use device='cpu' or 'auto'.")
    return torch.device(device)


def make_r2(cfg: Any, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The lower reward r2 of ``cfg.reward``: ink, the ResNet-18 reward, or the user's differentiable function."""
    name = cfg.reward
    if is_user_spec(name):
        return UserScore(name, "reward", cfg.prompt, needs_grad=True)
    if name == "ink":
        return InkReward().to(device)
    if name == "resnet18":
        return ResNetReward(seed=cfg.seed).to(device)
    raise ConfigError(f"unknown reward {name!r}; choose 'ink', 'resnet18' or an import path 'package.module:function'.")


class _Backend:
    """Shared: rewards, the guided round on top of ``self.eps``/``self.scheduler``/``self.decode``."""

    steps: int
    reduction: str
    device: torch.device
    latent_shape: tuple[int, ...]
    image_shape: tuple[int, ...]  # (C, H, W) of the decoded images the scores see
    scheduler: Any
    decode_is_identity: bool
    digit: int
    r1: Callable[[torch.Tensor], torch.Tensor]
    r2: Callable[[torch.Tensor], torch.Tensor]
    alignment: Callable[[torch.Tensor], torch.Tensor]
    cost_key: str = ""  # the settings that built it (cost_flops' keys of cached work), set by make_backend
    build_flops: dict[str, float] = {}  # what building it computed (e.g. prompt encodings), booked once per trial

    def _set_upper(self, cfg: Any, alignment: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """r1 from the prompt alignment and ``cfg.upper`` (docs/reward_lambda.md); a user's upper function is r1
        itself, and the alignment too when the backend has none (``alignment=None``)."""
        if is_user_spec(cfg.upper):
            self.r1 = UserScore(cfg.upper, "upper", cfg.prompt, needs_grad=False)
            self.alignment = alignment if alignment is not None else self.r1
            return
        if alignment is None:
            raise ConfigError(f"upper={cfg.upper!r} needs a prompt alignment; this backend has none.")
        self.alignment = alignment
        if cfg.upper == "alignment":
            self.r1 = alignment
        elif cfg.upper == "stroke_target":
            self.r1 = StrokeTargetScore(alignment, cfg.ink_target, cfg.ink_scale).to(self.device)
        else:
            raise ConfigError(f"unknown upper score {cfg.upper!r}; choose 'stroke_target', 'alignment' or an import "
                              "path 'package.module:function'.")

    def probe_user_scores(self) -> None:
        """Call each user function once on a probe batch, so a wrong one fails before any sampling
        (:mod:`.user_scores`)."""
        for fn in (self.r2, self.r1):
            if isinstance(fn, UserScore):
                fn.probe(self.image_shape, self.device)

    def user_score_info(self) -> dict[str, Any]:
        """Per user function (``reward`` / ``upper``): its name, whether its compute is counted in ``cost_flops`` and
        whether it is differentiable (recorded with the results)."""
        return {fn.key: {"function": fn.name, "flops_counted": fn.counted, "differentiable": fn.differentiable}
                for fn in (self.r2, self.r1) if isinstance(fn, UserScore)}

    @property
    def r1_differentiable(self) -> bool:
        """Whether r1 has a gradient (built-in scores do; a user's upper function only if its probe had one)."""
        return not isinstance(self.r1, UserScore) or bool(self.r1.differentiable)

    def real_images(self, cfg: Any, split: str) -> torch.Tensor | None:
        """Held-out real images matching the prompt in ``split`` ("val" or "test"), if the backend has any."""
        return None

    def noise(self, n: int, seed: int) -> torch.Tensor:
        return torch.randn((n, *self.latent_shape), generator=torch.Generator().manual_seed(int(seed))).to(self.device)

    def eps_model(self, n: int) -> Any:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def guided_round(self, z_T: torch.Tensor, lin: Linearisation | None, beta: float) -> torch.Tensor:
        z0 = guided_sample(self.eps_model(len(z_T)), self.scheduler, z_T, self.steps, lin, beta,
                           None if self.decode_is_identity else self.decode, self.reduction)
        with torch.no_grad():
            return self.decode(z0).clamp(-1, 1)

    def sample(self, z_T: torch.Tensor, batch: int = 256) -> torch.Tensor:
        return torch.cat([self.guided_round(z_T[i:i + batch], None, 0.0) for i in range(0, len(z_T), batch)])

    @torch.no_grad()
    def score(self, fn: Any, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
        return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)]).double().cpu()

    def reference(self, n: int, seed: int, batch: int) -> dict[str, torch.Tensor]:
        """``n`` pre-trained samples from noise ``seed`` and their rewards; computed once per backend, its cost
        booked once per trial (:func:`ray_bilevel.cost.cached`)."""

        def compute() -> dict[str, torch.Tensor]:
            x = self.sample(self.noise(n, seed), batch)
            return {"images": x.cpu(), "r1": self.score(self.r1, x), "r2": self.score(self.r2, x)}

        return cached(self.__dict__.setdefault("_references", {}), (n, seed),
                      f"reference:{self.cost_key}:{n}:{seed}:{batch}", compute)


def _clip_r1(cfg: Any, device: torch.device) -> Any:
    clip = CLIPScore.from_pretrained(cfg.clip_model, allow_download=cfg.allow_download).to(device)
    return lambda x: clip(x, cfg.prompt)
