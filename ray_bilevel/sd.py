"""Stable Diffusion v1.5 path of Application 1: Algorithm 5 on VAE latents with a CLIP text condition.

docs/algorithms.md §2.3-§2.4 (released setting: ``runwayml/stable-diffusion-v1-5``, 512×512, 50 steps, CFG 7.5,
batch 3, 8 rounds, seed 5, target y* = 10). The guided sampler is :func:`ray_bilevel.guidance.guided_generate`
with ``EpsilonModel(unet, text condition, empty-prompt condition, cfg_scale)`` and the VAE decoder
``Dec(u) = vae.decode(u / scaling_factor)``; the reward gradient flows through the U-Net and the decoder.

Loading never touches the network unless ``allow_download=True``. The scheduler defaults to DDIM (this
package's choice, deterministic with η = 0); ``scheduler="default"`` keeps the model's own (PNDM in the
SD-1.5 folder, as released).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.guidance import EpsilonModel, GuidanceResult, guided_generate

__all__ = ["SDParts", "load_sd", "encode_prompt", "VAEDecoder", "sd_guided_generate", "SD15"]

#: The paper's base model (the original repository id; a mirror is ``stable-diffusion-v1-5/stable-diffusion-v1-5``).
SD15 = "runwayml/stable-diffusion-v1-5"


@dataclass
class SDParts:
    """The pieces of a Stable Diffusion pipeline that guided sampling needs."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any

    @property
    def vae_scale(self) -> int:
        """Pixel size of one latent cell (8 for SD-1.5)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def load_sd(name_or_path: str | os.PathLike = SD15, allow_download: bool = False, scheduler: str = "ddim",
            torch_dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> SDParts:
    """Load U-Net, VAE, CLIP text encoder, tokenizer and scheduler from a diffusers folder or the HF cache.

    Raises:
        FileNotFoundError: the weights are not local and ``allow_download`` is False (one line, with the fix).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if scheduler not in ("ddim", "default"):
        raise ConfigError(f"scheduler must be 'ddim' or 'default', got {scheduler!r}.")
    kw: dict[str, Any] = {"local_files_only": not allow_download or os.path.isdir(name_or_path)}
    try:
        unet = UNet2DConditionModel.from_pretrained(name_or_path, subfolder="unet", torch_dtype=torch_dtype, **kw)
        vae = AutoencoderKL.from_pretrained(name_or_path, subfolder="vae", torch_dtype=torch_dtype, **kw)
        text_encoder = CLIPTextModel.from_pretrained(
            name_or_path, subfolder="text_encoder", torch_dtype=torch_dtype, **kw
        )
        tokenizer = CLIPTokenizer.from_pretrained(name_or_path, subfolder="tokenizer", **kw)
        if scheduler == "ddim":
            sched = DDIMScheduler.from_pretrained(name_or_path, subfolder="scheduler", **kw)
        else:  # the folder's own scheduler class (PNDM for SD-1.5)
            import diffusers

            config = DDIMScheduler.load_config(name_or_path, subfolder="scheduler", **kw)
            sched = getattr(diffusers, config["_class_name"]).from_config(config)
    except OSError as exc:
        if allow_download:
            raise
        raise FileNotFoundError(
            f"Stable Diffusion weights {str(name_or_path)!r} are not available locally; pass allow_download=True "
            "(Hugging Face Hub, about 4 GB) or the path of a folder saved with StableDiffusionPipeline.save_pretrained."
        ) from exc
    from ray_bilevel.cost import watch

    for module in (unet, vae, text_encoder):
        # transformers' decorator on PreTrainedModel.to hides its signature from mypy
        module.to(device).eval().requires_grad_(False)  # type: ignore[arg-type]
    watch(unet, "unet")  # counted towards cost_flops (ray_bilevel.cost); the decoder in VAEDecoder
    watch(text_encoder, "text_encoder")
    return SDParts(unet, vae, text_encoder, tokenizer, sched)


@torch.no_grad()
def encode_prompt(parts: SDParts, prompt: str) -> torch.Tensor:
    """CLIP text embedding (1, L, D) of ``prompt``, tokenised like ``StableDiffusionPipeline`` (max-length padding)."""
    tok = parts.tokenizer([prompt], padding="max_length", max_length=parts.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt")
    mask = None
    if getattr(parts.text_encoder.config, "use_attention_mask", False):
        mask = tok.attention_mask.to(parts.text_encoder.device)
    out = parts.text_encoder(tok.input_ids.to(parts.text_encoder.device), attention_mask=mask)
    return out[0].to(parts.unet.dtype)


class VAEDecoder:
    """``Dec(u) = vae.decode(u / scaling_factor)``: latents → images in (about) [-1, 1], differentiable."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae
        self.scaling = float(getattr(vae.config, "scaling_factor", 1.0))

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        from ray_bilevel.cost import count_call

        return count_call("vae_decoder", self.vae, self._decode, latents)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scaling).sample


def sd_guided_generate(parts: SDParts, prompt: str, reward: Callable[[torch.Tensor], torch.Tensor], beta: float,
                       batch_size: int = 3, rounds: int = 8, steps: int = 50, cfg_scale: float = 7.5,
                       height: int = 512, width: int = 512, target: str = "fixed", y_star: float = 10.0,
                       delta: float = 1.0, reduction: str = "sum", generator: torch.Generator | None = None,
                       negative_prompt: str = "", keep_rounds: bool = False) -> GuidanceResult:
    """Algorithm 5 on Stable Diffusion for one prompt (docs/algorithms.md §2.3): ``rounds`` rounds of ``batch_size``
    images.

    ``beta`` is the guidance strength (β0/λ). The initial latents are drawn once from ``generator`` and
    reused in every round; round 0 is the unguided pre-trained sample.
    """
    if height % parts.vae_scale or width % parts.vae_scale:
        raise ConfigError(f"height and width must be multiples of {parts.vae_scale}, got {height}x{width}.")
    cond = encode_prompt(parts, prompt)
    uncond = encode_prompt(parts, negative_prompt) if cfg_scale != 1.0 else None
    eps = EpsilonModel(parts.unet, {"encoder_hidden_states": cond},
                       {"encoder_hidden_states": uncond} if uncond is not None else None, cfg_scale)
    shape = (batch_size, parts.unet.config.in_channels, height // parts.vae_scale, width // parts.vae_scale)
    z_T = torch.randn(shape, generator=generator).to(device=parts.unet.device, dtype=parts.unet.dtype)
    return guided_generate(eps, parts.scheduler, reward, shape, beta, rounds=rounds, steps=steps, target=target,
                           y_star=y_star, delta=delta, decoder=VAEDecoder(parts.vae), reduction=reduction,
                           generator=generator, z_T=z_T, keep_rounds=keep_rounds)
