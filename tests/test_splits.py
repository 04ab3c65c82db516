"""Tune on validation, report on test: no tuning code path reads the test split, and the λ bilevel method's own
guided generation is part of its timed trial (its cost), not of the reporting evaluation."""
from __future__ import annotations

import pytest

from ray_bilevel.tasks import get_task


class SplitReadError(AssertionError):
    pass


def _forbid_test(monkeypatch) -> None:
    """Make every way into the test split raise: real test images, and the test noise / reference seeds."""
    from ray_bilevel.tasks.noise_schedule.evaluation import UpperMetrics
    from ray_bilevel.tasks.reward_lambda.backends import DigitsBackend
    from ray_bilevel.tasks.reward_lambda.task import RewardLambdaTask

    real, noise_seed, real_images = UpperMetrics.real, RewardLambdaTask._noise_seed, DigitsBackend.real_images

    def guarded_real(self, split):
        if split == "test":
            raise SplitReadError("noise_schedule read its test images")
        return real(self, split)

    def guarded_seed(self, split, *parts):
        if split == "test":
            raise SplitReadError("reward_lambda drew its test noise or reference set")
        return noise_seed(self, split, *parts)

    def guarded_images(self, cfg, split):
        if split == "test":
            raise SplitReadError("reward_lambda read its test digits")
        return real_images(self, cfg, split)

    monkeypatch.setattr(UpperMetrics, "real", guarded_real)
    monkeypatch.setattr(RewardLambdaTask, "_noise_seed", guarded_seed)
    monkeypatch.setattr(DigitsBackend, "real_images", guarded_images)


@pytest.mark.parametrize("name", ["noise_schedule", "reward_lambda", "weighted_sum"])
def test_no_tuning_path_reads_the_test_split(name, monkeypatch):
    _forbid_test(monkeypatch)
    task = get_task(name)({"preset": "smoke", "seed": 0})
    for _ in range(2):
        task.hyper_step()
        task.lower_step()
        task.evaluate()
    final = task.evaluate(final=True)
    key = task.tuning_metric()
    assert key.endswith("_val") and key in final
    assert not any(k in final for k in (task.metric, "fid", "is"))  # test values are never in a tuning report
    with pytest.raises(SplitReadError):  # the guard is real: reporting does read the test split
        task.evaluate_test(full=False)


def test_trainables_never_report_test_values_unless_asked(ray_local, tmp_path, monkeypatch):
    from ray import tune

    from ray_bilevel import BilevelTrainable

    analysis = tune.run(BilevelTrainable, config={"task": "noise_schedule", "preset": "smoke", "seed": 0},
                        stop={"done": True}, storage_path=str(tmp_path), verbose=0)
    last = analysis.trials[0].last_result
    assert "fid_domain_val" in last and "fid_domain" not in last and last["cpu_s"] > 0


def test_lambda_bilevel_generation_is_inside_its_timed_trial():
    """The λ bilevel answer is a guided generation at the learned λ: its last step makes it (booked in ``cpu_s``)."""
    from ray_bilevel.benchmark.trainables import BenchBilevelTrainable

    trainable = BenchBilevelTrainable(config={"task": "reward_lambda", "preset": "smoke", "seed": 0})
    reports = []
    while not (reports and reports[-1]["done"]):
        reports.append(trainable.train())
    c = trainable.task.cfg
    assert reports[0]["guided_images"] == 0  # between λ steps: no generation yet
    assert reports[-1]["guided_images"] == c.guide_batch * c.repeats and "alignment_val" in reports[-1]
    assert reports[-1]["cpu_s"] > reports[0]["cpu_s"] > 0
    generated = trainable.task._guided_images()
    assert generated is not None and len(generated) == c.guide_batch * c.repeats
    trainable.stop()
