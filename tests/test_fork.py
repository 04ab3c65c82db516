"""The forked-training step (:class:`~ray_bilevel.tune.fork.ForkStepTrainable`, the harness's ``bilevel_fork``),
against the analytic toy's ground truth: a branch trained to the end is y*(x), so its value is F(x) exactly, and the
step moves each coordinate whose branch beat the x0 branch."""
from __future__ import annotations

import pytest
import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.tasks.toy import ToyTask
from ray_bilevel.tune.fork import ForkStepTrainable, moved, stepped

# x0 = (2.95, 2.95) lies near the box's upper corner, where F increases in both coordinates: the probes go down
DOWNHILL = {"task": "toy", "seed": 0, "x0": 2.95, "x1": 2.95, "fork_moves": {"x0": 0.1, "x1": 0.1}}


def _finish(trainable):
    reports = []
    while not reports or not reports[-1]["done"]:
        reports.append(trainable.train())
    return reports


def _F(x0: float, x1: float) -> float:
    return ToyTask({"seed": 0}).upper_value(torch.tensor([x0, x1], dtype=torch.float64))


def test_branches_measure_the_upper_objective_at_the_probes_and_the_step_follows_them():
    reports = _finish(ForkStepTrainable(config=DOWNHILL))
    last = reports[-1]
    assert [r["fork_phase"] for r in reports] == [0, 1, 1, 1, 2]  # trunk, x0 + two probes, the answer
    assert last["fork_base"] == pytest.approx(_F(2.95, 2.95), abs=1e-9)
    assert last["fork_x0"] == pytest.approx(_F(2.85, 2.95), abs=1e-9)  # up leaves the box [-3, 3]: down
    assert last["fork_x1"] == pytest.approx(_F(2.95, 2.85), abs=1e-9)
    grad = ToyTask({"seed": 0}).true_hypergradient(torch.tensor([2.95, 2.95], dtype=torch.float64))
    assert (grad > 0).all()  # so both probes improve, and the step is 2 x their moves
    assert (last["fork_step_x0"], last["fork_step_x1"]) == pytest.approx((2.75, 2.75))
    assert (last["x0"], last["x1"]) == pytest.approx((2.75, 2.75))
    assert last["upper_loss"] == pytest.approx(_F(2.75, 2.75), abs=1e-9) and last["upper_loss"] < last["fork_base"]
    # trunk 450 + three branches of 150 + a fresh 600-step run; booked at the toy's FLOPs per lower step
    assert last["lower_steps"] == 450 + 3 * 150 + 600
    assert last["cost_flops"] == pytest.approx(1500 * (2 * 5 * 5 + 4 * 5))


def test_no_improving_branch_keeps_the_default_run_and_skips_the_retrain():
    """At (1, -1) F increases along both probes (up): the x0 branch, a complete default run, is the answer."""
    config = {"task": "toy", "seed": 0, "fork_moves": {"x0": 0.01, "x1": 0.01}}
    reports = _finish(ForkStepTrainable(config=config))
    last = reports[-1]
    assert last["fork_x0"] > last["fork_base"] and last["fork_x1"] > last["fork_base"]
    assert (last["x0"], last["x1"]) == (1.0, -1.0) and last["upper_loss"] == last["fork_base"]
    assert last["lower_steps"] == 450 + 3 * 150 and len(reports) == 4


def test_the_retrained_answer_loses_to_the_default_run_so_the_default_answers():
    """A step too long for the toy (scale 40 from (2.95, 2.95) to the other side of the optimum): the retrained answer
    is worse on the upper objective than the x0 branch, which becomes the answer, restored from the snapshot."""
    trainable = ForkStepTrainable(config={**DOWNHILL, "fork_scale": 60.0})
    last = _finish(trainable)[-1]
    assert last["fork_answer"] > last["fork_base"]
    assert (last["x0"], last["x1"]) == (2.95, 2.95) and last["upper_loss"] == last["fork_base"]
    assert trainable.task.evaluate()["upper_loss"] == last["fork_base"]


def test_a_restore_between_segments_continues_identically(tmp_path):
    whole = _finish(ForkStepTrainable(config=DOWNHILL))
    first = ForkStepTrainable(config=DOWNHILL)
    for _ in range(3):  # trunk, x0 branch, first probe
        first.train()
    path = first.save(str(tmp_path / "mid"))
    second = ForkStepTrainable(config=DOWNHILL)
    second.restore(path)
    rest = _finish(second)
    keys = ("upper_loss", "fork_base", "fork_x0", "fork_x1", "x0", "x1", "lower_steps", "cost_flops")
    assert {k: rest[-1][k] for k in keys} == {k: whole[-1][k] for k in keys}
    # the final checkpoint holds the answer: a fresh trainable restored from it evaluates it
    end = second.save(str(tmp_path / "end"))
    third = ForkStepTrainable(config=DOWNHILL)
    third.restore(end)
    assert third.task.hyperparameters() == pytest.approx({"x0": 2.75, "x1": 2.75})
    assert third.task.evaluate()["upper_loss"] == whole[-1]["upper_loss"]


def test_moves_and_steps_stay_in_the_box():
    bounds = {"a": (0.0, 1.0)}
    assert moved({"a": 0.95}, bounds, "a", 0.1) == {"a": pytest.approx(0.85)}
    assert moved({"a": 0.5}, bounds, "a", 0.1) == {"a": pytest.approx(0.6)}
    with pytest.raises(ConfigError, match="smaller move"):
        moved({"a": 0.5}, bounds, "a", 0.6)
    assert stepped({"a": 0.5}, {"a": {"a": 0.6}}, {"a": True}, 10.0, bounds) == {"a": 1.0}
    assert stepped({"a": 0.5}, {"a": {"a": 0.6}}, {"a": False}, 10.0, bounds) == {"a": 0.5}


@pytest.mark.parametrize("bad, match", [({"fork": 1.0}, "0 < fork < 1"), ({"fork_moves": {"z": 0.1}}, "not searchable"),
                                        ({"fork_scale": -1}, "positive"), ({"fork_moves": {}}, "non-empty")])
def test_bad_settings_name_the_value_and_the_fix(bad, match):
    with pytest.raises(ConfigError, match=match):
        ForkStepTrainable(config={**DOWNHILL, **bad})


def test_the_harness_runs_it_with_the_tasks_moves():
    from ray_bilevel.benchmark.methods import FORK_FRACTION, FORK_SCALE, build_experiment
    from ray_bilevel.benchmark.trainables import BenchForkTrainable, trainable_class
    from ray_bilevel.space import Budget
    from ray_bilevel.tasks.noise_schedule.benchmark import FORK_MOVES

    spec = build_experiment("noise_schedule", "bilevel_fork", {"task": "noise_schedule", "preset": "smoke"},
                            "fid_domain_val", "min", 2, Budget(trials=2), 0, 1)
    assert spec.bilevel and spec.param_space["fork_moves"] == FORK_MOVES
    assert (spec.param_space["fork"], spec.param_space["fork_scale"]) == (FORK_FRACTION, FORK_SCALE)
    assert trainable_class(spec.bilevel, spec.param_space) is BenchForkTrainable
    toy = build_experiment("toy", "bilevel_fork", {"task": "toy"}, "upper_loss", "min", 2, Budget(trials=2), 0, 1)
    assert "fork_moves" not in toy.param_space  # no moves declared: 10 % of each parameter's range


@pytest.mark.slow
def test_the_example_runs_through_tune_run_and_returns_the_answer(ray_local, tmp_path):
    """examples/fork_step_tune_run.py at smoke size: ``tune.run(ForkStepTrainable, ...)`` on the noise schedule, whose
    last report is the answer (the stepped schedule if it beat the default branch on validation) with test values."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "fork_step_tune_run.py"
    spec = importlib.util.spec_from_file_location("fork_step_tune_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    last = module.main(["--preset", "smoke", "--storage-path", str(tmp_path)])
    assert last["done"] and last["fork_phase"] in (1.0, 2.0) and "fid_domain" in last
    stepped = {k: last[f"fork_step_{k}"] for k in ("start", "end", "tau", "eps")}
    answer = {k: last[k] for k in stepped}
    assert answer == (stepped if last["fid_domain_val"] < last["fork_base"] else {**stepped, "start": 0.0, "end": 1.0,
                                                                                  "tau": 1.0})
