"""The contract every registered Task passes (smoke preset): the seam the Tune layer relies on."""
from __future__ import annotations

import io
import math

import pytest
import torch

from ray_bilevel.tasks import _REGISTRY, get_task


def _build(name: str, seed: int = 0):
    return get_task(name)({"task": name, "preset": "smoke", "seed": seed})


def _assert_finite(report: dict, where: str) -> None:
    assert report, f"{where} returned an empty report"
    for key, value in report.items():
        assert isinstance(value, (int, float)), f"{where}: {key} is {type(value).__name__}"
        assert math.isfinite(value), f"{where}: {key} = {value}"


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


TASKS = sorted(_REGISTRY)


@pytest.mark.parametrize("name", TASKS)
def test_reports_are_flat_and_finite(name):
    task = _build(name)
    assert task.outer_budget >= 1 and task.lower_budget >= 1
    hyper = task.hyperparameters()
    _assert_finite(hyper, "hyperparameters")
    _assert_finite(task.hyper_step(), "hyper_step")
    _assert_finite(task.lower_step(), "lower_step")
    _assert_finite(task.evaluate(final=False), "evaluate")
    assert set(task.hyperparameters()) == set(hyper)
    _assert_finite(task.hyperparameters(), "hyperparameters after a step")


@pytest.mark.parametrize("name", TASKS)
def test_seeded_runs_repeat_exactly(name):
    a, b = _build(name, seed=7), _build(name, seed=7)
    assert a.hyper_step() == b.hyper_step()
    assert a.hyperparameters() == b.hyperparameters()
    assert a.evaluate() == b.evaluate()


@pytest.mark.slow
@pytest.mark.parametrize("name", TASKS)
def test_state_round_trip_continues_identically(name):
    a = _build(name, seed=3)
    a.hyper_step()
    state = _roundtrip(a.state_dict())  # must be weights_only-loadable
    b = _build(name, seed=3)
    b.load_state_dict(state)
    assert b.hyperparameters() == a.hyperparameters()
    assert a.hyper_step() == b.hyper_step()
    assert a.lower_step() == b.lower_step()
    assert a.hyperparameters() == b.hyperparameters()


@pytest.mark.parametrize("name", TASKS)
def test_set_hyperparameters_in_place(name):
    task = _build(name)
    hyper = task.hyperparameters()
    key = sorted(hyper)[0]
    task.set_hyperparameters({key: hyper[key]})
    assert task.hyperparameters() == hyper
