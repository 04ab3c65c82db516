"""Statistics of the evidence protocol: means with Student-t confidence intervals over seeds, per (task, method,
metric), and paired differences (reference − other, paired by seed) with a verdict.

Rows are the benchmark's results rows (one per task, method and seed; see :mod:`ray_bilevel.benchmark.outputs`).
Missing (``None``) and non-finite values are left out, so ``n`` counts the seeds that reported a value.
An interval needs two values: with ``n == 1`` its bounds are ``None`` (not NaN, so JSON stays valid), and a
paired difference of one seed is a ``"tie"``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ray_bilevel.benchmark.common import finite

__all__ = ["NUMERIC_KEYS", "TEST_METRICS", "direction", "mean_ci", "summarise", "paired_differences", "sweep_summary",
           "sweep_slice", "task_mode", "task_reference"]

#: Test metrics of a row (each has a ``_val`` twin: the same metric on the validation split).
TEST_METRICS = ("fid", "fid_domain", "is", "alignment", "reward")
#: The numeric keys summarised, in table order.
NUMERIC_KEYS = (
    "metric_value", "metric_value_val",
    *(k for m in TEST_METRICS for k in (m, f"{m}_val")),
    "regret", "cost_gflop", "cpu_s", "wall_time_s", "final_eval_s",
)
_MIN_KEYS = ("fid", "fid_domain", "regret", "cost_gflop", "wall_time_s", "cpu_s", "final_eval_s")
_MAX_KEYS = ("is", "alignment", "reward")


def _finite(value: Any) -> float | None:
    """A finite number (not a bool) as a float, else ``None``."""
    return finite(value, bool_ok=False)


def direction(key: str, mode: str | None = None) -> str | None:
    """``"min"`` or ``"max"``: which way ``key`` is better. ``metric_value`` / ``metric_value_val`` follow the
    task's ``mode``; a ``_val`` twin follows its test metric; ``None`` for an unknown key."""
    base = key[:-4] if key.endswith("_val") else key
    if base == "metric_value":
        return mode if mode in ("min", "max") else None
    if base in _MIN_KEYS or base.startswith("fid"):
        return "min"
    if base in _MAX_KEYS or base.startswith(("alignment", "reward")):
        return "max"
    return None


def mean_ci(values: Iterable[Any], level: float = 0.95) -> tuple[float | None, float | None, float | None, int]:
    """``(mean, low, high, n)`` of the finite ``values`` with a two-sided Student-t interval at ``level``:
    ``mean ± t_{(1+level)/2, n-1} · s / √n`` with ``s`` the sample standard deviation (ddof 1).

    ``None`` and non-finite values are dropped. ``n == 0`` gives ``(None, None, None, 0)``; ``n == 1`` gives
    ``(x, None, None, 1)``: no interval from one value (the t quantile with 0 degrees of freedom is undefined),
    reported as ``None`` rather than NaN."""
    xs = [v for v in (_finite(x) for x in values) if v is not None]
    n = len(xs)
    if n == 0:
        return None, None, None, 0
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, None, None, 1
    from scipy.stats import t

    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(t.ppf((1.0 + level) / 2.0, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


def _ordered(rows: Sequence[Mapping[str, Any]], key: str, **match: Any) -> list[Any]:
    """Distinct values of ``key`` among the rows matching ``match``, in first-seen order."""
    return list(dict.fromkeys(r.get(key) for r in rows if all(r.get(k) == v for k, v in match.items())))


def task_mode(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The task's mode (``"min"`` / ``"max"``) as its rows record it, else the direction of its metric."""
    modes = [r.get("mode") for r in rows if r.get("mode") in ("min", "max")]
    if modes:
        return modes[0]
    metrics = [str(r["metric"]) for r in rows if r.get("metric")]
    return direction(metrics[0]) if metrics else None  # an older row without "mode": the metric's own direction


def summarise(rows: Sequence[Mapping[str, Any]], level: float = 0.95) -> list[dict[str, Any]]:
    """Per (task, method, metric), for every key of :data:`NUMERIC_KEYS` with at least one finite value:
    ``{task, method, metric, mean, ci95_low, ci95_high, n}`` over the seeds (tasks and methods in row order)."""
    out = []
    for task in _ordered(rows, "task"):
        for method in _ordered(rows, "method", task=task):
            sub = [r for r in rows if r.get("task") == task and r.get("method") == method]
            for key in NUMERIC_KEYS:
                mean, low, high, n = mean_ci((r.get(key) for r in sub), level)
                if n:
                    out.append({"task": task, "method": method, "metric": key, "mean": mean,
                                "ci95_low": low, "ci95_high": high, "n": n})
    return out


def _by_seed(rows: Sequence[Mapping[str, Any]], key: str) -> dict[Any, float]:
    """Seed → finite value of ``key`` (the first row of a seed wins)."""
    out: dict[Any, float] = {}
    for r in rows:
        value = _finite(r.get(key))
        if value is not None and r.get("seed") not in out:
            out[r.get("seed")] = value
    return out


def task_reference(rows: Sequence[Mapping[str, Any]], reference: str = "bilevel") -> str | None:
    """The reference method of one task's rows: ``reference`` itself, else its first variant in the rows
    (``reference_*``, e.g. ``bilevel_fork`` where the first look ran that in place of ``bilevel``), else ``None``."""
    methods = _ordered(rows, "method")
    if reference in methods:
        return reference
    return next((m for m in methods if str(m).startswith(f"{reference}_")), None)


def paired_differences(rows: Sequence[Mapping[str, Any]], reference: str = "bilevel",
                       level: float = 0.95) -> list[dict[str, Any]]:
    """For each task with a ``reference`` row, each other method and each key of :data:`NUMERIC_KEYS`: the
    per-seed differences ``reference − other`` over the seeds both report, summarised by :func:`mean_ci`. A task
    without ``reference`` rows is paired against its first variant (:func:`task_reference`).

    Each entry: ``task, reference, method, metric, mean, ci95_low, ci95_high, n, seeds, verdict, better``.
    ``verdict`` is ``"tie"`` when the interval contains 0 or ``n < 2``, else ``"lower"`` / ``"higher"`` (the
    reference's value is lower / higher). ``better`` names the better method given the metric's direction
    (:func:`direction`; ``metric_value`` follows the task's mode), ``"tie"`` on a tie, ``None`` when the
    direction is unknown. Pairs without a common seed are left out."""
    out = []
    for task in _ordered(rows, "task"):
        sub = [r for r in rows if r.get("task") == task]
        ref = task_reference(sub, reference)
        if ref is None:
            continue
        ref_rows = [r for r in sub if r.get("method") == ref]
        mode = task_mode(sub)
        for method in _ordered(sub, "method"):
            if method == ref:
                continue
            other_rows = [r for r in sub if r.get("method") == method]
            for key in NUMERIC_KEYS:
                a, b = _by_seed(ref_rows, key), _by_seed(other_rows, key)
                seeds = [s for s in a if s in b]
                if not seeds:
                    continue
                mean, low, high, n = mean_ci([a[s] - b[s] for s in seeds], level)
                if n < 2 or mean is None or low is None or high is None or low <= 0.0 <= high:
                    verdict = "tie"
                else:
                    verdict = "lower" if mean < 0 else "higher"
                way = direction(key, mode)
                if verdict == "tie":
                    better = "tie"
                elif way is None:
                    better = None
                else:
                    better = ref if (verdict == "lower") == (way == "min") else method
                out.append({"task": task, "reference": ref, "method": method, "metric": key, "mean": mean,
                            "ci95_low": low, "ci95_high": high, "n": n, "seeds": seeds, "verdict": verdict,
                            "better": better})
    return out


def sweep_summary(rows: Sequence[Mapping[str, Any]], level: float = 0.95) -> list[dict[str, Any]]:
    """The dense oracle sweep of ``rows`` (their ``sweep`` lists: ``{config, metric_value, metric_value_val}``), per
    config over seeds, in the sweep's order: ``{config, test, val, test_values, val_values}`` where ``test`` /
    ``val`` are ``{mean, ci95_low, ci95_high, n}`` (:func:`mean_ci`) and ``*_values`` the finite per-seed values."""
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        for point in r.get("sweep") or []:
            config = dict(point.get("config") or {})
            g = groups.setdefault(json.dumps(config, sort_keys=True, default=str),
                                  {"config": config, "test": [], "val": []})
            g["test"].append(_finite(point.get("metric_value")))
            g["val"].append(_finite(point.get("metric_value_val")))
    out = []
    for g in groups.values():
        entry: dict[str, Any] = {"config": g["config"]}
        for split in ("test", "val"):
            mean, low, high, n = mean_ci(g[split], level)
            entry[split] = {"mean": mean, "ci95_low": low, "ci95_high": high, "n": n}
            entry[f"{split}_values"] = [v for v in g[split] if v is not None]
        out.append(entry)
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _defaults(sub: Sequence[Mapping[str, Any]], configs: Sequence[Mapping[str, Any]],
              params: Sequence[str]) -> dict[str, Any]:
    """The task's default hyperparameters: the ``default`` method's config, else each parameter's commonest value."""
    default = next((r.get("best_config") for r in sub if r.get("method") == "default" and r.get("best_config")), None)
    out = dict(default or {})
    for p in params:
        if p not in out:
            values = [json.dumps(c["config"].get(p), default=str) for c in configs]
            out[p] = json.loads(max(dict.fromkeys(values), key=values.count))
    return out


def sweep_slice(sub: Sequence[Mapping[str, Any]],
                configs: Sequence[Mapping[str, Any]]) -> tuple[str | None, list[int], bool]:
    """The 1-D slice of a dense sweep that the oracle plot draws, from a task's rows ``sub`` and the sweep's
    :func:`sweep_summary` ``configs``: ``(parameter, indices of the configs on its 1-D slice, is_slice)``: the only
    varying parameter of a 1-D sweep; else the parameter varying most among the configs whose other parameters
    equal the defaults; else (no such slice) the parameter with the most values and every config."""
    params = list(dict.fromkeys(k for c in configs for k in c["config"]))
    def distinct(idx: Sequence[int], p: str) -> int:
        return len({json.dumps(configs[i]["config"].get(p), default=str) for i in idx})
    every = list(range(len(configs)))
    varying = [p for p in params if distinct(every, p) > 1]
    if not varying:
        return None, every, True
    if len(varying) == 1:
        return varying[0], every, True
    defaults = _defaults(sub, configs, varying)
    best: tuple[int, str, list[int]] | None = None
    for p in varying:
        idx = [i for i in every
               if all(_same(configs[i]["config"].get(q), defaults.get(q)) for q in varying if q != p)]
        if distinct(idx, p) > 1 and (best is None or distinct(idx, p) > best[0]):
            best = (distinct(idx, p), p, idx)
    if best is not None:
        return best[1], best[2], True
    p = max(varying, key=lambda q: distinct(every, q))
    return p, every, False
