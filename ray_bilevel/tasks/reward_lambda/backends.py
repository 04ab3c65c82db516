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
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.guidance import EpsilonModel, Linearisation, guided_sample

__all__ = ["make_backend", "make_r2", "DigitsBackend", "SDBackend", "resolve_device"]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch sees no GPU; use device='cpu' or 'auto'.")
    return torch.device(device)


def make_r2(cfg: Any, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The lower reward r2 of ``cfg.reward``: ink, the ResNet-18 reward, or the user's differentiable function."""
    from ray_bilevel.metrics.rewards import InkReward, ResNetReward
    from ray_bilevel.tasks.reward_lambda.user_scores import UserScore, is_user_spec

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
        from ray_bilevel.metrics.rewards import StrokeTargetScore
        from ray_bilevel.tasks.reward_lambda.user_scores import UserScore, is_user_spec

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
        from ray_bilevel.tasks.reward_lambda.user_scores import UserScore

        for fn in (self.r2, self.r1):
            if isinstance(fn, UserScore):
                fn.probe(self.image_shape, self.device)

    def user_score_info(self) -> dict[str, Any]:
        """Per user function (``reward`` / ``upper``): its name, whether its compute is counted in ``cost_flops`` and
        whether it is differentiable (recorded with the results)."""
        from ray_bilevel.tasks.reward_lambda.user_scores import UserScore

        return {fn.key: {"function": fn.name, "flops_counted": fn.counted, "differentiable": fn.differentiable}
                for fn in (self.r2, self.r1) if isinstance(fn, UserScore)}

    @property
    def r1_differentiable(self) -> bool:
        """Whether r1 has a gradient (built-in scores do; a user's upper function only if its probe had one)."""
        from ray_bilevel.tasks.reward_lambda.user_scores import UserScore

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
        from ray_bilevel.cost import cached

        def compute() -> dict[str, torch.Tensor]:
            x = self.sample(self.noise(n, seed), batch)
            return {"images": x.cpu(), "r1": self.score(self.r1, x), "r2": self.score(self.r2, x)}

        return cached(self.__dict__.setdefault("_references", {}), (n, seed),
                      f"reference:{self.cost_key}:{n}:{seed}:{batch}", compute)


class DigitsBackend(_Backend):
    """The shipped class-conditional MNIST U-Net (16×16) with CFG against the null class.

    Prompt alignment = 100 · p_classifier(prompt digit | x) (class alignment in percent, the CLIP-score scale) or
    the CLIP score when ``alignment="clip"``; ``r1`` = alignment × ink window (``upper="stroke_target"``, default)
    or the alignment alone; ``r2`` = ink (default) or the ResNet-18 synthetic reward.
    """

    decode_is_identity = True

    def __init__(self, cfg: Any) -> None:
        from ray_bilevel.assets.cond_unet import class_eps_model, load_cond_unet
        from ray_bilevel.metrics.alignment import ClassAlignment, prompt_to_class

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
        from ray_bilevel.data import load_images

        data = load_images(cfg.dataset, image_size=self.latent_shape[-1], split=split, split_seed=cfg.split_seed)
        return data.images[data.labels == self.digit]


def _clip_r1(cfg: Any, device: torch.device) -> Any:
    from ray_bilevel.metrics.alignment import CLIPScore

    clip = CLIPScore.from_pretrained(cfg.clip_model, allow_download=cfg.allow_download).to(device)
    return lambda x: clip(x, cfg.prompt)


class SDBackend(_Backend):
    """Stable Diffusion (``cfg.sd_model``, local or ``allow_download``): CLIP-text CFG, VAE decoder, CLIP score r1."""

    decode_is_identity = False

    def __init__(self, cfg: Any) -> None:
        from ray_bilevel.sd import VAEDecoder, encode_prompt, load_sd
        from ray_bilevel.tasks.reward_lambda.user_scores import is_user_spec

        self.device = resolve_device(cfg.device)
        self.parts = load_sd(cfg.sd_model, allow_download=cfg.allow_download, device=self.device)
        self.scheduler = self.parts.scheduler
        self.steps, self.reduction, self.cfg_scale = cfg.steps, cfg.reduction, cfg.cfg_scale
        self.cond = encode_prompt(self.parts, cfg.prompt)
        self.uncond = encode_prompt(self.parts, "")
        self.decode = VAEDecoder(self.parts.vae)  # type: ignore[method-assign,assignment]  # a module as the decoder
        s = self.parts.vae_scale
        self.latent_shape = (self.parts.unet.config.in_channels, cfg.height // s, cfg.width // s)
        self.image_shape = (int(self.parts.vae.config.out_channels), cfg.height, cfg.width)
        self.r2 = make_r2(cfg, self.device)
        if is_user_spec(cfg.upper):  # the user's upper score needs no CLIP weights
            self._set_upper(cfg, None)
        elif cfg.alignment != "clip":
            raise ConfigError("the Stable Diffusion backend scores alignment with CLIP; set alignment='clip'.")
        else:
            self._set_upper(cfg, _clip_r1(cfg, self.device))
        self.probe_user_scores()

    def eps_model(self, n: int) -> EpsilonModel:
        return EpsilonModel(self.parts.unet, {"encoder_hidden_states": self.cond},
                            {"encoder_hidden_states": self.uncond} if self.cfg_scale != 1.0 else None, self.cfg_scale)

    def real_images(self, cfg: Any, split: str) -> None:
        return None


#: Settings that determine a backend (models, scorers, sampler); tasks with equal values share one per process.
BACKEND_KEYS = ("model", "model_path", "sd_model", "allow_download", "prompt", "reward", "alignment", "upper",
                "ink_target", "ink_scale", "clip_model", "device", "steps", "reduction", "cfg_scale", "seed", "height",
                "width", "dataset", "split_seed")
_CACHE: dict[tuple, _Backend] = {}


def make_backend(cfg: Any) -> _Backend:
    """The backend for ``cfg``; frozen models are loaded once per process and shared (e.g. by reused Tune actors)."""
    from ray_bilevel.cost import capture, charge_once

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
