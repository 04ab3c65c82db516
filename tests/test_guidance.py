"""Algorithm 5 (gradient-guided sampling): docs/algorithms.md §2.3."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel

from ray_bilevel.config import ConfigError
from ray_bilevel.guidance import EpsilonModel, Linearisation, guided_generate, guided_sample, linearise


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=11).eval().requires_grad_(False)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    return unet, sched


def _eps(unet, labels, cfg=1.0):
    uncond = {"class_labels": torch.full_like(labels, 10)} if cfg != 1.0 else None
    return EpsilonModel(unet, {"class_labels": labels}, uncond, cfg)


def ink(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def test_zero_gradient_guidance_is_bitwise_unguided(tiny):
    unet, sched = tiny
    z_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    eps = _eps(unet, torch.tensor([1, 2, 3]))
    plain = guided_sample(eps, sched, z_T, steps=5)
    zero = Linearisation(g=torch.zeros(3, 1, 8, 8), b=torch.ones(3), y=torch.full((3,), 10.0))
    guided = guided_sample(eps, sched, z_T, steps=5, lin=zero, beta=7.0)  # runs the autograd path
    assert torch.equal(plain, guided)


def test_mean_reduction_with_one_sample_equals_sum_and_scales_by_batch(tiny):
    unet, sched = tiny
    gen = torch.Generator().manual_seed(2)
    z_T = torch.randn(2, 1, 8, 8, generator=gen)
    lin = Linearisation(g=torch.randn(2, 1, 8, 8, generator=gen), b=torch.zeros(2), y=torch.full((2,), 3.0))
    eps1 = _eps(unet, torch.tensor([4]))
    one = Linearisation(lin.g[:1], lin.b[:1], lin.y[:1])
    s = guided_sample(eps1, sched, z_T[:1], 5, one, beta=2.0, reduction="sum")
    m = guided_sample(eps1, sched, z_T[:1], 5, one, beta=2.0, reduction="mean")
    assert torch.equal(s, m)
    # released "mean" reduction = per-sample strength β/B (docs/algorithms.md §2.3)
    eps2 = _eps(unet, torch.tensor([4, 4]))
    m2 = guided_sample(eps2, sched, z_T, 5, lin, beta=2.0, reduction="mean")
    s2 = guided_sample(eps2, sched, z_T, 5, lin, beta=1.0, reduction="sum")
    assert torch.allclose(m2, s2, atol=2e-4)
    # float32 convolutions of a batch of 1 and of 2 take different kernels: agree to ~1e-4
    # "sum": a sample's trajectory does not depend on the rest of the batch
    assert torch.allclose(guided_sample(eps2, sched, z_T, 5, lin, beta=2.0)[:1], s, atol=2e-4)


def _gaussian_eps(sched, sigma2: float = 0.25):
    """The exact ε-predictor of p_data = N(0, σ² I): ε*(z, t) = sqrt(1−ᾱ_t) z / (ᾱ_t σ² + 1 − ᾱ_t)."""
    acp = sched.alphas_cumprod

    def eps(z, t):
        a = acp[int(t)]
        return (1 - a).sqrt() * z / (a * sigma2 + 1 - a)

    return eps


def test_guidance_raises_the_reward_and_rounds_reuse_the_noise():
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    eps = _gaussian_eps(sched)
    res = {(target, beta): guided_generate(eps, sched, ink, (4, 1, 8, 8), beta=beta, rounds=3, steps=10,
                                           target=target, y_star=1.0, delta=0.5,
                                           generator=torch.Generator().manual_seed(3), keep_rounds=True)
           for target in ("fixed", "increment") for beta in (0.0, 50.0, 200.0)}
    for target in ("fixed", "increment"):
        means = [float(res[target, beta].rewards.mean()) for beta in (0.0, 50.0, 200.0)]
        assert means[0] + 0.05 < means[1] < means[2] - 0.1, (target, means)
    # "increment" re-targets every round, so the reward keeps rising over rounds
    inc = [float(r.mean()) for r in res["increment", 200.0].round_rewards]
    assert inc[0] < inc[1] < inc[2]
    # round 0 is unguided and starts from the same z_T whatever β is; outputs carry no graph
    assert torch.equal(res["fixed", 200.0].round_images[0], res["fixed", 0.0].round_images[0])
    out = res["fixed", 200.0].images
    assert not out.requires_grad and out.grad_fn is None
    assert out.min() >= -1 and out.max() <= 1


def test_cfg_combination(tiny):
    unet, sched = tiny
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    t = torch.tensor(500)
    y = torch.tensor([5, 6])
    with torch.no_grad():
        e_c = unet(z, t, class_labels=y).sample
        e_u = unet(z, t, class_labels=torch.tensor([10, 10])).sample
        assert torch.allclose(_eps(unet, y, 3.0)(z, t), e_u + 3.0 * (e_c - e_u), atol=1e-5)
        assert torch.equal(_eps(unet, y, 1.0)(z, t), e_c)
        # a batch-1 condition is broadcast
        one = EpsilonModel(unet, {"class_labels": torch.tensor([5])})
        assert torch.allclose(one(z, t)[0], e_c[0], atol=1e-6)
    with pytest.raises(ConfigError, match="uncond"):
        EpsilonModel(unet, {"class_labels": y}, None, 2.0)


def test_linearise_targets():
    w = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(5))

    def reward(x):  # linear plus a constant: the linearisation is exact
        return (w * x).flatten(1).sum(1) + 0.5

    x = torch.rand(2, 1, 4, 4) * 2 - 1
    lin, r = linearise(reward, x, target="fixed", y_star=10.0)
    assert torch.allclose(lin.g, w) and torch.allclose(lin.b, torch.full((2,), 0.5), atol=1e-6)
    assert torch.equal(lin.y, torch.full((2,), 10.0))
    assert torch.allclose(lin.residual(x), r - 10.0, atol=1e-6)
    lin2, _ = linearise(reward, x, target="increment", delta=2.0)
    assert torch.allclose(lin2.residual(x), torch.full((2,), -2.0), atol=1e-6)
    with pytest.raises(ConfigError, match="target"):
        linearise(reward, x, target="adaptive")
    with pytest.raises(ConfigError, match="one value per sample"):
        linearise(lambda x: x.sum(), x)
