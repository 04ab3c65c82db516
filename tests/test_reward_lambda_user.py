"""Bring your own problem, λ half (issue #23): your reward r2, your upper score r1 and your diffusers pipeline.

A tiny random-weight ``DDPMPipeline`` saved with ``save_pretrained`` and a module of scores written here, named as
``"module:function"`` strings (docs/your_own_problem.md). Offline, CPU, seconds (the Tune run: about a minute).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.tasks.reward_lambda import RewardLambdaTask, WeightedSumTask

#: The user's module (a unique name: Ray workers import it by name through PYTHONPATH).
MODULE = "lam_user_scores_issue23"
SOURCE = '''
import numpy as np
import torch


def brightness(images, prompts):
    """A differentiable lower reward: the mean brightness in percent."""
    return 100.0 * ((images + 1) / 2).flatten(1).mean(1)


def contrast(images, prompts):
    """A non-differentiable upper score (numpy): the pixel spread in percent."""
    x = images.detach().cpu().numpy().reshape(len(images), -1)
    return torch.from_numpy(100.0 * x.std(axis=1))


def wrong_shape(images, prompts):
    return brightness(images, prompts)[:, None]


def nan_score(images, prompts):
    return torch.full((len(images),), float("nan"))


def detached(images, prompts):
    return brightness(images, prompts).detach()


def raises(images, prompts):
    raise KeyError("no such prompt")


def as_list(images, prompts):
    return [1.0] * len(images)


not_callable = 3


class Scorer(torch.nn.Module):
    """A reward that is a network: its FLOPs are counted (cost_flops['user_reward'])."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(64, 1)

    def forward(self, images, prompts):
        return self.head(images.flatten(1)[:, :64]).squeeze(1)


scorer = Scorer()
'''


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_module")
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    sys.path.insert(0, str(folder))
    yield str(folder)
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)


def _save_ddpm(folder: Path, num_class_embeds: int | None = None) -> str:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=num_class_embeds)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory):
    """A tiny unconditional DDPMPipeline (8×8, 1 channel, random weights) saved with save_pretrained."""
    return _save_ddpm(tmp_path_factory.mktemp("ddpm"))


def _config(model_path: str, **extra):
    return {"preset": "smoke", "seed": 0, "model": "diffusers", "model_path": model_path, "prompt": "",
            "reward": f"{MODULE}:brightness", "upper": f"{MODULE}:contrast", "beta0": 0.01, "final_inception": False,
            "pool_size": 24, **extra}


def test_lambda_bilevel_with_user_reward_upper_and_ddpm_pipeline(user_module, ddpm, tmp_path):
    task = RewardLambdaTask(_config(ddpm))
    be = task.backend
    assert be.latent_shape == (1, 8, 8) and type(be.scheduler).__name__ == "DDIMScheduler"  # DDIM on the saved betas
    assert torch.equal(be.scheduler.betas, __import__("diffusers").DDPMScheduler(num_train_timesteps=100).betas)
    x = be.sample(be.noise(3, 0))
    assert torch.equal(be.r2(x), 100.0 * ((x + 1) / 2).flatten(1).mean(1))
    report = task.hyper_step()
    assert math.isfinite(report["hypergrad_norm"]) and task.lam >= task.cfg.lam_min
    final = task.evaluate(final=True)
    assert final["guided_images"] == task.cfg.guide_batch * task.cfg.repeats
    assert all(math.isfinite(final[k]) for k in ("lam", "alignment_val", "reward_val"))
    assert "prompt_alignment_val" not in final and "ink_target" not in final  # r1 is the user's score itself
    task.export(str(tmp_path))
    record = json.loads((tmp_path / "reward_lambda.json").read_text())
    assert record["user_functions"] == {
        "reward": {"function": f"{MODULE}:brightness", "flops_counted": False, "differentiable": True},
        "upper": {"function": f"{MODULE}:contrast", "flops_counted": False, "differentiable": False}}
    assert record["ink_target"] is None and record["ink_target_source"] == "unused"


def test_a_callable_and_a_class_conditional_pipeline(user_module, tmp_path):
    import importlib

    mod = importlib.import_module(MODULE)
    path = _save_ddpm(tmp_path / "cond", num_class_embeds=4)
    task = RewardLambdaTask(_config(path, reward=mod.brightness, upper=mod.contrast, prompt="class 2"))
    assert task.backend.digit == 2
    assert task.backend.eps_model(3).cond["class_labels"].tolist() == [2, 2, 2]
    assert math.isfinite(task.hyper_step()["hypergrad_norm"])
    with pytest.raises(ConfigError, match="names class 7, but the U-Net has num_class_embeds=4"):
        RewardLambdaTask(_config(path, prompt="a handwritten 7"))


def test_a_user_network_is_counted_in_cost_flops(user_module, ddpm):
    from ray_bilevel.cost import FlopMeter, metering

    meter = FlopMeter()
    with metering(meter):
        task = RewardLambdaTask(_config(ddpm, reward=f"{MODULE}:scorer"))
        task.hyper_step()
    assert meter.by_network.get("user_reward", 0.0) > 0 and meter.by_network.get("unet", 0.0) > 0
    assert task.backend.user_score_info()["reward"]["flops_counted"] is True
    assert "user_upper" not in meter.by_network  # a plain function: not counted, and recorded as such
    assert task.backend.user_score_info()["upper"]["flops_counted"] is False


@pytest.mark.parametrize("key,value,excerpt", [
    ("reward", "no_such_module_x:f", "import of module 'no_such_module_x' failed"),
    ("reward", f"{MODULE}:missing", "has no attribute 'missing'"),
    ("reward", f"{MODULE}:not_callable", "is a int, not a callable"),
    ("reward", f"{MODULE}:wrong_shape", "returned shape (2, 1) for 2 images"),
    ("reward", f"{MODULE}:nan_score", "returned 2 non-finite value(s)"),
    ("reward", f"{MODULE}:detached", "is not differentiable"),
    ("upper", f"{MODULE}:raises", "raised KeyError"),
    ("upper", f"{MODULE}:as_list", "returned a list; return a torch.Tensor"),
    ("upper", "contrast", "an import path 'package.module:function' or a callable"),
])
def test_bad_user_functions_give_one_line_errors_naming_them(user_module, ddpm, key, value, excerpt):
    with pytest.raises(ConfigError) as info:
        RewardLambdaTask(_config(ddpm, **{key: value}))
    message = str(info.value)
    assert excerpt in message and "\n" not in message
    assert value in message


def test_the_upper_need_not_be_differentiable_unless_the_weighted_sum_guides_on_it(user_module, ddpm):
    with pytest.raises(ConfigError, match=f"upper function '{MODULE}:contrast' is not differentiable.*weighted-sum"):
        WeightedSumTask(_config(ddpm))
    ws = WeightedSumTask(_config(ddpm, upper=f"{MODULE}:brightness"))  # a differentiable upper: guided on
    ws.lower_step()
    ws.lower_step()
    assert math.isfinite(ws.evaluate()["alignment_val"])


def test_model_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="model='diffusers' needs model_path"):
        RewardLambdaTask({"preset": "smoke", "model": "diffusers", "beta0": 0.01})
    with pytest.raises(ConfigError, match="has no model_index.json"):
        RewardLambdaTask({"preset": "smoke", "model": "diffusers", "model_path": str(tmp_path), "beta0": 0.01})


def test_without_beta0_a_diffusers_model_needs_its_own_calibration(user_module, ddpm):
    with pytest.raises(ConfigError) as info:
        RewardLambdaTask({k: v for k, v in _config(ddpm).items() if k != "beta0"})
    message = str(info.value)
    assert "python tools/lambda_problem.py --preset quick --calibrate --seeds 100-104" in message
    assert f"--set model_path={ddpm}" in message and f"--set reward={MODULE}:brightness" in message


# -- another prompt: its own calibration and stroke target, never the 7's ------------------------------------------
def _copy_shipped(folder: Path) -> str:
    from ray_bilevel.models.cond_unet import COND_UNET_DIR

    for name in ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json",
                 "guidance_calibration.json"):
        shutil.copy(COND_UNET_DIR / name, folder / name)
    return str(folder)


def test_another_prompt_never_reuses_the_sevens_calibration(tmp_path):
    from ray_bilevel.tasks.reward_lambda.calibration import CALIBRATION_FILE, find_calibration, write_calibration
    from ray_bilevel.tasks.reward_lambda.stroke_target import write_stroke_target

    path = _copy_shipped(tmp_path)
    three = {"preset": "smoke", "seed": 0, "model_path": path, "prompt": "a handwritten 3"}
    with pytest.raises(ConfigError, match=r"derived for prompt 'a handwritten 3'.*--calibrate.*prompt=a handwritten 3"):
        RewardLambdaTask(three)
    with pytest.raises(ConfigError, match=r"has no calibration for \{'prompt': 'a handwritten 3'.*--calibrate"):
        RewardLambdaTask({**three, "ink_target": 20.0})
    fitted = {"split": "val", "seeds": [100, 101], "prompt": "a handwritten 3"}
    cond = {"prompt": "a handwritten 3", "reward": "ink", "y_star": 100.0, "target": "fixed", "reduction": "sum",
            "cfg_scale": 1.0, "steps": 4}
    write_calibration(tmp_path / CALIBRATION_FILE, {"conditions": cond, "beta0": 0.0123,
                                                    "provenance": {"fitted_on": fitted}})
    write_stroke_target(tmp_path / CALIBRATION_FILE, {
        "conditions": {"prompt": "a handwritten 3", "steps": 4, "cfg_scale": 1.0}, "ink_target": 21.0, "n": 64,
        "provenance": {"fitted_on": {"seeds": [100, 101], "noise": "calibration_pool"}}})
    task = RewardLambdaTask(three)
    assert (task.beta0, task.cfg.ink_target) == (0.0123, 21.0) and "'a handwritten 3'" in task.ink_target_source
    assert task.evaluate()["ink_target"] == 21.0  # recorded with the results
    seven = RewardLambdaTask({**three, "prompt": "a handwritten seven"})  # the 7's entries are still there, its own
    assert (seven.beta0, seven.cfg.ink_target) == (0.014397, 18.0)
    assert find_calibration(seven.cfg)["beta0"] == 0.014397 and find_calibration(task.cfg)["beta0"] == 0.0123


def test_a_stroke_target_from_benchmark_seeds_is_refused(tmp_path):
    from ray_bilevel.tasks.reward_lambda.calibration import CALIBRATION_FILE
    from ray_bilevel.tasks.reward_lambda.stroke_target import write_stroke_target

    path = _copy_shipped(tmp_path)
    write_stroke_target(tmp_path / CALIBRATION_FILE, {
        "conditions": {"prompt": "a handwritten 7", "steps": 4, "cfg_scale": 1.0}, "ink_target": 30.0, "n": 64,
        "provenance": {"fitted_on": {"seeds": [0, 1], "noise": "calibration_pool"}}})
    with pytest.raises(ConfigError, match="not from development seeds >= 100 off the test noise; re-derive it with"):
        RewardLambdaTask({"preset": "smoke", "seed": 0, "model_path": path})


# -- under Ray Tune: the workers import the user's module through PYTHONPATH
# --------------------------------------------
@pytest.fixture
def ray_with_user_module(user_module):
    """A private Ray instance whose workers find the user's module on PYTHONPATH (runtime_env); the shared instance of
    conftest.py, if one is running, is stopped first and started again afterwards."""
    ray = pytest.importorskip("ray")
    shared = ray.is_initialized()
    if shared:
        ray.shutdown()
    path = os.pathsep.join(p for p in (user_module, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()
    if shared:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)


@pytest.mark.slow
def test_tune_run_bilevel_on_a_user_pipeline_with_user_scores(ray_with_user_module, ddpm, tmp_path):
    from ray import tune

    from ray_bilevel import BilevelTrainable

    analysis = tune.run(BilevelTrainable, config={"task": "reward_lambda", **_config(ddpm)},
                        stop={"training_iteration": 2}, storage_path=str(tmp_path), verbose=0)
    trial = analysis.trials[0]
    assert trial.status == "TERMINATED", trial.error_file
    last = trial.last_result
    for key in ("lam", "hypergrad_norm", "alignment_val", "reward_val", "cost_flops"):
        assert math.isfinite(last[key]), key
    assert last["lam"] >= 0.01 and last["cost_flops"] > 0


# -- the catalogue rows of docs/bad_inputs.md (B64-B79) -------------------------------------------------------------
def _bad_input_triggers(ddpm: str, tmp: Path) -> dict:
    """Per row, a function feeding the row's bad input through the public API."""
    from diffusers import DDPMPipeline, DDPMScheduler

    def unet1d_folder() -> str:
        (tmp / "unet1d").mkdir()
        (tmp / "unet1d" / "model_index.json").write_text(json.dumps(
            {"_class_name": "DanceDiffusionPipeline", "unet": ["diffusers", "UNet1DModel"],
             "scheduler": ["diffusers", "IPNDMScheduler"]}))
        return str(tmp / "unet1d")

    def v_prediction_folder() -> str:
        pipe = DDPMPipeline.from_pretrained(ddpm)
        DDPMPipeline(unet=pipe.unet, scheduler=DDPMScheduler(num_train_timesteps=100, prediction_type="v_prediction")
                     ).save_pretrained(tmp / "v")
        return str(tmp / "v")

    lam = RewardLambdaTask
    return {
        "B64": lambda: lam(_config(ddpm, reward="no_such_module:score")),
        "B65": lambda: lam(_config(ddpm, reward=f"{MODULE}:missing")),
        "B66": lambda: lam(_config(ddpm, reward=f"{MODULE}:not_callable")),
        "B67": lambda: lam(_config(ddpm, upper="contrast")),
        "B68": lambda: lam(_config(ddpm, reward=f"{MODULE}:wrong_shape")),
        "B69": lambda: lam(_config(ddpm, upper=f"{MODULE}:nan_score")),
        "B70": lambda: lam(_config(ddpm, reward=f"{MODULE}:detached")),
        "B71": lambda: lam(_config(ddpm, upper=f"{MODULE}:as_list")),
        "B72": lambda: lam(_config(ddpm, upper=f"{MODULE}:raises")),
        "B73": lambda: WeightedSumTask(_config(ddpm)),
        "B74": lambda: lam({"preset": "smoke", "model": "diffusers"}),
        "B75": lambda: lam({"preset": "smoke", "model": "diffusers", "model_path": str(tmp)}),
        "B76": lambda: lam(_config(unet1d_folder())),
        "B77": lambda: lam(_config(v_prediction_folder())),
        "B78": lambda: lam({"preset": "smoke", "prompt": "a handwritten 3"}),
        "B79": lambda: lam({"preset": "smoke", "prompt": "a handwritten 3", "ink_target": 20.0}),
    }


def _catalogue_rows(first: int, last: int) -> dict[str, list[str]]:
    """Row id -> the message excerpts of docs/bad_inputs.md's rows ``first``-``last`` (all ConfigError rows)."""
    import re

    rows = {}
    for line in (Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md").read_text().splitlines():
        m = re.match(r"^\|\s*B(\d\d)\s*\|(.*)\|\s*$", line)
        if m and first <= int(m.group(1)) <= last:
            got = [c.strip() for c in m.group(2).split(" | ")][2]
            assert got.startswith("ConfigError:"), line
            rows[f"B{m.group(1)}"] = re.findall(r"`([^`]+)`", got.partition(":")[2])
    return rows


ROWS = _catalogue_rows(64, 79)


@pytest.mark.parametrize("key", sorted(ROWS))
def test_bad_inputs_b64_to_b79_give_the_catalogued_message(key, user_module, ddpm, tmp_path):
    triggers = _bad_input_triggers(ddpm, tmp_path)
    assert set(triggers) == set(ROWS)
    with pytest.raises(ConfigError) as info:
        triggers[key]()
    message = str(info.value)
    for excerpt in ROWS[key]:
        assert excerpt in message, f"{key}: {excerpt!r} not in {message!r}"
    assert "\n" not in message.strip()
