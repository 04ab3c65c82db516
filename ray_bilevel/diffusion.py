"""The diffusion engine: U-Net builder, score-matching loss (24), deterministic DDIM, EMA.

Notation (docs/algorithms.md §1): abar_t = ``alphas_cumprod[t]``, forward sample
``u_t = sqrt(abar_t) u_0 + sqrt(1 - abar_t) eps``, Tweedie estimate
``u0_hat = (u_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t)``. The schedule enters only through
``alphas_cumprod`` (a tensor), so autograd reaches the schedule parameters q of
:mod:`ray_bilevel.schedules` through the loss, and a zeroth-order perturbation of q is just another tensor.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ray_bilevel.config import ConfigError
from ray_bilevel.cost import watch

__all__ = [
    "build_unet",
    "score_matching_loss",
    "SPACINGS",
    "ddim_timesteps",
    "ddim_sample",
    "initial_noise",
    "EMA",
]

SPACINGS = ("linspace", "trailing", "leading")


def build_unet(
    image_size: int,
    channels: int = 1,
    block_out_channels: Sequence[int] = (16, 32),
    layers_per_block: int = 1,
    num_class_embeds: int | None = None,
    norm_num_groups: int = 8,
    attention: bool = False,
):
    """A ``diffusers.UNet2DModel`` epsilon-network for ``channels`` x ``image_size`` x ``image_size`` images.

    ``len(block_out_channels) - 1`` down-samplings; no attention unless ``attention=True`` (then the
    lowest-resolution down/up blocks and the mid block attend). Sizes: (16, 32) at 16 px has about
    164 k parameters (about 76 ms per AdamW step at batch 64 on a 2-core CPU); (32, 64, 64) at 28 px
    about 1.06 M (the paper's scale, a GPU job).

    Raises:
        ConfigError: image_size not divisible by 2**(len(blocks) - 1), or channels not divisible by the groups.
    """
    from diffusers import UNet2DModel

    blocks = tuple(int(c) for c in block_out_channels)
    if not blocks or any(c <= 0 for c in blocks):
        raise ConfigError("block_out_channels must be a non-empty list of positive ints, got "
                          f"{list(block_out_channels)}.")
    factor = 2 ** (len(blocks) - 1)
    if image_size <= 0 or image_size % factor:
        raise ConfigError(
            f"image_size={image_size} cannot be halved {len(blocks) - 1} times by block_out_channels={list(blocks)}; "
            f"use a multiple of {factor} or fewer blocks."
        )
    bad = [c for c in blocks if c % norm_num_groups]
    if bad:
        raise ConfigError(f"block_out_channels {bad} are not divisible by norm_num_groups={norm_num_groups}; use "
                          "multiples of it.")
    if layers_per_block < 1 or channels < 1:
        raise ConfigError(f"layers_per_block and channels must be >= 1, got {layers_per_block} and {channels}.")
    down = ["DownBlock2D"] * len(blocks)
    up = ["UpBlock2D"] * len(blocks)
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    unet = UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=blocks,
        layers_per_block=layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=norm_num_groups,
        num_class_embeds=num_class_embeds,
        add_attention=attention,
    )
    return watch(unet, "unet")  # every call counts towards cost_flops (ray_bilevel.cost)


def _eps(model: nn.Module, x: Tensor, t: Tensor, class_labels: Tensor | None) -> Tensor:
    out = model(x, t, class_labels=class_labels) if class_labels is not None else model(x, t)
    return out.sample if hasattr(out, "sample") else out


def score_matching_loss(
    model: nn.Module,
    x0: Tensor,
    alphas_cumprod: Tensor,
    *,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """Denoising score matching, eq. (24): ``mean ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2``.

    ``t ~ U{0..T-1}`` and ``eps ~ N(0, I)`` are drawn from ``generator`` unless given (pass the same
    ``t``/``noise`` to evaluate two networks on the same (x0, t, eps), docs/algorithms.md §3.4). abar is indexed
    in the schedule's dtype and then cast to ``x0.dtype``, so gradients reach q through ``alphas_cumprod``.
    """
    T = alphas_cumprod.shape[0]
    n = x0.shape[0]
    if t is None:
        t = torch.randint(0, T, (n,), generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    abar = alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(n, *([1] * (x0.dim() - 1)))
    # clamp_min keeps sqrt's gradient finite if abar == 1 exactly (changes values by < 1e-10)
    x_t = abar.sqrt() * x0 + (1.0 - abar).clamp_min(1e-20).sqrt() * noise
    return (noise - _eps(model, x_t, t, class_labels)).pow(2).mean()


def ddim_timesteps(T: int, steps: int, spacing: str = "linspace") -> Tensor:
    """Descending DDIM timesteps (LongTensor of length ``steps``).

    * ``"linspace"`` (default; the released sampler, docs/algorithms.md §4): ``round(linspace(0, T-1, steps))``, both
      ends included.
    * ``"trailing"`` / ``"leading"``: diffusers' spacings (identical to its ``set_timesteps``).

    :func:`ddim_sample` steps between consecutive entries, then from the last one to abar = 1.
    """
    if not 1 <= steps <= T:
        raise ConfigError(f"DDIM steps must be in [1, T={T}], got {steps}.")
    if spacing == "linspace":
        ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round()
    elif spacing == "trailing":
        ts = (torch.arange(T, 0, -T / steps, dtype=torch.float64).round() - 1)[:steps].flip(0)
    elif spacing == "leading":
        ts = torch.arange(steps, dtype=torch.float64) * (T // steps)
    else:
        raise ConfigError(f"unknown DDIM spacing {spacing!r}; choose one of {list(SPACINGS)}.")
    ts = ts.long().flip(0)
    if len(set(ts.tolist())) != steps:
        raise ConfigError(f"{steps} DDIM steps with spacing {spacing!r} repeat a timestep of T={T}; use fewer steps.")
    return ts


#: Without grad on the CPU, :func:`ddim_sample` runs the network on at most this many samples at a time. The
#: values are bitwise those of one big batch; the 16-px U-Net's activations then stay in the core's cache
#: (studies/micro.py: 500 samples in chunks of 125-250 are 1.1-1.3x faster than one batch at one thread).
_CPU_CHUNK = 128


def initial_noise(n: int, shape: Sequence[int], seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """x_T ~ N(0, I) of shape (n, *shape) from ``torch.Generator().manual_seed(seed)`` (common random numbers)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn((n, *shape), generator=gen, dtype=dtype)


def ddim_sample(
    model: nn.Module,
    alphas_cumprod: Tensor,
    x_T: Tensor,
    steps: int,
    *,
    class_labels: Tensor | None = None,
    clip: bool = True,
    clip_x0: bool = True,
    spacing: str = "linspace",
    batch_size: int | None = None,
    grad: bool = False,
) -> Tensor:
    """Deterministic DDIM (eta = 0) from the given ``x_T``; two calls with the same x_T share their noise.

    Each step: ``u0_hat = (x - sqrt(1 - abar_t) eps) / sqrt(abar_t)``,
    ``x <- sqrt(abar_prev) u0_hat + sqrt(1 - abar_prev) eps``; the last step goes to abar = 1
    (diffusers' ``set_alpha_to_one=True``), so it returns u0_hat at the last timestep.

    Args:
        clip: clamp the returned images to [-1, 1] (released behaviour).
        clip_x0: clamp u0_hat to [-1, 1] inside the loop (diffusers' ``clip_sample``, its default). On by
            default: every admissible chen2023 schedule has abar_{T-1} ~ 1e-9, so the first step divides
            the network's error by sqrt(abar_{T-1}) ~ 3e-5 and, unclipped, saturates the samples.
        batch_size: process x_T in chunks of this size (memory); the result does not depend on it. Without
            grad on the CPU, chunks are further capped at ``_CPU_CHUNK`` samples (cache-sized, same values).
        grad: keep the autograd graph (default: no grad).
    """
    if x_T.device.type == "cpu" and not grad:  # cache-sized chunks on the CPU (same values, see _CPU_CHUNK)
        batch_size = min(batch_size or x_T.shape[0], _CPU_CHUNK)
    if batch_size is not None and batch_size < x_T.shape[0]:
        kw: dict[str, Any] = dict(clip=clip, clip_x0=clip_x0, spacing=spacing, grad=grad)
        chunks = []
        for i in range(0, x_T.shape[0], batch_size):
            labels = None if class_labels is None else class_labels[i : i + batch_size]
            chunks.append(ddim_sample(model, alphas_cumprod, x_T[i : i + batch_size], steps, class_labels=labels, **kw))
        return torch.cat(chunks)
    T = alphas_cumprod.shape[0]
    ts = ddim_timesteps(T, steps, spacing)
    abar = alphas_cumprod.to(x_T.device)
    with torch.set_grad_enabled(grad):
        x = x_T
        for k, t in enumerate(ts.tolist()):
            a_t = abar[t].to(x.dtype)
            a_prev = abar[ts[k + 1]].to(x.dtype) if k + 1 < len(ts) else torch.ones((), dtype=x.dtype, device=x.device)
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            eps = _eps(model, x, t_batch, class_labels)
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            if clip_x0:
                x0 = x0.clamp(-1.0, 1.0)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x.clamp(-1.0, 1.0) if clip else x


class EMA:
    """Exponential moving average of a network's weights, for reporting only (docs/algorithms.md §6.22).

    ``ema <- decay * ema + (1 - decay) * model`` for floating parameters and buffers (other buffers
    are copied). It never averages schedule parameters: a model holding a
    :class:`~ray_bilevel.schedules.NoiseSchedule` is refused.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA decay must be in [0, 1), got {decay!r}.")
        from ray_bilevel.schedules import NoiseSchedule

        if any(isinstance(m, NoiseSchedule) for m in model.modules()):
            raise ConfigError("the EMA must not average schedule parameters (docs/algorithms.md §6.22); pass the U-Net "
                              "alone.")
        self.decay = float(decay)
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights."""
        live = model.state_dict()
        for name, value in self.module.state_dict().items():
            src = live[name]
            if value.is_floating_point():
                value.lerp_(src.to(value.dtype), 1.0 - self.decay)
            else:
                value.copy_(src)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` in place."""
        model.load_state_dict(self.module.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "weights": dict(self.module.state_dict())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.module.load_state_dict(state["weights"])
