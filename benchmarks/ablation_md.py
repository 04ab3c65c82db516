"""The ablation table of a compare.py results folder: each route of a bilevel method on and off, and against the best
peer, paired by seed (issue #24: "each route's contribution (on, off) in test metric and cost_flops").
A route whose "off" is the same method with other settings (``compare.py --methods bilevel --set KEY=VALUE`` run
apart) joins that run's rows under a name of its own: ``--variant bilevel_gradient=DIR:bilevel``.

    python benchmarks/ablation_md.py RESULTS_DIR --route "learn, then retrain=bilevel_retrain:bilevel" [--route ...]
                                     [--variant LABEL=DIR[:METHOD] ...]

A route is ``NAME=ON:OFF``: two methods of the same run that differ by that route alone (e.g. ``bilevel_retrain``
is ``bilevel`` plus one fresh training at the learned schedule). Per route: the test selection metric and counted
compute of both (mean ± 95 % t half-width over seeds), ON − OFF paired by seed with its interval and verdict, and
ON − the best peer: the method with the best mean test selection metric among the others, leaving out the routes'
methods, the default configuration and the dense oracle (whose cost is a sweep's, not a tuner's budget). Choosing
the best peer by its test mean is descriptive: it names the strongest competitor the table has, not a method anyone
could have chosen. Nothing is measured here; the output is built from committed JSON (benchmarks/refresh_md.py).
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from ray_bilevel.benchmark.evaluation import add_regret
from ray_bilevel.benchmark.stats import mean_ci, paired_differences, task_mode
from ray_bilevel.benchmark.store import read_json
from ray_bilevel.benchmark.tables import difference_cell, format_number, print_markdown
from ray_bilevel.config import ConfigError

__all__ = ["parse_route", "parse_variant", "variant_rows", "table", "main"]

#: Methods never taken as "the best peer": the untuned default and the oracle sweep.
NOT_PEERS = ("default", "dense")


def parse_route(text: str) -> tuple[str, str, str]:
    """``"NAME=ON:OFF"`` → (name, on, off)."""
    name, sep, pair = text.partition("=")
    on, sep2, off = pair.partition(":")
    if not (sep and sep2 and name.strip() and on.strip() and off.strip()):
        raise ConfigError(f"a route looks like 'learn, then retrain=bilevel_retrain:bilevel', got {text!r}.")
    return name.strip(), on.strip(), off.strip()


def parse_variant(text: str) -> tuple[str, str, str]:
    """``"LABEL=DIR[:METHOD]"`` → (label, folder, method); the method defaults to ``bilevel``."""
    label, sep, rest = text.partition("=")
    folder, _, method = rest.rpartition(":") if ":" in rest else (rest, "", "bilevel")
    if not (sep and label.strip() and folder.strip() and method.strip()):
        raise ConfigError(f"a variant looks like 'bilevel_gradient=docs/benchmarks/DIR:bilevel', got {text!r}.")
    return label.strip(), folder.strip(), method.strip()


def variant_rows(rows: Sequence[dict[str, Any]], label: str, other: Sequence[dict[str, Any]],
                 method: str) -> list[dict[str, Any]]:
    """``other``'s rows of ``method``, renamed ``label``, checked to be the same task and preset as ``rows``."""
    if any(r.get("method") == label for r in rows):
        raise ConfigError(f"--variant {label}: the run already has a method of that name; choose another label.")
    picked = [dict(r, method=label) for r in other if r.get("method") == method]
    if not picked:
        raise ConfigError(f"--variant {label}: no rows of method {method!r} there "
                          f"(it has {sorted({str(r.get('method')) for r in other})}).")
    for key in ("task", "preset"):
        mine, theirs = {r.get(key) for r in rows}, {r.get(key) for r in picked}
        if not theirs <= mine:
            raise ConfigError(f"--variant {label}: {key} {sorted(map(str, theirs))} is not the run's "
                              f"{sorted(map(str, mine))}; compare runs of one task and preset.")
    return picked


def _pm(values: list[float]) -> str:
    mean, low, high, n = mean_ci(values)
    if mean is None:
        return "–"
    return format_number(mean) + ("" if high is None or n < 2 else f" ± {format_number(high - mean, 2)}")


def _values(rows: Sequence[dict[str, Any]], method: str, key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get("method") == method and r.get(key) is not None]


def best_peer(rows: Sequence[dict[str, Any]], exclude: set[str], mode: str | None) -> str | None:
    """The method (not in ``exclude`` nor :data:`NOT_PEERS`) with the best mean test selection metric."""
    means = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        if m in exclude or m in NOT_PEERS:
            continue
        mean = mean_ci(_values(rows, m, "metric_value"))[0]
        if mean is not None:
            means[m] = mean
    if not means:
        return None
    return (min if mode != "max" else max)(means, key=lambda m: means[m])


def table(rows: Sequence[dict[str, Any]], routes: Sequence[tuple[str, str, str]]) -> str:
    """The markdown table (see the module docstring) of one task's rows."""
    tasks = {r.get("task") for r in rows}
    if len(tasks) != 1:
        raise ConfigError(f"one task per ablation table, found {sorted(map(str, tasks))}.")
    methods = {r["method"] for r in rows}
    for name, on, off in routes:
        missing = [m for m in (on, off) if m not in methods]
        if missing:
            raise ConfigError(f"route {name!r}: no rows of {missing} in this run (it has {sorted(methods)}).")
    metric, mode = rows[0].get("metric") or "metric_value", task_mode(rows)
    peer = best_peer(rows, {m for _, on, off in routes for m in (on, off)}, mode)
    lines = [f"| route | on | off | seeds | {metric} test: on | off | on − off | GFLOP: on | off | best peer "
             f"({peer or '–'}) {metric} test | on − best peer |", "|" + "---|" * 11]
    for name, on, off in routes:
        diffs = {(d["method"], d["metric"]): d for d in paired_differences(rows, reference=on)}
        seeds = len({r.get("seed") for r in rows if r.get("method") == on})
        peer_cells = ("–", "–") if peer is None else (_pm(_values(rows, peer, "metric_value")),
                                                      difference_cell(diffs.get((peer, "metric_value"))))
        gflop_on, gflop_off = ([v / 1e9 for v in _values(rows, m, "cost_flops")] for m in (on, off))
        lines.append(f"| {name} | {on} | {off} | {seeds} | {_pm(_values(rows, on, 'metric_value'))} | "
                     f"{_pm(_values(rows, off, 'metric_value'))} | {difference_cell(diffs.get((off, 'metric_value')))} "
                     f"| {_pm(gflop_on)} | {_pm(gflop_off)} | {peer_cells[0]} | {peer_cells[1]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results_dir", help="a benchmarks/compare.py results folder (results.json)")
    p.add_argument("--route", action="append", required=True,
                   help="NAME=ON:OFF, e.g. 'retrain=bilevel_retrain:bilevel'")
    p.add_argument("--task", default=None, help="the task's rows to use when the folder holds several")
    p.add_argument("--variant", action="append", default=[],
                   help="LABEL=DIR[:METHOD]: METHOD's rows (default bilevel) of another results folder, as LABEL")
    args = p.parse_args(argv)

    def load(folder: str) -> list[dict[str, Any]]:
        path = os.path.join(folder, "results.json")
        rows = [dict(r) for r in read_json(path, f"pass a compare.py results folder; {path} is unreadable.",
                                           expect=list)]
        return [r for r in rows if r.get("task") == args.task] if args.task else rows

    def build() -> str:
        rows = load(args.results_dir)
        for text in args.variant:
            label, folder, method = parse_variant(text)
            rows += variant_rows(rows, label, load(folder), method)
        add_regret(rows)
        return table(rows, [parse_route(r) for r in args.route])

    return print_markdown("ablation_md.py", build)


if __name__ == "__main__":
    raise SystemExit(main())
