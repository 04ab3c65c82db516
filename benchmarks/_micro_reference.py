"""Reference copies of the package's hot paths as they were before the optimisation pass measured by
``benchmarks/micro.py`` (argument validation trimmed): the "old" side of its A/B comparisons."""
from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ==========================================================================================
# Old implementations: verbatim copies of the package code before the optimisation pass.
# ==========================================================================================

def _old_eps(model: nn.Module, x: Tensor, t: Tensor, class_labels: Tensor | None) -> Tensor:
    out = model(x, t, class_labels=class_labels) if class_labels is not None else model(x, t)
    return out.sample if hasattr(out, "sample") else out


def _old_score_matching_loss(model, x0, alphas_cumprod, *, t=None, noise=None, generator=None, class_labels=None):
    T = alphas_cumprod.shape[0]
    n = x0.shape[0]
    if t is None:
        t = torch.randint(0, T, (n,), generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    abar = alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(n, *([1] * (x0.dim() - 1)))
    x_t = abar.sqrt() * x0 + (1.0 - abar).clamp_min(1e-20).sqrt() * noise
    return (noise - _old_eps(model, x_t, t, class_labels)).pow(2).mean()


def _old_ddim_timesteps(T: int, steps: int, spacing: str = "linspace") -> Tensor:
    if spacing == "linspace":
        ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round()
    elif spacing == "trailing":
        ts = (torch.arange(T, 0, -T / steps, dtype=torch.float64).round() - 1)[:steps].flip(0)
    elif spacing == "leading":
        ts = torch.arange(steps, dtype=torch.float64) * (T // steps)
    else:
        raise ValueError(spacing)
    return ts.long().flip(0)


def _old_ddim_sample(model, alphas_cumprod, x_T, steps, *, class_labels=None, clip=True, clip_x0=True,
                     spacing="linspace", batch_size=None, grad=False):
    if batch_size is not None and batch_size < x_T.shape[0]:
        kw: dict[str, Any] = dict(clip=clip, clip_x0=clip_x0, spacing=spacing, grad=grad)
        chunks = []
        for i in range(0, x_T.shape[0], batch_size):
            labels = None if class_labels is None else class_labels[i : i + batch_size]
            chunks.append(
                _old_ddim_sample(model, alphas_cumprod, x_T[i : i + batch_size], steps, class_labels=labels, **kw)
            )
        return torch.cat(chunks)
    T = alphas_cumprod.shape[0]
    ts = _old_ddim_timesteps(T, steps, spacing)
    abar = alphas_cumprod.to(x_T.device)
    with torch.set_grad_enabled(grad):
        x = x_T
        for k, t in enumerate(ts.tolist()):
            a_t = abar[t].to(x.dtype)
            a_prev = abar[ts[k + 1]].to(x.dtype) if k + 1 < len(ts) else torch.ones((), dtype=x.dtype, device=x.device)
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            eps = _old_eps(model, x, t_batch, class_labels)
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            if clip_x0:
                x0 = x0.clamp(-1.0, 1.0)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x.clamp(-1.0, 1.0) if clip else x


def _old_check_images(images: Tensor, who: str) -> Tensor:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{who}: bad shape {tuple(images.shape)}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.001 or hi > 1.001:
        warnings.warn(f"{who}: images span [{lo:.3g}, {hi:.3g}], outside [-1, 1]; clamping them.", stacklevel=3)
    return images.clamp(-1.0, 1.0)


@torch.no_grad()
def _old_digit_call(ext, images: Tensor) -> Tensor:  # DigitExtractor.__call__
    images = _old_check_images(images, "digit_extractor")
    device = next(ext.model.parameters()).device
    return torch.cat(
        [
            ext.model.features(images[i : i + ext.batch_size].to(device)).float().cpu()
            for i in range(0, len(images), ext.batch_size)
        ]
    )


@torch.no_grad()
def _old_inception_call(ext, images: Tensor) -> Tensor:  # InceptionExtractor.__call__
    images = _old_check_images(images, "inception_extractor")
    device = next(ext.model.parameters()).device
    out = []
    for i in range(0, len(images), ext.batch_size):
        x = (images[i : i + ext.batch_size].to(device, torch.float32) + 1.0) / 2.0
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if ext.backend == "pytorch_fid":
            feats = ext.model(x)[0]
        else:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2.0 - 1.0
            feats = ext.model(x)
        out.append(feats.reshape(feats.shape[0], -1).float().cpu())
    return torch.cat(out)


def _old_feature_stats(features: Tensor, shrinkage=0.0):
    from ray_bilevel.metrics.fid import FeatureStats, ledoit_wolf_shrinkage

    x = features.detach().to(torch.float64).cpu()
    if not torch.isfinite(x).all():
        raise ValueError("non-finite features")
    n, d = x.shape
    rho = ledoit_wolf_shrinkage(x) if shrinkage == "ledoit_wolf" else float(shrinkage)
    mu = x.mean(0)
    xc = x - mu
    sigma = xc.T @ xc / (n - 1)
    if rho > 0.0:
        sigma = (1.0 - rho) * sigma + rho * (torch.trace(sigma) / d) * torch.eye(d, dtype=torch.float64)
    return FeatureStats(mu=mu, sigma=sigma, n=n, shrinkage=rho)


def _old_frechet(a, b, root_a: Tensor) -> float:
    mu_a, mu_b = a.mu.to(torch.float64), b.mu.to(torch.float64)
    s_a, s_b = a.sigma.to(torch.float64), b.sigma.to(torch.float64)
    m = root_a @ s_b @ root_a
    trace_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0.0).sqrt().sum()
    diff = mu_a - mu_b
    value = diff @ diff + torch.trace(s_a) + torch.trace(s_b) - 2.0 * trace_sqrt
    return float(value)


def _old_fid_call(ev, fake_images: Tensor) -> float:  # FIDEvaluator.__call__ (+ features, stats)
    n, dim = int(fake_images.shape[0]), int(ev.extractor.dim)
    if n < dim + 1 and ev.shrinkage == 0.0:
        warnings.warn(f"FID with {n} fake images for {dim}-d features: the covariance is rank-deficient", stacklevel=2)
    with torch.no_grad():
        feats = torch.cat(
            [ev.extractor(fake_images[i : i + ev.batch_size]) for i in range(0, len(fake_images), ev.batch_size)]
        )
    return _old_frechet(ev.real, _old_feature_stats(feats, ev.shrinkage), ev._real_root)


