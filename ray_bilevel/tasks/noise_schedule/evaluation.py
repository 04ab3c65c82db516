"""The noise-schedule task's data and upper-level metrics (docs/algorithms.md §4)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ray_bilevel.config import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ray_bilevel.tasks.noise_schedule.settings import NoiseScheduleSettings

__all__ = ["UpperMetrics", "abar_report"]


class UpperMetrics:
    """Training images, and the upper-level metrics against the held-out real images.

    * ``fid_domain`` — Fréchet distance on the digit classifier's 64-d features (docs/algorithms.md §4);
      the real statistics are computed once and cached by :class:`~ray_bilevel.metrics.fid.FIDEvaluator`.
    * ``final`` — Inception FID (pool3, 2048-d) against ``final_real`` held-out images and the
      classifier Inception Score, with the numbers of samples recorded in the report.
    """

    def __init__(self, cfg: "NoiseScheduleSettings", device: torch.device) -> None:
        from ray_bilevel.data import load_images
        from ray_bilevel.metrics.features import digit_extractor
        from ray_bilevel.metrics.fid import FIDEvaluator

        kw = dict(image_size=cfg.image_size, heldout_fraction=cfg.heldout_fraction, split_seed=cfg.split_seed,
                  root=cfg.data_root, download=cfg.download)
        if cfg.dataset == "mnist" and cfg.data_root is None and not cfg.download:
            raise ConfigError("dataset 'mnist' (full MNIST) needs data_root=<folder with MNIST/raw> or download=True; "
                              "offline, use dataset='mnist5k'.")
        train = load_images(cfg.dataset, split="train", **kw)
        self.heldout = load_images(cfg.dataset, split="heldout", **kw)
        if train.images.shape[0] < cfg.batch_size:
            raise ConfigError(f"the training split has {train.images.shape[0]} images, fewer than batch_size={cfg.batch_size}.")
        self.train_images = train.images
        self.cfg, self.device = cfg, device
        self.domain = FIDEvaluator(digit_extractor(device=device), self.heldout.images, cache_key=self.heldout.name,
                                   shrinkage=cfg.fid_shrinkage)
        self._inception = None

    def fid_domain(self, images: torch.Tensor) -> float:
        return float(self.domain(images))

    def final(self, images: torch.Tensor) -> dict[str, float]:
        """Inception ``fid`` and classifier ``is`` of ``images``, with the protocol recorded."""
        from ray_bilevel.metrics.features import inception_extractor
        from ray_bilevel.metrics.fid import FIDEvaluator
        from ray_bilevel.metrics.inception_score import classifier_inception_score

        cfg = self.cfg
        if self._inception is None:
            real = self.heldout.images[: cfg.final_real]
            self._inception = FIDEvaluator(inception_extractor(device=self.device), real,
                                           cache_key=f"{self.heldout.name}[:{len(real)}]",
                                           shrinkage=cfg.fid_shrinkage)
        score, _ = classifier_inception_score(images)
        return {"fid": float(self._inception(images)), "is": float(score), "fid_samples": float(len(images)),
                "fid_real": float(min(cfg.final_real, len(self.heldout.images)))}


def abar_report(alphas: torch.Tensor) -> dict[str, float]:
    """``abar_t{t}`` at t = T/10, T/4, T/2, 3T/4, 9T/10 (the learned schedule in a few numbers)."""
    T = alphas.shape[0]
    points = sorted({max(0, min(T - 1, int(round(T * f)))) for f in (0.1, 0.25, 0.5, 0.75, 0.9)})
    return {f"abar_t{t}": float(alphas[t]) for t in points}

