"""A small digit CNN (ours) and the loader of its shipped weights.

Uses: the domain-FID feature network (64-d penultimate features, docs/algorithms.md §4),
the "classifier Inception Score" (``metrics/inception_score.py``), the offline class-alignment
score and the reward of Application 1 (docs/algorithms.md §2.5).

Input: images in [-1, 1], shape (N, 1, H, W) of any size (3-channel input is turned grey with
ITU-R 601 luma). Inside, images are resized to 28×28 with bilinear interpolation (antialiased
when shrinking), so 16×16 samples of the noise-schedule task are scored directly; the training
augmentation (``tools/train_digit_classifier.py``) down-samples to 12–20 px and back for exactly
this reason.

Architecture: three 3×3 conv blocks (32, 64, 64 channels, ReLU, 2×2 max-pool) → 576 →
fc 64 (the penultimate layer; :meth:`DigitClassifier.features`) → ReLU → fc 10. About 93 k parameters (0.37 MB in
float32).

The weights live in ``ray_bilevel/assets/digit_classifier.safetensors`` with their training
record in ``digit_classifier.json``; rebuild them with
``python tools/train_digit_classifier.py``.
"""
from __future__ import annotations

import functools
import json

import torch
import torch.nn.functional as F
from torch import nn

from ray_bilevel.paths import ASSETS_DIR

__all__ = ["DigitClassifier", "load_digit_classifier", "WEIGHTS_PATH", "RECORD_PATH", "FEATURE_DIM"]

WEIGHTS_PATH = ASSETS_DIR / "digit_classifier.safetensors"
RECORD_PATH = ASSETS_DIR / "digit_classifier.json"
FEATURE_DIM = 64
INPUT_SIZE = 28


class DigitClassifier(nn.Module):
    """Conv(32)-Conv(64)-Conv(64) → fc 64 → fc 10; any input size, resized to 28×28 inside."""

    def __init__(self, num_classes: int = 10, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 3 * 3, feature_dim)
        self.fc2 = nn.Linear(feature_dim, num_classes)
        self.dropout = nn.Dropout(0.3)

    @staticmethod
    def prepare(x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] with C in {1, 3} → (N, 1, 28, 28)."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError("DigitClassifier expects (N, 1 or 3, H, W) images in [-1, 1], got shape "
                             f"{tuple(x.shape)}.")
        if x.shape[1] == 3:
            w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * w).sum(dim=1, keepdim=True)
        if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            shrink = x.shape[-1] > INPUT_SIZE or x.shape[-2] > INPUT_SIZE
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=shrink)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 64-d penultimate features, shape (N, 64): fc1's output *before* its ReLU.

        Pre-activation on purpose: after the ReLU about 40 % of the units are zero on every
        digit (rank-deficient covariance), while the pre-activations have a full-rank covariance
        and make the Fréchet distance 2–3× more sensitive to blur, noise and shifts.
        """
        x = self.prepare(x)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 14
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 7
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # 3
        return self.fc1(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (N, 10)."""
        return self.fc2(self.dropout(F.relu(self.features(x))))


@functools.lru_cache(maxsize=4)
def _load_cached(device: str) -> DigitClassifier:
    from safetensors.torch import load_file

    if not WEIGHTS_PATH.is_file():
        raise FileNotFoundError(
            f"shipped digit classifier weights missing at {WEIGHTS_PATH}; rebuild them with "
            "`python tools/train_digit_classifier.py`."
        )
    model = DigitClassifier()
    model.load_state_dict(load_file(str(WEIGHTS_PATH), device="cpu"))
    model.eval().requires_grad_(False)
    from ray_bilevel.cost import watch

    return watch(model.to(device), "digit_classifier")  # counted towards cost_flops (ray_bilevel.cost)


def load_digit_classifier(device: str | torch.device = "cpu") -> DigitClassifier:
    """The shipped classifier in eval mode, parameters frozen, cached per process and device.

    The instance is shared: do not train it or switch it to train mode. Gradients with respect
    to the *input* still flow (reward guidance needs them).
    """
    return _load_cached(str(torch.device(device)))


def training_record() -> dict:
    """The JSON record written next to the weights (seed, epochs, held-out accuracies, date)."""
    return json.loads(RECORD_PATH.read_text())
