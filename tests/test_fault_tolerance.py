"""Fault tolerance (issue 6, item 3): a trial that fails, or whose actor is killed, retries from its last checkpoint
and ends exactly where an uninterrupted seeded run ends. Faults are injected by ``_faults.faulty``; the driver-kill
tests are in test_fault_tolerance_driver.py.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from _faults import FaultyToy, faulty, read_log, uninterrupted  # noqa: E402 - tests/ helper
from ray import tune

from ray_bilevel import BilevelTrainable, FixedHyperTrainable


# -- a trial that crashes once --------------------------------------------------------------
@pytest.mark.parametrize("trainable", [BilevelTrainable, FixedHyperTrainable])
def test_trial_crashing_once_resumes_from_checkpoint_and_matches_uninterrupted(ray_local, tmp_path, trainable):
    log = tmp_path / "steps.log"
    base = {"preset": "smoke", "seed": 3, "x0": 0.7}
    # FixedHyperTrainable: 20 Tune iterations of 10 lower steps; crash inside iteration 6
    crash_at = 5 if trainable is BilevelTrainable else 55
    per_iter = 1 if trainable is BilevelTrainable else 10
    config = {
        "task": FaultyToy,
        **base,
        "ft_log": str(log),
        "ft_crash_at": crash_at,
        "ft_marker": str(tmp_path / "crashed"),
    }
    grid = tune.Tuner(
        trainable,
        param_space=config,
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "ray"),
            name="crash_once",
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=2, checkpoint_at_end=True),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    ).fit()
    assert not grid.errors
    final = grid[0].metrics
    reference = uninterrupted(trainable, {"task": "toy", **base}, 20)
    assert final["done"] and final["training_iteration"] == reference["training_iteration"] == 20
    for key in ("x0", "x1", "upper_loss", "lower_loss", "samples_seen"):
        assert final[key] == reference[key], key
    # resumed from the checkpoint at Tune iteration 4 (not from scratch): steps of iteration 5 and 6 rerun
    indices = [i for _, i, _ in read_log(log)]
    assert indices == list(range(crash_at + 1)) + list(range(4 * per_iter, 20 * per_iter))
    assert (tmp_path / "crashed").exists()


# -- a trial actor killed mid-run -------------------------------------------------------------
def test_killed_trial_actor_finishes_from_checkpoint_with_identical_hyperparameters(ray_local, tmp_path):
    log = tmp_path / "steps.log"
    base = {"preset": "smoke", "seed": 2, "x0": -0.4}
    config = {"task": FaultyToy, **base, "ft_log": str(log), "ft_sleep": 0.1}
    killed: list[int] = []

    def killer() -> None:  # SIGKILL the trial's worker once it is past its second checkpoint
        deadline = time.time() + 120
        while time.time() < deadline:
            rows = read_log(log)
            if rows and rows[-1][1] >= 7:
                killed.append(rows[-1][2])
                os.kill(rows[-1][2], signal.SIGKILL)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    grid = tune.Tuner(
        BilevelTrainable,
        param_space=config,
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "ray"),
            name="kill_actor",
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=2, checkpoint_at_end=True),
            failure_config=tune.FailureConfig(max_failures=2),
        ),
    ).fit()
    thread.join(timeout=5)
    assert killed, "the trial finished before it could be killed"
    assert not grid.errors
    final = grid[0].metrics
    reference = uninterrupted(BilevelTrainable, {"task": "toy", **base}, 20)
    assert (final["x0"], final["x1"]) == (reference["x0"], reference["x1"])
    assert final["upper_loss"] == reference["upper_loss"] and final["training_iteration"] == 20
    rows = read_log(log)
    before = [i for _, i, pid in rows if pid == killed[0]]
    after = [i for _, i, pid in rows if pid != killed[0]]
    assert before[0] == 0 and before[-1] >= 7
    # the new actor starts at a checkpoint (an even Tune iteration >= 6), not at step 0
    assert after[0] >= 6 and after[0] % 2 == 0 and after[0] <= before[-1] and after[-1] == 19
    assert after == list(range(after[0], 20))


# -- the real tasks -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["noise_schedule", "reward_lambda"])
def test_real_task_trial_crashing_once_matches_uninterrupted(ray_local, tmp_path, name):
    """A smoke-preset trial of a real task fails once mid-run, is retried from its last checkpoint
    (every iteration) and ends with exactly the hyperparameters and metrics of an uninterrupted run."""
    from ray_bilevel.tasks import get_task

    base = get_task(name)
    reference_task = base({"preset": "smoke"})
    iterations = reference_task.outer_budget
    hyper = list(reference_task.hyperparameters())
    del reference_task
    reference = uninterrupted(BilevelTrainable, {"task": name, "preset": "smoke"}, iterations)
    log = tmp_path / "steps.log"
    config = {"task": faulty(base), "preset": "smoke", "ft_log": str(log), "ft_crash_at": iterations - 1,
              "ft_marker": str(tmp_path / "crashed"), "ft_tag": name}
    grid = tune.Tuner(
        BilevelTrainable,
        param_space=config,
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "ray"), name=name, verbose=0,
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, checkpoint_at_end=True),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    ).fit()
    assert not grid.errors, grid.errors
    final = grid[0].metrics
    assert (tmp_path / "crashed").exists() and final["training_iteration"] == iterations and final["done"]
    # the retry resumed from the checkpoint of the iteration before the crash
    assert [i for _, i, _ in read_log(log)] == list(range(iterations)) + [iterations - 1]
    for key in hyper + [base.metric, "lower_loss"]:
        if key in reference:
            # float32 CPU kernels may take another reduction order in another worker process
            # (thread count), so the real tasks agree to ~1e-6 relative, not bit for bit
            assert final[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-7), (key, final[key], reference[key])
