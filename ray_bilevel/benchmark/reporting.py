"""The reporting evaluation of every method: test-split metrics of the validation-chosen answers, the anytime
curves, the oracle sweep and every method's regret.

Nothing here tunes: every choice was made before, on validation values, by the methods themselves. The work
here (``Task.evaluate_test`` on chosen checkpoints, as Ray tasks with the trial resources) is excluded from
every method's cost alike and booked in its own column (``final_eval_s``) and in ``reporting_cpu_s``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["evaluate_runs", "add_regret", "ROW_METRICS"]

#: Metric columns of every row (null where a task does not report them), each with its ``_val`` twin.
ROW_METRICS = ("fid", "fid_domain", "is", "alignment", "reward")


def _finite(value: Any) -> float | None:
    """``float(value)`` if it is a finite number, else ``None``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _jobs(run: Any) -> list[tuple[dict[str, Any], bool]]:
    """(trial, full) pairs to evaluate: the answer in full, the earlier incumbents (anytime curve) and, for the
    oracle, every sweep point, on the selection metric only."""
    if not run.incumbents:
        return []
    answer = run.incumbents[-1]
    others = run.finished if run.spec.method == "dense" else run.incumbents
    return [(t, False) for t in others if t is not answer and t["checkpoint"] is not None] + [(answer, True)]


def evaluate_runs(runs: Sequence[Any], out: str, resources: Mapping[str, Any], remote_options: Any,
                  log: Any = print) -> float:
    """Fill every run's row with test metrics, ``curve`` and (oracle) ``sweep``; returns the CPU-seconds spent."""
    import ray

    from ray_bilevel.benchmark.trainables import final_evaluation

    remote = ray.remote(**remote_options(resources))(final_evaluation)
    pending = []
    for run in runs:
        for trial, full in _jobs(run):
            ref = remote.remote(run.spec.bilevel, trial["config"], trial["checkpoint"], full=full, export=full)
            pending.append((ref, run, trial, full))
    if pending:
        log(f"reporting: test-split evaluation of {len(pending)} chosen checkpoint(s) (excluded from every method's cost)")
    cpu = 0.0
    for i, (ref, run, trial, full) in enumerate(pending, 1):
        what = f"{run.row['task']} / {run.row['method']} / seed {run.row.get('seed')}"
        try:
            result = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - one failed evaluation must not lose the others
            log(f"{what}: reporting evaluation failed: {exc}")
            continue
        cpu += result["cpu_s"]
        log(f"reporting: {i} of {len(pending)} done ({what}, {'answer' if full else 'curve point'}, "
            f"{result['cpu_s']:.0f} CPU-s)")
        metrics = {k: _finite(v) for k, v in result["metrics"].items()}
        trial["test"] = metrics.get(run.row["metric"])
        if full:
            _fill_answer(run, metrics, result, out)
    for run in runs:
        _curves(run)
    return cpu


def _fill_answer(run: Any, metrics: dict[str, float | None], result: Mapping[str, Any], out: str) -> None:
    row, metric = run.row, run.row["metric"]
    for m in ROW_METRICS:
        row[m], row[f"{m}_val"] = metrics.get(m), metrics.get(f"{m}_val")
    row["metric_value"] = metrics.get(metric)
    if metrics.get(f"{metric}_val") is not None:
        row["metric_value_val"] = metrics[f"{metric}_val"]
    row["final_eval_s"] = round(result["seconds"], 2)
    run.final_metrics = metrics
    folder = os.path.join(out, "artifacts", row["task"], row["method"], f"seed{row['seed']}")
    for rel, data in result["files"].items():
        target = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as fh:
            fh.write(data)
    run.artifacts = folder


def _curves(run: Any) -> None:
    """The anytime curve: after each finished trial, the current incumbent's test and validation values."""
    incumbent, curve = None, []
    ids = {id(t) for t in run.incumbents}
    for t in run.finished:
        if id(t) in ids:
            incumbent = t
        if incumbent is not None:
            curve.append({"cpu_s": round(t["cum_cpu_s"], 2), "wall_s": round(t["end_s"], 2),
                          "metric_value": incumbent.get("test"), "metric_value_val": incumbent["val"]})
    run.row["curve"] = curve
    if run.spec.method == "dense":
        run.row["sweep"] = [{"config": t["hyper"], "metric_value": t.get("test"), "metric_value_val": t["val"]}
                            for t in run.finished]


def add_regret(rows: Sequence[dict[str, Any]]) -> None:
    """``regret`` = test metric − the oracle's best test metric of the same task and seed, signed so that ≥ 0 is
    worse (min: value − best; max: best − value). Rows without an oracle keep ``regret = None``."""
    best: dict[tuple, float] = {}
    for r in rows:
        if r["method"] == "dense":
            values = [p["metric_value"] for p in r.get("sweep") or [] if p["metric_value"] is not None]
            if values:
                best[(r["task"], r["seed"])] = min(values) if r["mode"] == "min" else max(values)
    for r in rows:
        ref = best.get((r["task"], r["seed"]))
        if ref is not None and r.get("metric_value") is not None:
            r["regret"] = (r["metric_value"] - ref) if r["mode"] == "min" else (ref - r["metric_value"])
