"""The noise-schedule task's data and upper-level metrics (docs/algorithms.md §4)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.data import load_images
from ray_bilevel.metrics.features import digit_extractor, inception_extractor
from ray_bilevel.metrics.fid import FIDEvaluator
from ray_bilevel.metrics.inception_score import classifier_inception_score

if TYPE_CHECKING:  # pragma: no cover
    from ray_bilevel.tasks.noise_schedule.settings import NoiseScheduleSettings

__all__ = ["UpperMetrics", "abar_report"]


class UpperMetrics:
    """Training images, and the upper-level metrics against held-out real images on two disjoint splits.

    * ``"val"`` — what tuning reads: the ZO probes, the in-loop reports, every searcher's selection.
    * ``"test"`` — reporting only: loaded lazily, on the first :meth:`fid_domain` / :meth:`final` call that
      names it, which no tuning code path makes (tests/test_splits.py enforces it).

    * :meth:`fid_domain` — Fréchet distance on the digit classifier's 64-d features (docs/algorithms.md §4);
      the real statistics are computed once per split and cached by :class:`~ray_bilevel.metrics.fid.FIDEvaluator`.
    * :meth:`final` — Inception FID (pool3, 2048-d) against at most ``final_real`` real images of the split and
      the classifier Inception Score, with the numbers of samples recorded in the report.
    """

    def __init__(self, cfg: NoiseScheduleSettings, device: torch.device) -> None:
        self._kw: dict[str, Any] = dict(
            image_size=cfg.image_size,
            heldout_fraction=cfg.heldout_fraction,
            split_seed=cfg.split_seed,
            root=cfg.data_root,
            download=cfg.download,
        )
        if cfg.dataset == "mnist" and cfg.data_root is None and not cfg.download:
            raise ConfigError("dataset 'mnist' (full MNIST) needs data_root=<folder with MNIST/raw> or download=True; "
                              "offline, use dataset='mnist5k'.")
        train = load_images(cfg.dataset, split="train", **self._kw)
        if train.images.shape[0] < cfg.batch_size:
            raise ConfigError(f"the training split has {train.images.shape[0]} images, fewer than "
                              f"batch_size={cfg.batch_size}.")
        self.train_images = train.images
        self.cfg, self.device = cfg, device
        self._real: dict[str, Any] = {}
        self._domain: dict[str, Any] = {}
        self._inception: dict[str, Any] = {}

    def real(self, split: str) -> Any:
        """The held-out real images of ``split`` (``"val"`` or ``"test"``), loaded on first use."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}.")
        if split not in self._real:
            self._real[split] = load_images(self.cfg.dataset, split=split, **self._kw)
        return self._real[split]

    def domain_evaluator(self, split: str = "val") -> Any:
        """The :class:`~ray_bilevel.metrics.fid.FIDEvaluator` of ``fid_domain`` on ``split`` (digit features), built
        on first use and shared (the surrogate of the penalty network reads the validation one's real statistics)."""
        if split not in self._domain:
            real = self.real(split)
            self._domain[split] = FIDEvaluator(digit_extractor(device=self.device), real.images, cache_key=real.name,
                                               shrinkage=self.cfg.fid_shrinkage)
        return self._domain[split]

    def fid_domain(self, images: torch.Tensor, split: str = "val") -> float:
        """Fréchet distance of ``images``' digit features to the real images of ``split``."""
        return float(self.domain_evaluator(split)(images))

    def final(self, images: torch.Tensor, split: str) -> dict[str, float]:
        """Inception ``fid`` and classifier ``is`` of ``images`` against ``split``, with the protocol recorded."""
        cfg, real = self.cfg, self.real(split)
        if split not in self._inception:
            ref = real.images[: cfg.final_real]
            self._inception[split] = FIDEvaluator(inception_extractor(device=self.device), ref,
                                                  cache_key=f"{real.name}[:{len(ref)}]", shrinkage=cfg.fid_shrinkage)
        score, _ = classifier_inception_score(images)
        return {"fid": float(self._inception[split](images)), "is": float(score), "fid_samples": float(len(images)),
                "fid_real": float(min(cfg.final_real, len(real.images)))}


def abar_report(alphas: torch.Tensor) -> dict[str, float]:
    """``abar_t{t}`` at t = T/10, T/4, T/2, 3T/4, 9T/10 (the learned schedule in a few numbers)."""
    T = alphas.shape[0]
    points = sorted({max(0, min(T - 1, int(round(T * f)))) for f in (0.1, 0.25, 0.5, 0.75, 0.9)})
    return {f"abar_t{t}": float(alphas[t]) for t in points}

