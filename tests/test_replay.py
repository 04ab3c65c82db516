"""PBT / PB2 replay: a population's answer re-run from scratch under its hyperparameter schedule.

* the policy log's lineage is read as Tune writes it (each row's trial is the donor of the next);
* ``FixedHyperTrainable(hyper_schedule=...)`` switches its hyperparameters after the logged iterations, also after a
  restore from a checkpoint;
* the harness's ``pbt_replay`` books the population and the replay, and its answer is the replayed trial.
"""
from __future__ import annotations

import json

import pytest

from ray_bilevel.config import ConfigError
from ray_bilevel.tune.replay import check_schedule, policy_schedule, schedule_for, scheduled_values


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_policy_log_gives_the_lineage_of_the_final_state(tmp_path):
    path = tmp_path / "pbt_policy_c.txt"
    # a row of another lineage (e took a's state) that c's donor chain does not reach, then c's own lineage:
    # c took b's state at b's iteration 2 with x0 = 0.5, then took d's state at d's iteration 4 with x0 = 2.0,
    # where d had earlier taken b's state at iteration 2 with x0 = 1.5
    _write(path, [
        ["e", "a", 1, 1, {"x0": 1.0, "x1": 0.0, "seed": 3}, {"x0": 1.2, "x1": 0.0, "seed": 3}],
        ["d", "b", 2, 2, {"x0": 0.7, "x1": 0.1, "seed": 3}, {"x0": 1.5, "x1": 0.1, "seed": 3}],
        ["c", "d", 4, 4, {"x0": 1.5, "x1": 0.1, "seed": 3}, {"x0": 2.0, "x1": 0.1, "seed": 3}],
    ])
    initial, changes = policy_schedule(str(path))
    assert initial == {"x0": 0.7, "x1": 0.1, "seed": 3}  # b's config when d took its state
    assert changes == [(2, {"x0": 1.5, "x1": 0.1, "seed": 3}), (4, {"x0": 2.0, "x1": 0.1, "seed": 3})]
    schedule = check_schedule(schedule_for(changes, ["x0", "x1"]))
    assert schedule == [(2, {"x0": 1.5, "x1": 0.1}), (4, {"x0": 2.0, "x1": 0.1})]
    assert [scheduled_values(schedule, i).get("x0") for i in range(6)] == [None, None, 1.5, 1.5, 2.0, 2.0]
    assert policy_schedule(str(tmp_path / "pbt_policy_never_exploited.txt")) == (None, [])


@pytest.mark.parametrize("bad", [{"2": {}}, [[-1, {}]], [[1.5, {"x0": 1}]], [[1, 2]], [["1", {}]]])
def test_a_bad_schedule_is_refused_in_one_line(bad):
    with pytest.raises(ConfigError, match=r"hyper_schedule"):
        check_schedule(bad)


def test_a_garbled_policy_log_is_refused_with_its_line(tmp_path):
    path = tmp_path / "pbt_policy_x.txt"
    path.write_text('["b", "a", 1, 1, {}, {}]\nnot json\n')
    with pytest.raises(ConfigError, match=r"pbt_policy_x.txt:2"):
        policy_schedule(str(path))


def _toy_trainable(**extra):
    from ray_bilevel.tune import FixedHyperTrainable

    config = {"task": "toy", "preset": "smoke", "seed": 0, "x0": 0.5, "x1": -1.0, "lower_steps_per_iteration": 2,
              **extra}
    return FixedHyperTrainable(config=config)


def test_the_fixed_trainable_follows_the_schedule_and_keeps_it_across_a_restore(tmp_path):
    schedule = [[1, {"x0": 1.5}], [2, {"x0": 2.5, "x1": 0.0}]]
    t = _toy_trainable(hyper_schedule=schedule)
    seen = [t.train()["x0"]]  # iteration 1 runs at the config's x0
    ckpt = t.save(str(tmp_path / "ckpt"))
    seen += [t.train()["x0"], t.train()["x0"]]
    assert seen == [0.5, 1.5, 2.5] and t.task.hyperparameters()["x1"] == 0.0
    twin = _toy_trainable(hyper_schedule=schedule)
    twin.restore(ckpt)  # back at iteration 1: the next step runs at the value in force after iteration 1
    assert [twin.train()["x0"], twin.train()["x0"]] == [1.5, 2.5]
    t.stop()
    twin.stop()
    with pytest.raises(ConfigError, match=r"hyper_schedule.*\['lam'\].*not hyperparameters"):
        _toy_trainable(hyper_schedule=[[1, {"lam": 2.0}]])


@pytest.mark.slow
def test_pbt_replay_books_the_population_and_the_replay_and_answers_with_the_replay(tmp_path):
    from ray_bilevel.benchmark import BenchmarkConfig, run_benchmark

    cfg = BenchmarkConfig(tasks=["toy"], preset="smoke", methods=["pbt", "pbt_replay"], trials=4,
                          out=str(tmp_path), verbose=0, plots=False, concurrent_methods=1)
    runs = {r.row["method"]: r for r in run_benchmark(cfg)}
    pop, rep = runs["pbt"].row, runs["pbt_replay"].row
    assert rep["trials"] == pop["trials"] + 1
    assert rep["cost_flops"] > pop["cost_flops"]  # the population (same seed, same draws) plus one more training
    one = rep["cost_flops"] - pop["cost_flops"]
    assert one == pytest.approx(pop["cost_flops"] / pop["trials"], rel=0.5)  # about one trial's compute
    schedule = rep["schedule"]
    assert set(schedule["initial"]) == {"x0", "x1"} and isinstance(schedule["changes"], list)
    # the answer is the replayed trial: its final hyperparameters are the schedule's last values
    final = dict(schedule["initial"])
    for _, change in schedule["changes"]:
        final.update(change)
    assert rep["best_config"] == pytest.approx(final)
    assert rep["metric_value"] is not None
    # nothing was resumed: this invocation's CPU-s are the rows' own (an exploit's inherited counter is not re-added)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["reused_cpu_s"] == pytest.approx(0.0, abs=0.05)
    assert pop["session_cpu_s"] == pytest.approx(pop["cpu_s"], abs=0.05)
