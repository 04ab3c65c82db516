"""The shipped digit classifier: loads offline, classifies unseen digits at 28 and 16 px."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ray_bilevel.data import load_images  # noqa: E402
from ray_bilevel.models.digit_classifier import (  # noqa: E402
    RECORD_PATH,
    WEIGHTS_PATH,
    DigitClassifier,
    load_digit_classifier,
    training_record,
)


def test_weights_are_shipped_small_and_recorded():
    assert WEIGHTS_PATH.is_file() and WEIGHTS_PATH.stat().st_size < 1_000_000
    rec = training_record()
    assert RECORD_PATH.is_file() and rec["heldout_accuracy_28"] >= 0.95 and rec["heldout_accuracy_16"] >= 0.95
    assert {"seed", "epochs", "date"} <= rec.keys()


@pytest.mark.parametrize("size", [28, 16])
def test_heldout_accuracy(size):
    """Unseen digits (the held-out split the classifier never trained on), 400 of them."""
    ho = load_images("mnist5k", split="heldout", heldout_fraction=0.2, split_seed=0, image_size=size)
    model = load_digit_classifier()
    with torch.no_grad():
        pred = model(ho.images[:400]).argmax(1)
    assert float((pred == ho.labels[:400]).float().mean()) >= 0.90


def test_interface_any_size_features_and_cache():
    model = load_digit_classifier()
    assert load_digit_classifier() is model and not model.training
    assert all(not p.requires_grad for p in model.parameters())
    x = load_images("mnist5k", split="heldout", image_size=20).images[:8]
    assert model(x).shape == (8, 10) and model.features(x).shape == (8, 64)
    # RGB input is scored as its grey version; input gradients still flow (reward guidance)
    assert torch.allclose(model(x.repeat(1, 3, 1, 1)), model(x), atol=1e-5)
    xg = x.clone().requires_grad_(True)
    torch.log_softmax(model(xg), 1)[:, 3].sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="expects"):
        model(torch.zeros(2, 2, 8, 8))
    assert sum(p.numel() for p in DigitClassifier().parameters()) == training_record()["parameters"]
