"""What one method produced (:class:`MethodRun`), from its Tune ``ResultGrid``: the row, the trial records, the
validation incumbents and the best checkpoint (:func:`summarise`), and each trial's own cost (:func:`trial_cost`)."""
from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ray_bilevel.benchmark.common import finite, log, plain
from ray_bilevel.benchmark.methods import ExperimentSpec

__all__ = ["MethodRun", "ROW_METRICS", "summarise", "trial_cost"]

#: Metric columns of every row (null where a task does not report them), each with its ``_val`` twin.
ROW_METRICS = ("fid", "fid_domain", "is", "alignment", "reward")


@dataclasses.dataclass
class MethodRun:
    """What one method produced: its row, the per-trial records and the best checkpoint."""

    spec: ExperimentSpec
    row: dict[str, Any]
    trials: list[dict[str, Any]]
    curve: list[tuple[float, float]]  # (seconds since the method started, best metric so far)
    history: list[dict[str, Any]]  # per-iteration reports of the best trial
    best_config: dict[str, Any] | None
    checkpoint: Any = None  # tune.Checkpoint of the best trial's end
    config: dict[str, Any] | None = None  # the best trial's resolved config
    final_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    artifacts: str | None = None  # folder of the exported files of the best checkpoint
    incumbents: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # validation-best trials, in order
    finished: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # every trial, by finishing time


def summarise(spec: ExperimentSpec, grid: Any, wall: float, start: float, hyper_names: Sequence[str]) -> MethodRun:
    """The row, trial records, validation incumbents and the best checkpoint of one ResultGrid.

    ``spec.metric`` is the tuning (validation) metric. Trials are ordered by the time they finished; a trial
    that ran to its end (``done``; not one a scheduler stopped at a rung) and whose validation value beats every
    earlier one is an *incumbent* (the method's answer from then on). Every trial's compute counts. The
    test values of the incumbents (the anytime curve) and of the answer come later, from the reporting
    evaluation."""
    sign = 1.0 if spec.mode == "min" else -1.0
    names = list(hyper_names) + [k for k in spec.hyper_names if k not in hyper_names]
    trials: list[dict[str, Any]] = []
    finished: list[dict[str, Any]] = []
    for result in grid:
        last = result.metrics or {}
        value = finite(last.get(spec.metric))
        config = {k: plain(v) for k, v in (result.config or {}).items() if k in names}
        hyper = {n: plain(last[n]) for n in names if n in last} or config
        flops, by_network, cpu = trial_cost(result, last)
        trials.append({"config": config, spec.metric: value, "cpu_s": cpu, "cost_flops": flops,
                       "time_total_s": finite(last.get("time_total_s")), "iterations": last.get("training_iteration"),
                       "error": str(result.error) if result.error else None})
        end = finite(last.get("reported_at")) or finite(last.get("timestamp")) or 0.0
        finished.append({"end_s": max(0.0, end - start), "cpu_s": cpu or 0.0, "val": value,
                         "cost_flops": flops, "cost_flops_by_network": by_network,
                         "lower_steps": last.get("lower_steps"),
                         # a trial a scheduler stopped at a rung (asha) is not an answer: its lower level is unfinished
                         "done": bool(last.get("complete", last.get("done", True))),
                         "checkpoint": result.checkpoint, "config": dict(result.config or {}), "hyper": hyper,
                         "name": os.path.basename(str(getattr(result, "path", "") or "")),
                         "trial_id": last.get("trial_id")})
    # finishing order; ties (whole-second timestamps of older runs) by the trial folder's name, which a restored
    # experiment keeps (its ResultGrid order is not), so a resumed run draws the same anytime curve
    finished.sort(key=lambda t: (t["end_s"], t["name"]))
    cum, cum_flops, best, incumbents = 0.0, 0.0, None, []
    method_networks: dict[str, float] = {}
    for t in finished:
        cum += t["cpu_s"]
        cum_flops += t["cost_flops"]
        t["cum_cpu_s"], t["cum_cost_flops"] = cum, cum_flops
        for k, v in t["cost_flops_by_network"].items():
            method_networks[k] = method_networks.get(k, 0.0) + v
        if (t["val"] is not None and t["checkpoint"] is not None and t["done"]
                and (best is None or sign * t["val"] < sign * best)):
            best = t["val"]
            incumbents.append(t)
    errors = sum(1 for t in trials if t["error"])
    row: dict[str, Any] = {"task": spec.task, "method": spec.method, "metric": None, "mode": spec.mode,
                           "metric_value": None, "metric_value_val": best, **{m: None for m in ROW_METRICS},
                           **{f"{m}_val": None for m in ROW_METRICS}, "wall_time_s": round(wall, 2),
                           "cpu_s": round(cum, 2), "cost_flops": cum_flops, "cost_gflop": round(cum_flops / 1e9, 3),
                           "cost_flops_by_network": dict(sorted(method_networks.items())), "trials": len(trials),
                           "errors": errors,
                           # lower-level steps over the method's fixed-hyperparameter trials (None for bilevel trials)
                           "lower_steps": sum(int(t["lower_steps"]) for t in finished if t["lower_steps"] is not None)
                           if any(t["lower_steps"] is not None for t in finished) else None,
                           "trial_time_s": round(sum(t["time_total_s"] or 0.0 for t in trials), 2),
                           "final_eval_s": None, "regret": None, "best_config": None, "curve": []}
    if not incumbents:
        log(f"{row['task']} / {spec.method}: no trial reported a finite {spec.metric}; {errors} error(s).")
        return MethodRun(spec, row, trials, [], [], None)
    answer = incumbents[-1]
    row["best_config"] = answer["hyper"] or None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            best_result = grid.get_best_result(spec.metric, spec.mode, scope="last", filter_nan_and_inf=True)
        df = best_result.metrics_dataframe
        history = df.to_dict("records") if df is not None else []
    except RuntimeError:
        history = []
    log(f"{row['task']} / {spec.method}: {len(trials)} trial(s) in {wall:.1f} s ({cum:.0f} CPU-s); best "
        f"{spec.metric}={best} at {row['best_config']}")
    run = MethodRun(spec, row, trials, [], history, row["best_config"], answer["checkpoint"], answer["config"])
    run.incumbents = incumbents
    run.finished = finished
    return run


def trial_cost(result: Any, last: Mapping[str, Any]) -> tuple[float, dict[str, float], float | None]:
    """A trial's own counted compute (``cost_flops``, :mod:`ray_bilevel.cost`), its split by network, and its
    measured CPU-seconds.

    Each is the sum of the trial's reports' increments (``cost_flops_step``, ``cpu_s_step``): a PBT trial that
    exploited another restores the donor's counters with its checkpoint, so its last ``cost_flops`` / ``cpu_s``
    would count the donor's work twice; and a trial restored after a failure spends CPU-s rebuilding that its
    checkpointed ``cpu_s`` does not hold. The split by network is the last report's, scaled to the sum where the two
    differ (PBT only). Iterations re-run after a restore count once (counted compute is the same restored or not);
    their CPU-s count each time (measured). Results of older versions (no increments) fall back to the last
    report's counters."""
    total = finite(last.get("cost_flops")) or 0.0
    by_network = {str(k): float(v) for k, v in dict(last.get("cost_flops_by_network") or {}).items()}
    own, cpu = total, finite(last.get("cpu_s"))
    try:
        df = result.metrics_dataframe
    except Exception:  # noqa: BLE001 - no progress file (e.g. a remote storage URI): the last report's counters
        df = None
    if df is not None and "cost_flops_step" in df.columns:
        # a trial resumed from its checkpoint after a driver kill re-runs (and re-reports) the iterations after it:
        # the same work, counted once (same iteration, same cumulative count); a PBT exploit's iterations differ
        counted = df.drop_duplicates(["training_iteration", "cost_flops"], keep="last") \
            if {"training_iteration", "cost_flops"} <= set(df.columns) else df
        own = float(counted["cost_flops_step"].fillna(0.0).sum())
    if df is not None and "cpu_s_step" in df.columns:
        cpu = float(df["cpu_s_step"].fillna(0.0).sum())
    if total > 0 and abs(own - total) > 1e-6 * total:
        by_network = {k: v * own / total for k, v in by_network.items()}
    return own, by_network, cpu
