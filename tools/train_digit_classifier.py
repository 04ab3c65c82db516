"""Rebuild the shipped digit classifier: ``python tools/train_digit_classifier.py``.

Trains :class:`~ray_bilevel.models.digit_classifier.DigitClassifier` on the mnist5k TRAIN split
only (``split_seed=0``, ``heldout_fraction=0.2``: 4,000 images), so the held-out 1,000 images
stay unseen by the feature network that scores them. Augmentation (all from one seeded
``torch.Generator``):

* a random affine map: rotation ±12°, scale 0.85–1.15, shift ±2 px (background stays -1);
* with probability 0.5, down-sampling to a random 12–20 px and back to 28 px (bilinear,
  antialiased), so that 16×16 generated digits, which the classifier up-samples, are in
  distribution;
* with probability 0.3, Gaussian pixel noise of standard deviation up to 0.1.

No label smoothing: calibrated, confident p(y|x) keeps the classifier IS of real digits near 10
and the class-alignment score near 1. A few minutes on 1–2 CPU threads. Writes ``digit_classifier.safetensors`` and
``digit_classifier.json`` (seed, epochs, held-out accuracy at 28×28 and at 16×16, date).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ray_bilevel.data import load_images
from ray_bilevel.models.digit_classifier import RECORD_PATH, WEIGHTS_PATH, DigitClassifier

__all__ = ["augment", "train", "accuracy", "main"]


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random affine + random down/up-sampling + noise on (N, 1, 28, 28) images in [-1, 1]."""
    n = x.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    angle = (u(n) * 2 - 1) * math.radians(12)
    scale = 0.85 + 0.3 * u(n)
    shift = (u(n, 2) * 2 - 1) * (2.0 / 14.0)  # ±2 px in normalised coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
    low = u(n) < 0.5
    if low.any():
        sizes = torch.randint(12, 21, (n,), generator=gen)
        for s in sizes[low].unique().tolist():
            idx = low & (sizes == s)
            small = F.interpolate(x[idx], size=(s, s), mode="bilinear", antialias=True, align_corners=False)
            x[idx] = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    noisy = (u(n) < 0.3).float().view(n, 1, 1, 1) * 0.1 * u(n, 1, 1, 1)
    x = x + noisy * torch.randn(x.shape, generator=gen)
    return x.clamp(-1.0, 1.0)


@torch.no_grad()
def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on (images, labels)."""
    model.eval()
    correct = sum(
        int((model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
        for i in range(0, len(images), batch)
    )
    return correct / len(images)


def train(
    seed: int = 0,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 3e-3,
    label_smoothing: float = 0.0,
    log: bool = True,
) -> tuple[DigitClassifier, dict]:
    """Train on the mnist5k train split; return the model and its record (held-out accuracies)."""
    start = time.time()
    tr = load_images("mnist5k", split="train", heldout_fraction=0.2, split_seed=0)
    ho28 = load_images("mnist5k", split="heldout", heldout_fraction=0.2, split_seed=0)
    ho16 = load_images("mnist5k", split="heldout", heldout_fraction=0.2, split_seed=0, image_size=16)
    assert tr.labels is not None and ho28.labels is not None and ho16.labels is not None  # mnist5k is labelled
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # parameter initialisation only
        model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(tr) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(tr), generator=gen)
        total = 0.0
        for i in range(0, len(tr), batch_size):
            idx = perm[i : i + batch_size]
            x = augment(tr.images[idx].clone(), gen)
            with torch.random.fork_rng():
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))  # dropout mask
                loss = F.cross_entropy(model(x), tr.labels[idx], label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log and (epoch % 5 == 4 or epoch == epochs - 1):
            print(f"epoch {epoch + 1}/{epochs}  loss {total / len(tr):.4f}  held-out acc28 "
                  f"{accuracy(model, ho28.images, ho28.labels):.4f}  acc16 "
                  f"{accuracy(model, ho16.images, ho16.labels):.4f}  "
                  f"{time.time() - start:.0f}s", flush=True)
    model.eval()
    record = {
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "label_smoothing": label_smoothing,
        "train_data": "mnist5k split=train heldout_fraction=0.2 split_seed=0 (4000 images)",
        "heldout_accuracy_28": accuracy(model, ho28.images, ho28.labels),
        "heldout_accuracy_16": accuracy(model, ho16.images, ho16.labels),
        "heldout_images": len(ho28),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(time.time() - start, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }
    return model, record


def main(argv: list[str] | None = None) -> dict:
    """CLI: train and write the safetensors weights and the JSON record."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="weights path (.safetensors); the JSON goes beside "
                                                                  "it")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from safetensors.torch import save_file

    model, record = train(seed=args.seed, epochs=args.epochs)
    out = Path(args.out)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out), metadata={"seed": str(args.seed), "epochs": str(args.epochs)})
    json_path = RECORD_PATH if out == WEIGHTS_PATH else out.with_suffix(".json")
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
