"""A learnable noise schedule in your own diffusers training loop, as a Tune function trainable
(docs/your_own_problem.md)."""
import torch
from diffusers import DDPMScheduler, UNet2DModel
from ray import tune

from ray_bilevel import ScheduleLearner
from ray_bilevel.data import load_images
from ray_bilevel.tune.report import tune_reporter, tune_restore


def train(config: dict) -> None:
    images = load_images("mnist5k", split="train", image_size=8).images  # your training images, (N, C, H, W) in [-1, 1]
    heldout = load_images("mnist5k", split="val", image_size=8).images[:200]  # real images you do not train on
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=8,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000)  # yours: the learner takes over its add_noise
    state = lambda: {"unet": unet.state_dict(), "optimizer": optimizer.state_dict(), "learner": learner.state_dict()}  # noqa: E731
    learner = ScheduleLearner(unet, heldout, {**config["learner"], "T": noise_scheduler.config.num_train_timesteps},
                              callback=tune_reporter(state, files=lambda folder: learner.export(folder)))
    if (saved := tune_restore()) is not None:  # a restored trial continues from its last checkpoint
        unet.load_state_dict(saved["unet"])
        optimizer.load_state_dict(saved["optimizer"])
        learner.load_state_dict(saved["learner"])
    data = torch.Generator().manual_seed(learner.steps)
    while learner.steps < config["steps"]:
        x0 = images[torch.randint(len(images), (config["batch_size"],), generator=data)]
        t, noise, noisy = learner.draw(x0)  # was: noise_scheduler.add_noise(x0, noise, t) with t, noise drawn by you
        loss = torch.nn.functional.mse_loss(unet(noisy, t).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        learner.step()  # every k steps: a hypergradient step of the schedule, reported to Tune with a checkpoint


def main(storage_path: str | None = None, steps: int = 30) -> tune.ResultGrid:
    param_space = {"steps": steps, "batch_size": 16, "learner": {"preset": "smoke", "every": 10, "seed": 0}}
    tuner = tune.Tuner(train, param_space=param_space, tune_config=tune.TuneConfig(metric="fid_domain_zo", mode="min"),
                       run_config=tune.RunConfig(storage_path=storage_path, verbose=0))
    return tuner.fit()


if __name__ == "__main__":
    print(main().get_best_result().metrics)
