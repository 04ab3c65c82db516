"""Learn, then retrain (``BilevelTrainable(retrain=True)``, the harness's ``bilevel_retrain``): the answer is a fresh
lower-level run at the learned hyperparameters, identical to a fixed trial there, restored from its checkpoint, and
both phases are the trial's cost."""
from __future__ import annotations

import json
import os

import pytest
import torch

from ray_bilevel.tune.trainable import BilevelTrainable, FixedHyperTrainable


def _finish(trainable):
    reports = []
    while not reports or not reports[-1]["done"]:
        reports.append(trainable.train())
    return reports


def test_retrain_equals_a_fixed_trial_at_the_learned_hyperparameters(tmp_path):
    config = {"task": "toy", "preset": "smoke", "seed": 3}
    plain = _finish(BilevelTrainable(config=config))
    learn = BilevelTrainable(config={**config, "retrain": True})
    reports = _finish(learn)
    assert [r["phase"] for r in reports] == [0] * len(plain) + [1] * (len(reports) - len(plain))
    learned = {k: plain[-1][k] for k in ("x0", "x1")}
    assert learn.learned == pytest.approx(learned) and learn.task.hyperparameters() == pytest.approx(learned)
    fixed = _finish(FixedHyperTrainable(config={**config, **learned}))
    assert reports[-1]["upper_loss"] == fixed[-1]["upper_loss"]  # the same seed, the same fresh lower-level run
    assert reports[-1]["retrain_steps"] == fixed[-1]["lower_steps"]
    # both phases are booked: the learning run's compute plus one full fixed run's
    assert reports[-1]["cost_flops"] == pytest.approx(plain[-1]["cost_flops"] + fixed[-1]["cost_flops"])
    path = learn.save(str(tmp_path))
    restored = BilevelTrainable(config={**config, "retrain": True})
    restored.restore(path)
    assert restored.learned == learn.learned
    assert restored.task.evaluate()["upper_loss"] == reports[-1]["upper_loss"]


@pytest.mark.slow
def test_tune_run_retrain_returns_the_retrained_network_with_the_learned_schedule(ray_local, tmp_path):
    """``tune.run(BilevelTrainable, config={"task": "noise_schedule", "retrain": True, ...})`` at smoke size: the best
    checkpoint holds the retrained network, trained at the learned schedule (exported with it)."""
    from ray import tune

    analysis = tune.run(
        BilevelTrainable,
        config={"task": "noise_schedule", "preset": "smoke", "seed": 0, "retrain": True},
        stop={"done": True},
        storage_path=str(tmp_path),
        verbose=0,
        checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=True),
    )
    trial = analysis.trials[0]
    last = trial.last_result
    assert last["phase"] == 1 and last["done"] and last["retrain_steps"] > 0
    with trial.checkpoint.as_directory() as folder:
        learned = json.loads(open(os.path.join(folder, "ray_bilevel_learned.json")).read())
        state = torch.load(os.path.join(folder, "ray_bilevel_state.pt"), weights_only=True)
        exported = [n for n in os.listdir(folder) if n.endswith(".json") and "schedule" in n]
    assert set(learned) == {"start", "end", "tau", "eps"}
    assert {k: last[k] for k in learned} == pytest.approx(learned)
    assert state["task_state"]["lower_steps"] == last["retrain_steps"]  # the network trained in the retrain phase
    assert exported, "the learned schedule is exported beside the checkpoint"


def test_work_fraction_weighs_each_phase_as_half_the_run():
    """The progress line projects a trial's compute as cost_flops / work_fraction: counting an outer step like one
    retraining step projected ~40x the compute of a quick learn-then-retrain trial. Each phase is half."""
    config = {"task": "toy", "preset": "smoke", "seed": 3}
    learn = BilevelTrainable(config={**config, "retrain": True})
    outer, lower = learn._outer, learn._lower
    fractions, phases = [], []
    while not phases or learn.work_done < outer + lower:
        report = learn.train()
        fractions.append(learn.work_fraction())
        phases.append(report["phase"])
    switch = phases.index(1)
    assert fractions[switch - 1] == pytest.approx(0.5)  # the learning phase ends at half
    assert fractions[-1] == pytest.approx(1.0)
    assert fractions == sorted(fractions) and all(0 < f <= 0.5 for f in fractions[:switch])
    plain = BilevelTrainable(config=config)
    plain.train()
    assert plain.work_fraction() == pytest.approx(plain.work_done / outer)
