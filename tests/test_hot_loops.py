"""The optimised hot loops compute what the code before them computed (studies/micro.py measures the speed).

* ``ddim_sample`` runs the network in CPU chunks of ``_CPU_CHUNK`` samples: same images as one batch;
* ``DigitExtractor`` pools in channels-last and ReLUs after the pool: bitwise ``DigitClassifier.features``;
* ``InceptionExtractor`` (TorchScript backend, CPU) runs a frozen, BN-folded oneDNN copy: same features
  within 1e-5 of max |feature| (measured 2.5e-6), and the extractor's weight fingerprint is unchanged;
* ``FIDEvaluator.__call__`` with fewer fakes than dimensions uses an N×N eigenproblem: same FID within
  round-off (and closer to the exact value than the d×d form).
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ray_bilevel import diffusion  # noqa: E402
from ray_bilevel.diffusion import build_unet, ddim_sample, ddim_timesteps  # noqa: E402
from ray_bilevel.metrics import features as feat, inception  # noqa: E402
from ray_bilevel.metrics.fid import FIDEvaluator, _frechet, feature_stats  # noqa: E402
from ray_bilevel.schedules import NoiseSchedule  # noqa: E402


@pytest.fixture
def one_thread():
    """One torch thread, as in a Ray worker with num_cpus=1 (and no oversubscription on a shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _old_ddim(model, alphas, x_T, steps):
    """ddim_sample before the CPU chunking (one batch, clip_x0 and clip on, linspace)."""
    ts = ddim_timesteps(alphas.shape[0], steps)
    abar = alphas
    with torch.no_grad():
        x = x_T
        for k, t in enumerate(ts.tolist()):
            a_t = abar[t].to(x.dtype)
            a_prev = abar[ts[k + 1]].to(x.dtype) if k + 1 < len(ts) else torch.ones((), dtype=x.dtype)
            eps = model(x, torch.full((x.shape[0],), t, dtype=torch.long)).sample
            x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1.0, 1.0)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x.clamp(-1.0, 1.0)


def test_ddim_cpu_chunks_give_the_one_batch_images(one_thread):
    torch.manual_seed(0)
    model = build_unet(16, 1, (16, 32), 1, norm_num_groups=8).eval()  # the noise-schedule task's U-Net
    alphas = NoiseSchedule(T=1000).alphas_cumprod().detach()
    n = diffusion._CPU_CHUNK + 44  # a full chunk and a remainder
    x_T = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    old = _old_ddim(model, alphas, x_T, 3)
    new = ddim_sample(model, alphas, x_T, 3, batch_size=500)
    assert new.shape == old.shape and not new.requires_grad
    # bitwise on the benchmark machine; oneDNN may pick other kernels per batch size elsewhere (last bits)
    assert torch.allclose(new, old, atol=1e-4, rtol=0.0)
    assert torch.equal(new, ddim_sample(model, alphas, x_T, 3))  # batch_size=None chunks the same way


def test_digit_features_fast_path_is_bitwise_and_batch_independent():
    ext = feat.digit_extractor()
    model = ext.model
    g = torch.Generator().manual_seed(0)
    for shape in ((70, 1, 16, 16), (9, 1, 28, 28), (5, 3, 20, 20), (4, 1, 33, 31)):
        x = torch.rand(shape, generator=g) * 2 - 1
        with torch.no_grad():
            assert torch.equal(feat._digit_features_cpu(model, x), model.features(x)), shape
    x = torch.rand(150, 1, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        old = model.features(x)  # the old extractor: one batch of up to 512 through model.features
    new = ext(x)
    assert new.shape == (150, 64)
    assert torch.allclose(new, old, rtol=1e-5, atol=1e-6 * float(old.abs().max()))


def test_inception_fast_copy_matches_the_original_and_keeps_the_fingerprint(one_thread):
    if feat.locate_inception_weights() is None:
        pytest.skip("no offline Inception weights")
    ext = feat.inception_extractor()
    if ext.backend != "torchscript":
        pytest.skip("the optimised copy is for the TorchScript backend")
    fingerprint = feat.weights_fingerprint(ext)
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the copy builds and passes its probe
        new = ext(x)
    fast = inception.fast_inception(ext.model)
    assert fast is not None and fast is not ext.model
    with torch.no_grad():  # the original network on the same preprocessed input
        up = torch.nn.functional.interpolate(((x + 1) / 2).repeat(1, 3, 1, 1), size=(299, 299), mode="bilinear",
                                             align_corners=False) * 2 - 1
        old = ext.model(up)
    assert new.shape == (2, 2048)
    assert float((new - old).abs().max()) <= 1e-5 * float(old.abs().max())
    assert feat.weights_fingerprint(ext) == fingerprint  # the copy is not an attribute: cache keys unchanged


class _PassThrough:
    """(N, d, 1, 1) 'images' -> (N, d) features."""

    preprocessing = "identity (test)"

    def __init__(self, dim: int) -> None:
        self.name, self.dim, self.weights = f"passthrough{dim}", dim, torch.zeros(1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


def _feats(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(16, d, generator=torch.Generator().manual_seed(99))
    return (torch.relu(torch.randn(n, 16, generator=g) @ basis + shift) + 0.1 * torch.rand(n, d, generator=g))[
        :, :, None, None
    ]


@pytest.mark.parametrize("shrinkage", [0.0, 0.3, "ledoit_wolf"])
def test_fid_with_fewer_fakes_than_dimensions_matches_the_dxd_form(monkeypatch, tmp_path, shrinkage):
    monkeypatch.setenv("RAY_BILEVEL_CACHE", str(tmp_path))
    d = 48
    ev = FIDEvaluator(_PassThrough(d), _feats(120, d, 0), shrinkage=shrinkage)
    for n in (20, 47, 60):  # N < d (fast form), N = d - 1, N > d (the d x d form itself)
        fake = _feats(n, d, n, shift=0.3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rank-deficient fake covariance
            new = ev(fake)
        old = _frechet(ev.real, feature_stats(fake.flatten(1), shrinkage), ev._real_root)  # the old __call__
        if n >= d:
            assert new == old
            continue
        if shrinkage == 0.0:  # exact: the nuclear norm of B = X_c Σ_r^{1/2} / sqrt(N - 1)
            x = fake.flatten(1).double()
            xc = x - x.mean(0)
            diff = ev.real.mu - x.mean(0)
            trace_sqrt = torch.linalg.svdvals(xc @ ev._real_root).sum() / (n - 1) ** 0.5
            exact = float(diff @ diff + torch.trace(ev.real.sigma) + xc.square().sum() / (n - 1) - 2 * trace_sqrt)
            assert new == pytest.approx(exact, rel=1e-8)  # one clamped round-off eigenvalue (N-1 = rank)
            # the d x d form clamps ~d - N round-off eigenvalues of size eps * |M| to 0: error ~ sqrt(eps)
            assert old == pytest.approx(exact, rel=1e-6)
        else:
            assert new == pytest.approx(old, rel=1e-10)
