"""Stable Diffusion path of Algorithm 5 on tiny random-weight parts, offline (docs/algorithms.md §2.3)."""
from __future__ import annotations

import pytest
import torch

from ray_bilevel.metrics.rewards import InkReward, ResNetReward
from ray_bilevel.sd import SDParts, encode_prompt, load_sd, sd_guided_generate

from _tiny_hf import tiny_sd_parts


@pytest.fixture(scope="module")
def saved_sd(tmp_path_factory):
    """A tiny StableDiffusionPipeline saved to disk, loaded back through ``load_sd`` (offline)."""
    from diffusers import StableDiffusionPipeline

    unet, vae, text, tok, sched = tiny_sd_parts()
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tok, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, image_encoder=None,
                                   requires_safety_checker=False)
    path = tmp_path_factory.mktemp("tiny_sd")
    pipe.save_pretrained(path)
    return path, pipe


def test_load_sd_from_folder_and_missing_weights_error(saved_sd):
    path, _ = saved_sd
    parts = load_sd(path)
    assert isinstance(parts, SDParts) and parts.vae_scale == 2
    assert not any(p.requires_grad for p in parts.unet.parameters())
    assert type(load_sd(path, scheduler="default").scheduler).__name__ == "DDIMScheduler"
    with pytest.raises(FileNotFoundError, match="allow_download=True"):
        load_sd("runwayml/stable-diffusion-v1-5")


def test_unguided_round_equals_stable_diffusion_pipeline(saved_sd):
    """Round 0 (no guidance) with CFG 7.5 reproduces diffusers' own pipeline from the same latents."""
    path, pipe = saved_sd
    parts = load_sd(path)
    res = sd_guided_generate(parts, "a horse", InkReward(), beta=0.0, batch_size=2, rounds=1, steps=3,
                             cfg_scale=7.5, height=32, width=32, generator=torch.Generator().manual_seed(5))
    z_T = torch.randn((2, 4, 16, 16), generator=torch.Generator().manual_seed(5))
    ref = pipe("a horse", num_inference_steps=3, guidance_scale=7.5, height=32, width=32, latents=z_T.clone(),
               output_type="pt", num_images_per_prompt=2).images
    assert torch.allclose((res.images + 1) / 2, ref, atol=1e-4)


def test_guided_sd_raises_the_reward_and_runs_with_resnet_reward(saved_sd):
    path, _ = saved_sd
    parts = load_sd(path)
    runs = {beta: sd_guided_generate(parts, "a fox", InkReward(), beta=beta, batch_size=2, rounds=2, steps=3,
                                     height=32, width=32, target="increment", delta=5.0,
                                     generator=torch.Generator().manual_seed(0))
            for beta in (0.0, 3e3)}
    assert runs[3e3].rewards.mean() > runs[0.0].rewards.mean() + 0.5
    res = sd_guided_generate(parts, "a fox", ResNetReward(size=32), beta=1.0, batch_size=1, rounds=2, steps=2,
                             height=32, width=32, generator=torch.Generator().manual_seed(0), keep_rounds=True)
    assert res.images.shape == (1, 3, 32, 32) and torch.isfinite(res.rewards).all()
    assert len(res.round_images) == 2
    assert encode_prompt(parts, "a fox").shape == (1, 77, 32)
