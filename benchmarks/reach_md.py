"""What each method's anytime curve needs to reach a bilevel method's answer, and what bilevel pays for each of
theirs (issue #24's goal: "reaches the answer that the paper-budget searchers reach (15 calls) at ≤ 0.3× their
compute").

    python benchmarks/reach_md.py RESULTS_DIR --method bilevel_fork [--task noise_schedule]

Per method and seed, from the run's ``curves.json`` (the anytime curve: after each finished trial, the test value of
the validation-chosen incumbent and the counted compute spent so far):

* **final**: the method's answer (the curve's last point) and its compute;
* **bilevel at least as good**: whether the bilevel method's answer is at or better than that final answer on
  test, and the bilevel method's compute as a fraction of the method's (``≤ 0.3`` is the issue's goal);
* **compute to match bilevel**: the compute at the first point where the method's curve is at or better than the
  bilevel method's answer, and that over the bilevel method's compute (``never`` when its curve never gets there).

One seed gives one value per cell; several give how many seeds satisfy each comparison and the mean of the
fractions. Matching on test values is a descriptive comparison of answers every method chose on validation; nothing
here chooses anything. Nothing is measured either: the output is built from committed JSON (benchmarks/refresh_md.py).
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from ray_bilevel.benchmark.store import read_json
from ray_bilevel.benchmark.tables import format_number, print_markdown
from ray_bilevel.config import ConfigError

__all__ = ["at_least_as_good", "first_reach", "table", "main"]


def at_least_as_good(value: float, other: float, mode: str) -> bool:
    """``value`` is at or better than ``other`` in the metric's direction (``mode``: "min" or "max")."""
    return value <= other if mode == "min" else value >= other


def first_reach(points: list[Mapping[str, Any]], target: float, mode: str) -> float | None:
    """The compute (FLOPs) at the first curve point at or better than ``target``; ``None`` when none is."""
    for p in points:
        if p.get("metric_value") is not None and at_least_as_good(float(p["metric_value"]), target, mode):
            return float(p["cost_flops"])
    return None


def _final(curve: Mapping[str, Any]) -> tuple[float, float] | None:
    points = [p for p in curve.get("points", []) if p.get("metric_value") is not None]
    return (float(points[-1]["metric_value"]), float(points[-1]["cost_flops"])) if points else None


def _mean(values: list[float]) -> str:
    return format_number(sum(values) / len(values), 3) if values else "–"


def table(curves: Mapping[str, Mapping[str, Mapping[str, Any]]], method: str) -> str:
    """The markdown table (see the module docstring) of one task's curves, ``{method: {seed: curve}}``."""
    if method not in curves:
        raise ConfigError(f"--method {method}: no curves of it in this run (it has {sorted(curves)}).")
    mine = {seed: f for seed, c in curves[method].items() if (f := _final(c)) is not None}
    if not mine:
        raise ConfigError(f"--method {method}: its curves have no point with a test value.")
    first = next(iter(curves[method].values()))
    metric, mode = first.get("metric", "metric_value"), first.get("mode", "min")
    head = (f"| method | seeds | {metric} test | GFLOP | {method} at least as good | {method}'s compute / its | "
            f"GFLOP to match {method} | that / {method}'s compute |")
    lines = [head, "|" + "---|" * 8]
    for other, by_seed in curves.items():
        if other == method:
            continue
        finals, costs, good, ratios, reach, reach_ratio, seeds = [], [], 0, [], [], [], 0
        for seed, curve in by_seed.items():
            final = _final(curve)
            if final is None or seed not in mine:
                continue
            seeds += 1
            (value, cost), (b_value, b_cost) = final, mine[seed]
            finals.append(value)
            costs.append(cost / 1e9)
            good += at_least_as_good(b_value, value, mode)
            ratios.append(b_cost / cost)
            hit = first_reach(curve.get("points", []), b_value, mode)
            if hit is not None:
                reach.append(hit / 1e9)
                reach_ratio.append(hit / b_cost)
        if not seeds:
            continue
        if seeds == 1:
            good_cell = "yes" if good else "no"
            reach_cell = format_number(reach[0]) if reach else "never"
        else:
            good_cell = f"{good} of {seeds}"
            reach_cell = f"{len(reach)} of {seeds} reach; mean {_mean(reach)}" if reach else "never"
        lines.append(f"| {other} | {seeds} | {_mean(finals)} | {_mean(costs)} | {good_cell} | {_mean(ratios)} | "
                     f"{reach_cell} | {_mean(reach_ratio)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results_dir", help="a benchmarks/compare.py results folder (curves.json)")
    p.add_argument("--method", default="bilevel", help="the bilevel method whose answer the others are held to")
    p.add_argument("--task", default=None, help="the task's curves to use when the folder holds several")
    args = p.parse_args(argv)
    path = os.path.join(args.results_dir, "curves.json")

    def build() -> str:
        data = read_json(path, f"pass a compare.py results folder; {path} is unreadable.", expect=dict)
        if args.task is None and len(data) != 1:
            raise ConfigError(f"{path} holds tasks {sorted(data)}: pass --task.")
        task = args.task if args.task is not None else next(iter(data))
        if task not in data:
            raise ConfigError(f"--task {task}: not in {path} (it has {sorted(data)}).")
        return table(data[task], args.method)

    return print_markdown("reach_md.py", build)


if __name__ == "__main__":
    raise SystemExit(main())
