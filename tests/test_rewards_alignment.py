"""Rewards r2 and alignment r1 of Application 1 (docs/algorithms.md §2.5): conversions, scorers, prompt parsing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.metrics.alignment import ClassAlignment, CLIPScore, clip_preprocess, prompt_to_class
from ray_bilevel.metrics.rewards import (
    CLIP_MEAN,
    CLIP_STD,
    InkReward,
    ResNetReward,
    check_range,
    ink_preprocess,
    resnet_preprocess,
)


def test_check_range_rejects_uint8_and_unit_images():
    check_range(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ConfigError, match="127.5"):
        check_range(torch.full((1, 3, 4, 4), 255.0))
    with pytest.raises(ConfigError, match=r"\(B, C, H, W\)"):
        check_range(torch.zeros(4, 4))


def test_ink_reward_values_and_gradient():
    x = torch.full((2, 1, 4, 4), -1.0)
    x[1] = 1.0
    assert torch.allclose(InkReward()(x), torch.tensor([0.0, 100.0]))
    rgb = torch.zeros(1, 3, 2, 2)
    rgb[:, 0] = 1.0  # pure red: luma 0.299 in [-1, 1] units → ink (0.299·1 + 0 + 0 + 1)/2
    assert torch.allclose(ink_preprocess(rgb), torch.full((1, 1, 2, 2), (0.299 + 1) / 2))
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)
    InkReward(scale=100.0)(x).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 100.0 / 16 / 2))


def test_resnet_preprocess_matches_torchvision_pipeline():
    from torchvision import transforms

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 40, 40, generator=gen) * 2 - 1
    ref = transforms.Compose([transforms.Resize(32, antialias=True), transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    assert torch.allclose(resnet_preprocess(x, size=32), ref((x + 1) / 2), atol=1e-5)
    grey = torch.full((1, 1, 8, 8), 0.5)
    out = resnet_preprocess(grey, size=8)
    expect = (0.75 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out[0, :, 0, 0], expect, atol=1e-6)


def test_resnet_reward_random_is_labelled_seeded_and_leaves_global_rng(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # an empty cache: no ImageNet weights
    state = torch.get_rng_state()
    r0, r0b, r1 = ResNetReward(seed=0, size=32), ResNetReward(seed=0, size=32), ResNetReward(seed=1, size=32)
    assert torch.equal(state, torch.get_rng_state())
    assert r0.weights == "random"
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    v = r0(x)
    assert v.shape == (3,) and torch.equal(v, r0b(x)) and not torch.allclose(v, r1(x))
    x.requires_grad_(True)
    r0(x).sum().backward()
    assert x.grad.abs().sum() > 0
    # a backbone file is loaded (fc excluded: the random head stays) and labelled
    path = tmp_path / "backbone.pth"
    torch.save(r1.net.state_dict(), path)
    loaded = ResNetReward(weights_path=path, seed=0, size=32)
    assert loaded.weights == "file"
    assert torch.equal(loaded.net.conv1.weight, r1.net.conv1.weight)
    assert torch.equal(loaded.net.fc.weight, r0.net.fc.weight)
    # the hub-cache file name is recognised as ImageNet weights
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(r1.net.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    assert ResNetReward(size=32).weights == "imagenet"


@pytest.mark.parametrize("prompt,digit", [
    ("a handwritten 7", 7), ("a handwritten seven", 7), ("Seven", 7), ("digit 0", 0), ("a scribbled zero", 0),
    ("the number 3 written by hand", 3), ("handwritten eight.", 8), ("someone wrote a 1", 1), (5, 5),
])
def test_prompt_to_class(prompt, digit):
    assert prompt_to_class(prompt) == digit


@pytest.mark.parametrize("prompt,match", [("a cat", "names no digit"), ("a 3 and a five", "several"),
                                          ("12 apples", "names no digit"), (11, "not a digit")])
def test_prompt_to_class_errors(prompt, match):
    with pytest.raises(ConfigError, match=match):
        prompt_to_class(prompt)


def test_class_alignment_on_real_digits():
    from ray_bilevel.data import load_images

    data = load_images("mnist5k", image_size=16, split="heldout")
    align = ClassAlignment()
    sevens = data.images[data.labels == 7][:50]
    others = data.images[data.labels != 7][:200]
    assert align(sevens, "a handwritten seven").mean() > 0.9
    assert align(others, "a handwritten 7").mean() < 0.1
    logp = ClassAlignment(log=True)(sevens[:5], 7)
    assert torch.allclose(logp.exp(), align(sevens[:5], 7), atol=1e-6)
    x = sevens[:2].clone().requires_grad_(True)
    align(x, 7).sum().backward()
    assert x.grad.abs().sum() > 0


def test_clip_preprocess_matches_clip_image_processor():
    from transformers import CLIPImageProcessor

    u = np.random.default_rng(0).integers(0, 256, size=(2, 24, 24, 3), dtype=np.uint8)
    proc = CLIPImageProcessor(
        do_resize=False, do_center_crop=False, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)
    )
    ref = proc(images=list(u), return_tensors="pt")["pixel_values"]
    x = torch.from_numpy(u).permute(0, 3, 1, 2).float() / 127.5 - 1  # uint8 → [-1, 1]
    assert torch.allclose(clip_preprocess(x, size=24), ref, atol=1e-5)
    with pytest.raises(ConfigError, match="must lie in"):
        clip_preprocess(x * 127.5, size=24)


def test_clip_score_with_tiny_random_model(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    from _tiny_hf import byte_tokenizer

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
    CLIPModel(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    scorer = CLIPScore.from_pretrained(tmp_path)  # local folder: works offline
    x = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(2)) * 2 - 1
    s = scorer(x, "a photo of a horse")
    # ground truth from the raw model: 100 · max(cos, 0)
    ids = tok(["a photo of a horse"], return_tensors="pt")
    with torch.no_grad():
        out = scorer.model(input_ids=ids["input_ids"], pixel_values=clip_preprocess(x, 32))
    cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
    assert torch.allclose(s, 100 * cos.clamp(min=0), atol=1e-4)
    assert s.shape == (3,) and bool(((s >= 0) & (s <= 100)).all())
    xg = x.clone().requires_grad_(True)
    scorer(xg, "a photo of a horse").sum().backward()
    assert torch.isfinite(xg.grad).all()


def test_clip_score_without_local_weights_names_the_fix():
    with pytest.raises(FileNotFoundError, match="allow_download=True"):
        CLIPScore.from_pretrained("openai/clip-vit-base-patch16")
