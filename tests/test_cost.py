"""Counted compute (``cost_flops``, ray_bilevel/cost.py): ground truth against FlopCounterMode, booked once per
trial for cached work, deterministic across processes, actor reuse, restores and concurrency."""
from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ray_bilevel import cost
from ray_bilevel.benchmark.summary import trial_cost
from ray_bilevel.diffusion import build_unet


def _flops(fn, *args) -> float:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return float(counter.get_total_flops())


@pytest.fixture
def unet():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_unet(16, 1, (16, 32), 1)


def test_unet_forward_and_backward_match_the_flop_counter(unet):
    x, t = torch.randn(6, 1, 16, 16), torch.randint(0, 1000, (6,))
    truth = _flops(lambda: unet(x, t))  # the whole batch, counted op by op
    meter = cost.FlopMeter()
    with cost.metering(meter):
        unet(x, t).sample.square().mean().backward()  # forward + backward: 3x the forward
    assert meter.by_network == {"unet": pytest.approx(3 * truth)}
    with cost.metering(meter), torch.no_grad():
        unet(x[:2], t[:2])  # 2 samples without grad: forward only
    assert meter.total == pytest.approx(3 * truth + truth / 3)


def test_counting_changes_nothing_a_trial_computes(unet):
    x, t = torch.randn(4, 1, 16, 16), torch.randint(0, 1000, (4,))
    torch.manual_seed(1)
    plain = unet(x, t).sample
    after_plain = torch.rand(3)
    other = copy.deepcopy(unet)  # a fresh copy: its first counted call measures its per-sample FLOPs
    torch.manual_seed(1)
    with cost.metering(cost.FlopMeter()):
        counted = other(x, t).sample
    after_counted = torch.rand(3)
    assert torch.equal(plain, counted)
    assert torch.equal(after_plain, after_counted)  # the measurement left the global RNG alone
    assert other.training == unet.training


def test_no_active_meter_counts_nothing(unet):
    meter = cost.FlopMeter()
    unet(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]))
    assert meter.total == 0.0 and cost.active_meter() is None


def test_nested_watched_calls_count_once(unet):
    class Outer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = unet

        def forward(self, x, t):
            return self.inner(x, t).sample * 2

    outer = cost.watch(Outer(), "outer")
    x, t = torch.randn(3, 1, 16, 16), torch.randint(0, 1000, (3,))
    meter = cost.FlopMeter()
    with cost.metering(meter), torch.no_grad():
        outer(x, t)
    assert set(meter.by_network) == {"outer"}
    assert meter.total == pytest.approx(_flops(lambda: unet(x, t)))


def test_count_call_of_a_function_books_per_sample(unet):
    meter = cost.FlopMeter()
    x, t = torch.randn(5, 1, 16, 16), torch.randint(0, 1000, (5,))
    with cost.metering(meter), torch.no_grad():
        cost.count_call("features", unet, lambda a, b: unet.forward(a, b).sample, x, t)
    assert meter.by_network["features"] == pytest.approx(_flops(lambda: unet(x, t)))


def test_cached_work_is_booked_once_per_meter_whether_computed_or_found(unet):
    store: dict = {}
    x, t = torch.randn(4, 1, 16, 16), torch.randint(0, 1000, (4,))

    def compute():
        with torch.no_grad():
            return unet(x, t).sample

    first, second = cost.FlopMeter(), cost.FlopMeter()
    with cost.metering(first):
        cost.cached(store, "ref", "label", compute)  # computed
        cost.cached(store, "ref", "label", compute)  # found: already paid by this meter
    with cost.metering(second):
        cost.cached(store, "ref", "label", compute)  # found in the process cache: still costs what computing costs
    assert first.total == second.total == pytest.approx(_flops(lambda: unet(x, t)))
    third = cost.FlopMeter()
    third.load_state_dict(second.state_dict())  # a restored trial has paid already
    with cost.metering(third):
        cost.once("label", compute)
    assert third.total == second.total


def test_pbt_trial_cost_is_its_own_increments_not_the_donors_counter():
    class Result:
        metrics_dataframe = pd.DataFrame({"cost_flops_step": [10.0, 10.0, 10.0], "cost_flops": [10.0, 120.0, 130.0],
                                          "cpu_s_step": [1.0, 1.5, 1.0], "cpu_s": [1.0, 12.0, 13.0]})

    last = {"cost_flops": 130.0, "cost_flops_by_network": {"unet": 100.0, "digit_classifier": 30.0}, "cpu_s": 13.0}
    own, by_network, cpu = trial_cost(Result(), last)  # exploited a donor that had spent 100 at its second report
    assert own == 30.0 and cpu == 3.5  # its own work, its rebuild (0.5 CPU-s) included, not the donor's
    assert by_network == pytest.approx({"unet": 30.0 * 100 / 130, "digit_classifier": 30.0 * 30 / 130})


def _run(cls, config, until=None):
    trainable = cls(config=config)
    report = {}
    while not report.get("done") and (until is None or report.get("training_iteration", 0) < until):
        report = trainable.train()
    return trainable, report


@pytest.mark.parametrize("task", ["reward_lambda", pytest.param("noise_schedule", marks=pytest.mark.slow)])
def test_trial_cost_is_the_same_with_warm_caches_and_after_a_restore(task, tmp_path):
    from ray_bilevel.tune.trainable import BilevelTrainable

    config = {"task": task, "preset": "smoke", "seed": 0}
    first, a = _run(BilevelTrainable, config)
    first.stop()
    warm, b = _run(BilevelTrainable, config)  # same process: the backend, reference set and FID statistics are cached
    warm.stop()
    assert a["cost_flops"] > 0 and a["cost_flops"] == b["cost_flops"]
    assert a["cost_flops_by_network"] == b["cost_flops_by_network"]
    assert a["cost_flops_step"] > 0
    half, _ = _run(BilevelTrainable, config, until=1)
    path = half.save(str(tmp_path / "ckpt"))
    half.stop()
    restored = BilevelTrainable(config=config)
    restored.restore(path)
    report = {}
    while not report.get("done"):
        report = restored.train()
    restored.stop()
    assert report["cost_flops"] == a["cost_flops"]
    assert report["cpu_s_step"] > 0 and report["cpu_s"] > 0


@pytest.mark.slow
def test_method_cost_is_the_same_one_method_at_a_time_and_concurrently(ray_local, tmp_path):
    """``compare.py --concurrent-methods 1`` and ``auto`` (2 methods at once here, each searcher's trials on reused
    actors with warm process caches) book the same ``cost_flops`` per row, to the FLOP."""
    from ray_bilevel.benchmark import BenchmarkConfig, run_benchmark

    kw = dict(tasks=["reward_lambda"], preset="smoke", methods=["default", "bilevel", "random"], trials=2, verbose=0,
              plots=False)
    one = run_benchmark(BenchmarkConfig(**kw, out=str(tmp_path / "one"), concurrent_methods=1))
    two = run_benchmark(BenchmarkConfig(**kw, out=str(tmp_path / "two"), concurrent_methods=None))
    for a, b in zip(one, two):
        assert a.row["method"] == b.row["method"]
        assert a.row["cost_flops"] > 0 and a.row["cost_flops"] == b.row["cost_flops"]
        assert a.row["cost_flops_by_network"] == b.row["cost_flops_by_network"]
        assert [p["cost_flops"] for p in a.row["curve"]] == [p["cost_flops"] for p in b.row["curve"]]
    rows = {r.row["method"]: r.row for r in one}
    assert rows["random"]["cost_flops"] == 2 * rows["default"]["cost_flops"]  # two trials of equal work
    assert (
        rows["random"]["lower_steps"] == 2 * rows["default"]["lower_steps"] and rows["bilevel"]["lower_steps"] is None
    )
