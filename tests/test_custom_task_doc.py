"""docs/custom_task.md: its code block is examples/custom_task.py, whose hypergradient is right and which runs under
tune.Tuner and through the compare harness at the smoke preset."""
from __future__ import annotations

import importlib.util
import io
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_task.py"


@pytest.fixture(scope="module")
def example():
    """The example imported as a module; Ray workers cannot import it, so its classes travel by value."""
    import ray.cloudpickle as cp

    spec = importlib.util.spec_from_file_location("custom_task_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    cp.register_pickle_by_value(module)
    yield module
    cp.unregister_pickle_by_value(module)
    del sys.modules[spec.name]


def test_the_doc_holds_the_example_verbatim():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "custom_task.md").read_text(), re.S)
    assert blocks and blocks[0] == EXAMPLE.read_text()


def test_the_penalty_hypergradient_matches_the_exact_one(example):
    """γ eˣ (roughness(z) − roughness(y)) at converged y, z against a central difference of the closed-form
    F(x) = f(w*(x)), w*(x) = (I + eˣ DᵀD)⁻¹ y_train: within the O(1/γ) bias of the penalty method."""
    task = example.SmoothingTask({"seed": 0, "smooth": 2.0})
    n, x = task.n, task.x
    lip = 2 * (1 + 4 * float(x.exp())) / n
    y = task._descend(task.y, lambda w: task.g(x, w), lip, 3000)
    z = task._descend(task.z, lambda w: task.f(w) + example.GAMMA * task.g(x, w), 2 / n + example.GAMMA * lip, 3000)
    penalty = float(example.GAMMA * x.exp() * (task.roughness(z) - task.roughness(y)))
    diff = torch.diff(torch.eye(n, dtype=torch.float64), dim=0)

    def upper(x_: float) -> float:
        w = torch.linalg.solve(torch.eye(n, dtype=torch.float64) + math.exp(x_) * diff.T @ diff, task.train)
        return float(task.f(w))

    exact = (upper(float(x) + 1e-4) - upper(float(x) - 1e-4)) / 2e-4
    assert exact < 0 and abs(penalty - exact) < 0.05 * abs(exact), (penalty, exact)


def test_the_task_keeps_its_contract(example):
    task = example.SmoothingTask({"seed": 1, "preset": "smoke"})
    assert set(task.evaluate()) == {"mse_val"}  # tuning reads validation only
    assert set(task.evaluate_test()) == {"mse", "mse_val"}
    for _ in range(2):
        task.hyper_step()
    buffer = io.BytesIO()
    torch.save(task.state_dict(), buffer)
    buffer.seek(0)
    twin = example.SmoothingTask({"seed": 1, "preset": "smoke"})
    twin.load_state_dict(torch.load(buffer, weights_only=True))
    assert task.hyper_step() == twin.hyper_step() and task.hyperparameters() == twin.hyperparameters()
    fixed = example.SmoothingTask({"seed": 1, "preset": "smoke", "smooth": 10.0})  # a searcher's trial
    assert fixed.hyperparameters() == pytest.approx({"smooth": 10.0})


def test_the_example_runs_under_tune_and_the_harness(example, ray_local, tmp_path, capsys):
    example.main(["--preset", "smoke", "--out", str(tmp_path / "tuner")])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("seed ")]
    assert len(lines) == 2, lines
    smooth = [float(re.search(r"smooth ([0-9.e+-]+),", line)[1]) for line in lines]
    assert all(s > 3.0 for s in smooth), smooth  # learned from λ = 1 towards the validation optimum (about 10-25)

    out = tmp_path / "compare"
    example.main(["--compare", "--preset", "smoke", "--methods", "default,bilevel,random,dense", "--out", str(out)])
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
    assert list(rows) == ["default", "bilevel", "random", "dense"]
    assert {r["task"] for r in rows.values()} == {"smoothing"}
    assert rows["bilevel"]["metric_value"] < rows["default"]["metric_value"]  # test loss of the chosen answers
    assert "| bilevel | 1 |" in capsys.readouterr().out
