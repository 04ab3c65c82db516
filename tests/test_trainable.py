"""BilevelTrainable / FixedHyperTrainable on the analytic toy: tune.run, Tuner, checkpoints, errors."""
from __future__ import annotations

import os

import pytest
import torch
from ray import tune

from ray_bilevel import BilevelTrainable, ConfigError, FixedHyperTrainable
from ray_bilevel.tasks.toy import ToyTask
from ray_bilevel.tune.trainable import CHECKPOINT_FILE


def test_tune_run_drives_toy_to_optimum(ray_local, tmp_path):
    analysis = tune.run(
        BilevelTrainable,
        config={"task": "toy", "seed": 0},
        stop={"training_iteration": 40},
        storage_path=str(tmp_path),
        verbose=0,
    )
    trial = analysis.trials[0]
    last = trial.last_result
    x_star = ToyTask({"seed": 0}).x_star()
    x = torch.tensor([last["x0"], last["x1"]], dtype=torch.float64)
    assert float((x - x_star).norm()) < 1e-2
    assert last["dist_to_opt"] < 1e-2
    assert {"hypergrad_norm", "lower_loss", "upper_loss", "outer_steps", "samples_seen"} <= set(last)


def test_tuner_fixed_and_bilevel_spend_the_same_lower_work(ray_local, tmp_path):
    common = {"task": "toy", "preset": "smoke", "seed": 1}
    results = {}
    for name, trainable, extra in (("bilevel", BilevelTrainable, {}), ("fixed", FixedHyperTrainable, {"x0": 0.0})):
        grid = tune.Tuner(
            trainable,
            param_space={**common, **extra},
            tune_config=tune.TuneConfig(metric="upper_loss", mode="min"),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name=name, verbose=0),
        ).fit()
        assert not grid.errors
        results[name] = grid[0].metrics
    assert results["bilevel"]["done"] and results["fixed"]["done"]
    assert results["bilevel"]["samples_seen"] == results["fixed"]["samples_seen"] == 20 * 10
    assert results["bilevel"]["training_iteration"] == results["fixed"]["training_iteration"]
    # the fixed trial never moves its hyperparameters; the bilevel one does and wins
    assert results["fixed"]["x0"] == 0.0 and results["fixed"]["x1"] == -1.0
    assert results["bilevel"]["upper_loss"] < results["fixed"]["upper_loss"]


@pytest.mark.parametrize("cls", [BilevelTrainable, FixedHyperTrainable])
def test_checkpoint_restored_into_new_actor_gives_same_next_report(cls, tmp_path):
    config = {"task": "toy", "preset": "smoke", "seed": 5, "x0": 0.3}
    original = cls(config=config)
    for _ in range(3):
        original.train()
    path = original.save_checkpoint(str(tmp_path))
    assert path is None and os.path.exists(tmp_path / CHECKPOINT_FILE)
    expected = original.step()
    restored = cls(config=config)
    restored.load_checkpoint(str(tmp_path))
    got = restored.step()
    for key in ("x0", "x1", "upper_loss", "lower_loss", "samples_seen"):
        assert got[key] == expected[key], key
    assert restored.trajectory[:3] == original.trajectory[:3]
    original.stop()
    restored.stop()


def test_reset_config_starts_a_fresh_trial_even_if_only_hyperparameters_change():
    t = FixedHyperTrainable(config={"task": "toy", "preset": "smoke", "x0": 0.5})
    t.train()
    assert t.work_done > 0
    assert t.reset_config({"task": "toy", "preset": "smoke", "x0": 0.9})  # reuse_actors: a new trial
    assert t.task.hyperparameters()["x0"] == 0.9
    assert t.work_done == 0 and torch.equal(t.task.y, torch.zeros_like(t.task.y))
    t.stop()


def test_fixed_trial_takes_hyperparameters_from_config_after_restore(tmp_path):
    donor = FixedHyperTrainable(config={"task": "toy", "preset": "smoke", "x0": 0.1})
    donor.train()
    donor.save_checkpoint(str(tmp_path))
    explorer = FixedHyperTrainable(config={"task": "toy", "preset": "smoke", "x0": 0.7})
    explorer.load_checkpoint(str(tmp_path))
    assert explorer.task.hyperparameters()["x0"] == 0.7
    assert torch.equal(explorer.task.y, donor.task.y)
    donor.stop()
    explorer.stop()


def test_unknown_task_name_is_one_line_error():
    with pytest.raises(ConfigError, match="unknown task 'tyo'.*Did you mean 'toy'"):
        BilevelTrainable(config={"task": "tyo"})


def test_missing_task_and_bad_keys_are_errors():
    with pytest.raises(ConfigError, match="must name a task"):
        BilevelTrainable(config={"seed": 0})
    with pytest.raises(ConfigError, match="unknown config key 'gama'.*Did you mean 'gamma'"):
        BilevelTrainable(config={"task": "toy", "gama": 3})
    with pytest.raises(ConfigError, match="unknown preset 'quik'"):
        BilevelTrainable(config={"task": "toy", "preset": "quik"})
    with pytest.raises(ConfigError, match="iterations_per_step"):
        BilevelTrainable(config={"task": "toy", "iterations_per_step": 0})


def test_foreign_and_corrupt_checkpoints_are_refused(tmp_path):
    t = BilevelTrainable(config={"task": "toy", "preset": "smoke"})
    with pytest.raises(ConfigError, match="not a ray_bilevel checkpoint"):
        t.load_checkpoint(str(tmp_path))
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="corrupt or not from ray_bilevel"):
        t.load_checkpoint(str(tmp_path))
    torch.save({"format": "something/else"}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ConfigError, match="written by something else"):
        t.load_checkpoint(str(tmp_path))
    t.stop()
