"""Your own bilevel problem as a Task: learn how strongly to smooth a noisy signal (docs/custom_task.md).

    python examples/custom_task.py             # tune.Tuner: the bilevel method on two seeds
    python examples/custom_task.py --compare   # the compare harness: bilevel against default, grid, random, ...

Lower level: w*(x) = argmin_w g(x, w), g = mean((w - y_train)^2) + e^x * sum(diff(w)^2) / n, trained by gradient
steps; x = log of the smoothing strength. Upper level: the validation loss f(w) = mean((w - y_val)^2), where y_val
is a second noisy copy of the same signal. The hypergradient is the penalty method of docs/algorithms.md §1.
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ray_bilevel.cost import book
from ray_bilevel.space import Param, SearchSpace
from ray_bilevel.tasks import Task

GAMMA, LR_X, INNER = 100.0, 20.0, 50  # penalty constant, step on x = log(smooth), gradient steps per outer step
OUTER = {"smoke": 8, "quick": 30, "paper": 60}  # outer steps per preset


class SmoothingTask(Task):
    """Denoise a 1-D signal; the upper variable is the smoothing strength `smooth` (searched on a log scale)."""

    name = "smoothing"
    metric, mode, selection_metric = "mse", "min", "mse_val"

    @classmethod
    def search_space(cls) -> SearchSpace:
        return SearchSpace(params=(Param("smooth", 0.01, 100.0, log=True, default=1.0, grid=(1.0, 0.1, 10.0, 100.0)),),
                           n_calls=10)

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        gen = torch.Generator().manual_seed(int(config.get("seed", 0)))
        t = torch.linspace(0.0, 1.0, 128, dtype=torch.float64)
        signal = torch.sin(2 * math.pi * t) + 0.5 * torch.sign(torch.sin(3 * math.pi * t))
        # three noisy copies: train (the lower level's data), validation (tuning reads it), test (reporting only)
        self.train, self.val, self.test = (signal + 0.5 * torch.randn(128, generator=gen, dtype=torch.float64)
                                           for _ in range(3))
        self.n, self.outer = 128, OUTER[config.get("preset", "quick")]
        self.x = torch.tensor(math.log(float(config.get("smooth", 1.0))), dtype=torch.float64)
        self.y, self.z = self.train.clone(), self.train.clone()  # lower solution y and penalty solution z

    def f(self, w: torch.Tensor) -> torch.Tensor:  # upper objective: the validation loss
        return (w - self.val).square().mean()

    def roughness(self, w: torch.Tensor) -> torch.Tensor:
        return w.diff().square().sum() / self.n

    def g(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # lower objective: data fit + e^x * roughness
        return (w - self.train).square().mean() + x.exp() * self.roughness(w)

    def _descend(self, w: torch.Tensor, objective: Callable, lipschitz: float, steps: int) -> torch.Tensor:
        for _ in range(steps):  # gradient descent with step 1/L
            w = w.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(w), w)
            w = w - grad / lipschitz
            book("smoother", 12.0 * self.n)  # counted compute (cost_flops): about 12 FLOPs a point per step
        return w.detach()

    # -- the Task protocol ---------------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, float]:
        return {"smooth": float(self.x.exp())}

    def set_hyperparameters(self, values: Mapping[str, float]) -> None:
        self.x = torch.tensor(math.log(float(values.get("smooth", self.x.exp()))), dtype=torch.float64)

    @property
    def outer_budget(self) -> int:
        return self.outer

    @property
    def lower_budget(self) -> int:  # a fixed-hyperparameter trial gets the lower-level work of one bilevel run
        return self.outer * INNER

    def lower_step(self) -> dict[str, float]:
        lip = 2 * (1 + 4 * float(self.x.exp())) / self.n  # L of g in w: the Hessian's largest eigenvalue
        self.y = self._descend(self.y, lambda w: self.g(self.x, w), lip, 1)
        return {"lower_loss": float(self.g(self.x, self.y))}

    def hyper_step(self) -> dict[str, float]:
        x, lip = self.x, 2 * (1 + 4 * float(self.x.exp())) / self.n
        self.y = self._descend(self.y, lambda w: self.g(x, w), lip, INNER)  # y ≈ argmin g(x, .)
        self.z = self._descend(self.z, lambda w: self.f(w) + GAMMA * self.g(x, w),  # z ≈ argmin f + γ g
                               2 / self.n + GAMMA * lip, INNER)
        # eq. (4): ∇F_γ(x) = ∇_x f(z) + γ (∇_x g(x, z) − ∇_x g(x, y)), with ∇_x f = 0 and ∇_x g(x, w) = e^x roughness(w)
        grad = GAMMA * x.exp() * (self.roughness(self.z) - self.roughness(self.y))
        self.x = (x - LR_X * grad).clamp(math.log(0.01), math.log(100.0))  # projected step on x
        return {"hypergrad_norm": abs(float(grad)), "lower_loss": float(self.g(self.x, self.y))}

    def evaluate(self, final: bool = False) -> dict[str, float]:  # validation only: what tuning may read
        return {"mse_val": float(self.f(self.y))}

    def evaluate_test(self, full: bool = True) -> dict[str, float]:  # reporting only: the test copy
        return {"mse": float((self.y - self.test).square().mean()), **self.evaluate(final=True)}

    def state_dict(self) -> dict[str, Any]:  # the data is rebuilt from the seed; the rest continues identically
        return {"x": self.x.clone(), "y": self.y.clone(), "z": self.z.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.x, self.y, self.z = state["x"].clone(), state["y"].clone(), state["z"].clone()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compare", action="store_true", help="run the compare harness instead of one Tuner")
    p.add_argument("--preset", default="quick", choices=sorted(OUTER))
    p.add_argument("--methods", default=None, help="--compare: comma-separated methods (default: the task's baselines)")
    p.add_argument("--out", default="benchmark_results/smoothing", help="results folder")
    a = p.parse_args(argv)
    if a.compare:  # what benchmarks/compare.py runs, with this Task class in place of a registered name
        from ray_bilevel.benchmark import BenchmarkConfig, run_benchmark

        methods = a.methods.split(",") if a.methods else None
        run_benchmark(BenchmarkConfig(tasks=[SmoothingTask], preset=a.preset, methods=methods, out=a.out, verbose=0))
        print(open(f"{a.out}/table.md").read())
        return
    from ray import tune

    from ray_bilevel import BilevelTrainable

    results = tune.Tuner(
        BilevelTrainable,
        param_space={"task": SmoothingTask, "preset": a.preset, "seed": tune.grid_search([0, 1]), "test_at_end": True},
        tune_config=tune.TuneConfig(metric="mse_val", mode="min"),  # select on validation, read test at the end
        run_config=tune.RunConfig(storage_path=os.path.abspath(a.out), verbose=0),
    ).fit()
    for r in results:
        print(f"seed {r.config['seed']}: smooth {r.metrics['smooth']:.3g}, validation mse {r.metrics['mse_val']:.4f}, "
              f"test mse {r.metrics['mse']:.4f}")


if __name__ == "__main__":
    main()
