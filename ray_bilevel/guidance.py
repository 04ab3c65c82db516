"""Gradient-guided sampling: Algorithm 5 of the paper (Guo et al. 2024 gradient guidance, eq. (32)).

docs/algorithms.md §2.3 (the guidance term, Algorithm 5 and its options). For any diffusers ε-prediction network and
scheduler, with an identity decoder (pixel models) or a VAE decoder (latent models), with or
without classifier-free guidance:

* look-ahead (Tweedie) estimate ``û_0 = (z_t − sqrt(1−ᾱ_t) ε̂) / sqrt(ᾱ_t)`` (docs/algorithms.md §1);
* per-sample linearised reward ``⟨g_i, Dec(û_0,i)⟩ + b_i`` with a target ``y_i``;
* guidance loss ``L(z) = ½ · reduce_i (⟨g_i, Dec(û_0,i)⟩ + b_i − y_i)²`` and the guided noise
  prediction ``ε̃ = ε̂ + sqrt(1−ᾱ_t) · β · ∇_z L`` (the score gets ``G = −β∇L``, eq. (32));
* K rounds from the **same** initial noise; after each round the reward is re-linearised at each
  sample's own new image (``g_i = ∇r(x_i)``, ``b_i = r(x_i) − ⟨g_i, x_i⟩``); round 0 is unguided.

``reduction="sum"`` (default, ours; docs/algorithms.md §6.7) makes the per-sample strength independent of the batch
size; ``"mean"`` reproduces the released code (strength β/B). The autograd graph of one step is
freed before the next step: nothing is kept across steps.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ray_bilevel.config import ConfigError

__all__ = ["EpsilonModel", "Linearisation", "GuidanceResult", "guided_sample", "guided_generate", "linearise"]

Reward = Callable[[torch.Tensor], torch.Tensor]
Decoder = Callable[[torch.Tensor], torch.Tensor]


class EpsilonModel:
    """ε̂(z, t) of a diffusers U-Net with optional classifier-free guidance.

    ``ε̂ = ε_∅ + w · (ε_c − ε_∅)`` with ``w = cfg_scale``; ``cfg_scale = 1`` (or ``uncond=None``)
    calls the network once with the condition only.

    Args:
        unet: any diffusers model whose ``forward(sample, timestep, **kwargs)`` returns ``.sample``
            (``UNet2DModel``, ``UNet2DConditionModel``) or a plain callable returning a tensor.
        cond: keyword tensors of the condition, batch first (``{"class_labels": y}`` or
            ``{"encoder_hidden_states": text_emb}``); a batch of 1 is broadcast; ``None`` = unconditional.
        uncond: the same keys for the null condition (CFG only).
        cfg_scale: the guidance weight w (Stable Diffusion default 7.5).
    """

    def __init__(self, unet: Any, cond: Mapping[str, torch.Tensor] | None = None,
                 uncond: Mapping[str, torch.Tensor] | None = None, cfg_scale: float = 1.0) -> None:
        if cfg_scale != 1.0 and uncond is None:
            raise ConfigError(f"cfg_scale={cfg_scale} needs `uncond` (the null condition); pass uncond or cfg_scale=1.")
        if uncond is not None and cond is not None and set(uncond) != set(cond):
            raise ConfigError(f"`cond` keys {sorted(cond)} and `uncond` keys {sorted(uncond)} must match.")
        self.unet, self.cond, self.uncond, self.cfg_scale = unet, dict(cond or {}), uncond, float(cfg_scale)

    @staticmethod
    def _expand(kwargs: Mapping[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in kwargs.items():
            if value.shape[0] not in (1, batch):
                raise ConfigError(f"condition {key!r} has batch {value.shape[0]}, expected 1 or {batch}.")
            out[key] = value.expand(batch, *value.shape[1:]) if value.shape[0] == 1 else value
        return out

    def _call(self, z: torch.Tensor, t: torch.Tensor, kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.unet(z, t, **kwargs)
        return out.sample if hasattr(out, "sample") else out

    def __call__(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = z.shape[0]
        cond = self._expand(self.cond, batch)
        if self.uncond is None or self.cfg_scale == 1.0:
            return self._call(z, t, cond)
        uncond = self._expand(self.uncond, batch)
        both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
        eps_u, eps_c = self._call(torch.cat([z, z]), t, both).chunk(2)
        return eps_u + self.cfg_scale * (eps_c - eps_u)


@dataclass
class Linearisation:
    """Per-sample linear model of the reward, ``r(x) ≈ ⟨g_i, x⟩ + b_i``, and its target ``y_i`` (docs/algorithms.md
    §2.3)."""

    g: torch.Tensor  # (B, *image_shape)
    b: torch.Tensor  # (B,)
    y: torch.Tensor  # (B,)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``⟨g_i, x_i⟩ + b_i − y_i`` per sample."""
        return (self.g * x).flatten(1).sum(1) + self.b - self.y


def linearise(reward: Reward, x: torch.Tensor, target: str = "fixed", y_star: float = 10.0,
              delta: float = 1.0) -> tuple[Linearisation, torch.Tensor]:
    """Linearise ``reward`` at each sample's own image ``x_i`` (per-sample gradients, docs/algorithms.md §2.3).

    ``target="fixed"``: ``y_i = y*`` (released); ``"increment"``: ``y_i = r(x_i) + δ`` (Guo's
    ``y = δ + ⟨g_i, x_i⟩ + b_i``). Returns the linearisation and the rewards ``r(x_i)``.
    """
    if target not in ("fixed", "increment"):
        raise ConfigError(f"target must be 'fixed' or 'increment', got {target!r}.")
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        r = reward(x)
        if r.shape != (x.shape[0],):
            raise ConfigError(f"reward must return one value per sample, shape ({x.shape[0]},), got {tuple(r.shape)}.")
        (g,) = torch.autograd.grad(r.sum(), x)
    r = r.detach()
    b = r - (g * x.detach()).flatten(1).sum(1)
    y = torch.full_like(r, float(y_star)) if target == "fixed" else r + float(delta)
    return Linearisation(g=g, b=b, y=y), r


def _step_kwargs(scheduler: Any, generator: torch.Generator | None, eta: float) -> dict[str, Any]:
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    if "use_clipped_model_output" in params and getattr(scheduler.config, "clip_sample", False):
        # DDIM with x0 clipping: recompute ε from the clipped x0, so a strongly guided ε̃ cannot push z_{t-1}
        # outside the data range while x0 is clipped (without this, β ≳ 0.1 on the digits model diverges to NaN)
        kwargs["use_clipped_model_output"] = True
    return kwargs


def guided_sample(eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler: Any,
                  z_T: torch.Tensor, steps: int, lin: Linearisation | None = None, beta: float = 0.0,
                  decoder: Decoder | None = None, reduction: str = "sum", eta: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One round of Algorithm 5 from the initial noise ``z_T``: returns the final latents ``z_0``.

    With ``lin=None`` or ``beta=0`` this is plain (unguided) sampling under ``torch.no_grad``.
    Otherwise every step computes ``∇_z L`` through the ε-network and the decoder (docs/algorithms.md §2.3) and feeds
    the detached ``ε̃`` to ``scheduler.step``.
    """
    if reduction not in ("sum", "mean"):
        raise ConfigError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")
    if beta < 0:
        raise ConfigError(f"guidance strength beta must be >= 0, got {beta}.")
    decoder = decoder or (lambda u: u)
    guided = lin is not None and beta > 0
    scheduler.set_timesteps(steps)
    acp = scheduler.alphas_cumprod
    z = z_T * getattr(scheduler, "init_noise_sigma", 1.0)
    kwargs = _step_kwargs(scheduler, generator, eta)
    for t in scheduler.timesteps:
        a_t = acp[int(t)].to(z.dtype)
        if guided:
            assert lin is not None  # implied by guided; narrows the type for mypy
            with torch.enable_grad():
                zg = z.detach().requires_grad_(True)
                eps = eps_model(scheduler.scale_model_input(zg, t), t)
                u0 = (zg - (1 - a_t).sqrt() * eps) / a_t.sqrt()
                res = lin.residual(decoder(u0))
                loss = 0.5 * (res.square().sum() if reduction == "sum" else res.square().mean())
                (grad,) = torch.autograd.grad(loss, zg)
            eps = eps.detach() + (1 - a_t).sqrt() * beta * grad
        else:
            with torch.no_grad():
                eps = eps_model(scheduler.scale_model_input(z, t), t)
        with torch.no_grad():
            z = scheduler.step(eps, t, z.detach(), **kwargs).prev_sample
        if guided and not torch.isfinite(z).all():
            raise FloatingPointError(f"guided sampling diverged at t={int(t)} with beta={beta:g}; lower beta (raise "
                                     "λ).")
    return z.detach()


@dataclass
class GuidanceResult:
    """Output of :func:`guided_generate`: images of the last round and the per-round record."""

    images: torch.Tensor                 # (B, C, H, W) in [-1, 1], last round
    rewards: torch.Tensor                # (B,) reward of the last round's images
    round_images: list[torch.Tensor] = field(default_factory=list)
    round_rewards: list[torch.Tensor] = field(default_factory=list)


def guided_generate(eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler: Any,
                    reward: Reward, shape: tuple[int, ...], beta: float, rounds: int = 8, steps: int = 50,
                    target: str = "fixed", y_star: float = 10.0, delta: float = 1.0,
                    decoder: Decoder | None = None, reduction: str = "sum", eta: float = 0.0,
                    generator: torch.Generator | None = None, z_T: torch.Tensor | None = None,
                    keep_rounds: bool = False) -> GuidanceResult:
    """Algorithm 5 (docs/algorithms.md §2.3): ``rounds`` rounds from one fixed ``z_T``; round 0 unguided.

    Args:
        eps_model: ``(z, t) -> ε̂`` (e.g. :class:`EpsilonModel`, CFG included).
        scheduler: a diffusers scheduler (DDIM recommended; its ``alphas_cumprod`` give ᾱ_t).
        reward: differentiable ``images in [-1, 1] -> (B,)``.
        shape: latent shape ``(B, C, H, W)``; ignored when ``z_T`` is given.
        beta: guidance strength β (= β0/λ for the lower level, (11a); docs/algorithms.md §2.3).
        decoder: latents -> images in [-1, 1] (None = identity). Final images are clamped to [-1, 1].
        generator: seeds ``z_T`` (drawn once, reused every round) and any stochastic scheduler noise.
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}.")
    if z_T is None:
        z_T = torch.randn(shape, generator=generator)
    decode = decoder or (lambda u: u)
    lin: Linearisation | None = None
    result = GuidanceResult(images=torch.empty(0), rewards=torch.empty(0))
    for k in range(rounds):
        z0 = guided_sample(eps_model, scheduler, z_T, steps, lin if k > 0 else None, beta, decoder, reduction, eta,
                           generator)
        with torch.no_grad():
            x = decode(z0).clamp(-1, 1)
        if k < rounds - 1:
            lin, r = linearise(reward, x, target, y_star, delta)
        else:
            with torch.no_grad():
                r = reward(x)
        result.images, result.rewards = x, r
        if keep_rounds:
            result.round_images.append(x)
            result.round_rewards.append(r)
    return result
