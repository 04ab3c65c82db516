"""Rebuild the shipped class-conditional MNIST U-Net (the offline "pretrained model" of Application 1).

``python tools/train_cond_unet.py`` trains a small class-conditional
``diffusers.UNet2DModel`` on the ``mnist5k`` train split at 16×16 with the DDPM ε-prediction loss
(Ho et al. 2020) under the Nichol & Dhariwal cosine schedule (T = 1000, s = 0.008; the DDIM default
(0, 1, 1, 0.008) of docs/algorithms.md §3.2), AdamW and an EMA of the weights, with label dropout to a
null class (index 10) so classifier-free guidance works. It writes
``ray_bilevel/assets/cond_unet_mnist16/`` (``config.json``, ``diffusion_pytorch_model.safetensors``,
``scheduler_config.json``, ``training.json``). ``--check-only`` reruns the quality check (digit
classifier accuracy of class-conditional samples) on the saved model and updates ``training.json``.

Load the result with :func:`ray_bilevel.models.cond_unet.load_cond_unet`.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ray_bilevel.paths import ASSETS_DIR

__all__ = ["build_model", "train", "quality_check", "DEFAULT_DIR", "NULL_CLASS"]

DEFAULT_DIR = ASSETS_DIR / "cond_unet_mnist16"
#: Class index of the unconditional ("null") embedding used for classifier-free guidance.
NULL_CLASS = 10
IMAGE_SIZE = 16


def build_model(channels: tuple[int, ...] = (32, 64, 64)):
    """The shipped architecture: 3 resolution levels (16, 8, 4), no attention, 10 digits + 1 null class."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=IMAGE_SIZE,
        in_channels=1,
        out_channels=1,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * len(channels),
        up_block_types=("UpBlock2D",) * len(channels),
        norm_num_groups=8,
        num_class_embeds=NULL_CLASS + 1,
    )


def build_scheduler():
    """DDIM sampler on the Nichol & Dhariwal cosine schedule (diffusers ``squaredcos_cap_v2``), T = 1000."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=True,
        clip_sample_range=1.0,
        set_alpha_to_one=True,
        prediction_type="epsilon",
    )


def _train_data() -> tuple[torch.Tensor, torch.Tensor]:
    from ray_bilevel.data import load_images

    data = load_images("mnist5k", image_size=IMAGE_SIZE, split="train")  # seeded 80 % split (split_seed 0)
    assert data.labels is not None  # mnist5k is labelled
    return data.images.float(), data.labels.long()


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1.0 - decay)


def train(
    out_dir: Path = DEFAULT_DIR,
    steps: int = 5000,
    batch_size: int = 64,
    lr: float = 2e-3,
    warmup: int = 200,
    ema_decay: float = 0.999,
    p_uncond: float = 0.1,
    seed: int = 0,
    threads: int = 1,
    log_every: int = 100,
) -> dict:
    """Train and save; returns the training record (also written as ``training.json``)."""
    import copy

    torch.set_num_threads(threads)
    torch.manual_seed(seed)  # module init of the U-Net uses the global RNG; seeded here, in the script only
    gen = torch.Generator().manual_seed(seed)
    images, labels = _train_data()
    n = images.shape[0]
    model = build_model()
    ema = copy.deepcopy(model).requires_grad_(False)
    sched = build_scheduler()
    acp = sched.alphas_cumprod.float()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < warmup:
            return lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    t0 = time.time()
    running = 0.0
    perm = torch.randperm(n, generator=gen)
    pos = 0
    for step in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        x0, y = images[idx], labels[idx].clone()
        drop = torch.rand(batch_size, generator=gen) < p_uncond
        y[drop] = NULL_CLASS
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = F.mse_loss(model(xt, t, class_labels=y).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        _ema_update(ema, model, min(ema_decay, (1 + step) / (10 + step)))
        running += loss.item()
        if (step + 1) % log_every == 0:
            el = time.time() - t0
            print(f"step {step + 1}/{steps} loss {running / log_every:.4f} lr {lr_at(step):.2e} "
                  f"elapsed {el:.0f}s eta {el / (step + 1) * (steps - step - 1):.0f}s", flush=True)
            running = 0.0
    train_s = time.time() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    ema.half().save_pretrained(out_dir, safe_serialization=True)  # fp16 storage (2 MB); loads back as fp32
    sched.save_pretrained(out_dir)
    record = {
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "lr_schedule": "linear warm-up then cosine to 10%",
        "warmup": warmup,
        "ema_decay": ema_decay,
        "p_uncond": p_uncond,
        "null_class": NULL_CLASS,
        "optimizer": "AdamW(weight_decay=0), grad-norm clip 1.0",
        "loss": "DDPM epsilon MSE",
        "schedule": "cosine (Nichol & Dhariwal), squaredcos_cap_v2, T=1000",
        "data": f"ray_bilevel.data.load_images('mnist5k', image_size=16, split='train'): {n} images (heldout_fraction "
        "0.2, split_seed 0), antialiased bilinear 28->16, range [-1, 1]",
        "image_size": IMAGE_SIZE,
        "storage": "float16 safetensors (EMA weights)",
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_s, 1),
        "threads": threads,
        "torch": torch.__version__,
    }
    (out_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved to {out_dir} after {train_s:.0f}s", flush=True)
    return record


@torch.no_grad()
def quality_check(model_dir: Path = DEFAULT_DIR, per_class: int = 100, steps: int = 50,
                  cfg_scales: tuple[float, ...] = (1.0, 2.0), seed: int = 1) -> dict:
    """Digit-classifier accuracy of class-conditional DDIM samples (one entry per CFG scale)."""
    from ray_bilevel.models.cond_unet import load_cond_unet, sample_class_conditional
    from ray_bilevel.models.digit_classifier import load_digit_classifier

    unet, sched = load_cond_unet(model_dir)
    clf = load_digit_classifier()
    labels = torch.arange(10).repeat_interleave(per_class)
    result = {"per_class": per_class, "ddim_steps": steps, "eta": 0.0, "sample_seed": seed}
    for w in cfg_scales:
        t0 = time.time()
        x = sample_class_conditional(unet, sched, labels, steps=steps, cfg_scale=w,
                                     generator=torch.Generator().manual_seed(seed))
        pred = clf(x).argmax(-1)
        acc = (pred == labels).float().mean().item()
        result[f"accuracy_cfg{w:g}"] = round(acc, 4)
        print(f"cfg {w:g}: classifier accuracy {acc:.4f} ({time.time() - t0:.0f}s)", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_DIR)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--check-only", action="store_true", help="only rerun the quality check on --out")
    args = p.parse_args(argv)
    if not args.check_only:
        train(args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, threads=args.threads)
    torch.set_num_threads(args.threads)
    check = quality_check(args.out)
    path = args.out / "training.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    record["quality_check"] = check
    path.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
