"""The reward-λ task under Ray Tune, offline (issue 4 "done when")."""
from __future__ import annotations

import math

import pytest


@pytest.mark.slow
def test_tune_run_bilevel_smoke_reports_lam_alignment_reward_fid(ray_local, tmp_path):
    from ray import tune

    from ray_bilevel import BilevelTrainable

    analysis = tune.run(
        BilevelTrainable,
        config={"task": "reward_lambda", "preset": "smoke", "seed": 0},
        stop={"training_iteration": 2},
        storage_path=str(tmp_path),
        verbose=0,
    )
    trial = analysis.trials[0]
    assert trial.status == "TERMINATED"
    last = trial.last_result
    for key in ("lam", "alignment_val", "reward_val", "fid_domain_val", "cpu_s"):
        assert math.isfinite(last[key]), key
    assert last["final"] and last["guided_images"] > 0 and last["lam"] >= 0.01
