"""studies/fork_step.py: one hypergradient step from forked training (smoke size); its moves and steps are the
library's (tests/test_fork.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "studies"))
import fork_step  # noqa: E402


def test_the_q0_branch_is_an_uninterrupted_default_training_and_the_run_is_booked(tmp_path):
    """The trunk plus the q0 branch is one training at q0: its value equals a straight run's (the branches start
    from a snapshot of the trunk, not from its live tensors); the cost is in trainings and covers at least the
    trunk, the branches and the finish."""
    from ray_bilevel.tasks import get_task

    out = tmp_path / "f.json"
    fork_step.main(["--preset", "smoke", "--seed", "100", "--names", "end", "tau", "--fork", "0.5",
                    "--scales", "1", "--retrain", "--out", str(out)])
    result = json.loads(out.read_text())
    seed = result["seeds"][0]
    task = get_task("noise_schedule")({"task": "noise_schedule", "preset": "smoke", "seed": 100})
    for _ in range(task.lower_budget):
        task.lower_step()
    assert seed["default"] == pytest.approx(task.evaluate()["fid_domain_val"], rel=1e-9)
    (answer,) = seed["answers"]
    assert answer["cost"] >= 1 + 2 * 0.5 + 0.5 * (answer["q"] != seed["q0"])  # trunk + 2 branches (+ finish)
    assert answer["answer"] == min(answer["finished"], seed["default"]) and "retrained" in answer
    with pytest.raises(SystemExit, match="development"):
        fork_step.main(["--preset", "smoke", "--seeds", "3", "--out", str(tmp_path / "x.json")])
