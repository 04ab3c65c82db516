"""The reward-λ task on the Stable Diffusion backend, end to end on tiny random-weight parts (offline)."""
from __future__ import annotations

import math

import pytest
import torch

from ray_bilevel.tasks.reward_lambda import RewardLambdaTask, WeightedSumTask

from _tiny_hf import byte_tokenizer, tiny_sd_parts


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPConfig, CLIPModel

    unet, vae, text, tok, sched = tiny_sd_parts()
    sd = tmp_path_factory.mktemp("sd")
    StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    ).save_pretrained(sd)
    clip_dir = tmp_path_factory.mktemp("clip")
    tok = byte_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(clip_dir)
    tok.save_pretrained(clip_dir)
    return str(sd), str(clip_dir)


def _config(folders, **extra):
    sd, clip = folders
    return {"preset": "smoke", "model": "sd", "sd_model": sd, "clip_model": clip, "alignment": "clip",
            "prompt": "A fox", "height": 32, "width": 32, "cfg_scale": 7.5, "steps": 3, "guide_batch": 2,
            "pool_size": 6, "ref_samples": 6, "final_inception": False, "beta0": 1.0, "y_star": 10.0,
            "ink_target": 18.0, **extra}  # Stable Diffusion has no calibration file: the stroke target is explicit


def test_bilevel_and_fixed_trials_on_tiny_stable_diffusion(folders):
    task = RewardLambdaTask(_config(folders))
    report = task.hyper_step()
    assert math.isfinite(report["hypergrad"]) and task.lam >= task.cfg.lam_min
    final = task.evaluate(final=True)
    assert final["guided_images"] == 2 and 0 <= final["alignment_val"] <= 100 and math.isfinite(final["reward_val"])
    assert task._guided_images().shape == (2, 3, 32, 32)
    ws = WeightedSumTask(_config(folders, w=0.5))
    for _ in range(ws.lower_budget):
        ws.lower_step()
    assert math.isfinite(ws.evaluate()["alignment_val"])


def test_a_stable_diffusion_folder_as_model_diffusers_with_a_user_upper_score(folders):
    """``model="diffusers"`` on a Stable Diffusion folder: the SD backend; a user's upper score needs no CLIP."""
    sd, _ = folders

    def spread(images, prompts):  # no gradient needed for the upper score
        return torch.as_tensor([float(x.std()) for x in images.detach()])

    task = RewardLambdaTask({"preset": "smoke", "model": "diffusers", "model_path": sd, "prompt": "A fox",
                             "upper": spread, "height": 32, "width": 32, "steps": 3, "guide_batch": 2, "pool_size": 6,
                             "ref_samples": 6, "final_inception": False, "beta0": 1.0, "y_star": 10.0})
    assert type(task.backend).__name__ == "SDBackend" and task.backend.image_shape == (3, 32, 32)
    assert math.isfinite(task.hyper_step()["hypergrad"])
    assert task.backend.user_score_info()["upper"]["differentiable"] is False
