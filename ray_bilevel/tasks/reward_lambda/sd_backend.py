"""``model="sd"``: Stable Diffusion (``cfg.sd_model``) behind the reward-λ tasks, and what a Stable Diffusion
folder given as ``model="diffusers"`` runs (:mod:`.diffusers_backend`). This module never imports ray."""
from __future__ import annotations

from typing import Any

from ray_bilevel.config import ConfigError
from ray_bilevel.guidance import EpsilonModel
from ray_bilevel.tasks.reward_lambda.backend_base import _Backend, _clip_r1, make_r2, resolve_device

__all__ = ["SDBackend"]


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
