"""Reporting on test: the evaluation of every method: test-split metrics of the validation-chosen answers, the anytime
curves, the oracle sweep and every method's regret.

Nothing here tunes: every choice was made before, on validation values, by the methods themselves. The work
here (``Task.evaluate_test`` on chosen checkpoints, as Ray tasks with the trial resources) is excluded from
every method's cost alike and booked in its own column (``final_eval_s``) and in ``reporting_cpu_s``.

Every evaluation is also written to ``OUT/reporting_cache/`` under a key made of the trial's configuration, the
kind of evaluation and the bytes of the checkpoint; ``--resume`` reads it back, so extending a comparison (another
seed, another method) does not evaluate the finished methods' checkpoints again. The cache is read only with
``--resume`` (like Tune's restore, it trusts that the evaluation code did not change in between); its CPU-seconds
are not booked again (``reporting_reused``).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray

from ray_bilevel.benchmark.common import finite
from ray_bilevel.benchmark.store import CORRUPT_FILE, atomic_write_json, read_json
from ray_bilevel.benchmark.summary import ROW_METRICS, MethodRun
from ray_bilevel.benchmark.trainables import final_evaluation
from ray_bilevel.config import ConfigError

__all__ = ["evaluate_runs", "add_regret", "CACHE_DIR", "evaluation_key"]

#: The folder (inside the results folder) of the cached reporting evaluations.
CACHE_DIR = "reporting_cache"


def _jobs(run: MethodRun) -> list[tuple[dict[str, Any], bool]]:
    """(trial, full) pairs to evaluate: the answer in full, the earlier incumbents (anytime curve) and, for the
    oracle, every sweep point, on the selection metric only."""
    if not run.incumbents:
        return []
    answer = run.incumbents[-1]
    others = run.finished if run.spec.method == "dense" else run.incumbents
    return [(t, False) for t in others if t is not answer and t["checkpoint"] is not None] + [(answer, True)]


def _checkpoint_dir(checkpoint: Any) -> str | None:
    """The local folder of a ``tune.Checkpoint`` (None for one on remote storage: those are not cached)."""
    path = getattr(checkpoint, "path", None)
    fs = getattr(checkpoint, "filesystem", None)
    if not path or (fs is not None and getattr(fs, "type_name", "local") != "local"):
        return None
    return path if os.path.isdir(path) else None


def evaluation_key(bilevel: bool, config: Mapping[str, Any], checkpoint: Any, full: bool) -> str | None:
    """A digest of everything one reporting evaluation depends on besides the code: the trainable kind, the
    trial configuration, answer or curve point, and every byte of the checkpoint. None: not cacheable."""
    folder = _checkpoint_dir(checkpoint)
    if folder is None:
        return None
    h = hashlib.sha256(json.dumps({"bilevel": bool(bilevel), "full": bool(full), "config": dict(config)},
                                  sort_keys=True, default=repr).encode())
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, folder).encode() + b"\0")
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    """numpy / torch scalars as floats, anything else as its repr (the metrics are numbers)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return repr(value)


def _cache_read(cache: str, key: str | None) -> dict[str, Any] | None:
    """The cached evaluation of ``key`` (None: not cached); a truncated or corrupt entry is a ConfigError naming it."""
    if key is None:
        return None
    path = os.path.join(cache, f"{key}.json")
    fix = f"delete it (or the folder {cache}) and run with --resume again to evaluate that checkpoint anew."
    try:
        entry = read_json(path, fix, expect=dict)
    except FileNotFoundError:
        return None
    try:
        entry["files"] = {k: base64.b64decode(v, validate=True) for k, v in entry.get("files", {}).items()}
        if not all(k in entry for k in ("metrics", "seconds", "cpu_s")):
            raise ValueError("lacks metrics, seconds or cpu_s")
    except (ValueError, TypeError, AttributeError) as exc:  # binascii.Error is a ValueError
        raise ConfigError(CORRUPT_FILE.format(path=path, why=str(exc).splitlines()[0][:80], fix=fix)) from None
    return entry


def _cache_write(cache: str, key: str | None, result: Mapping[str, Any]) -> None:
    if key is None:
        return
    entry = {"metrics": result["metrics"], "seconds": result["seconds"], "cpu_s": result["cpu_s"],
             "files": {k: base64.b64encode(v).decode() for k, v in result["files"].items()}}
    atomic_write_json(os.path.join(cache, f"{key}.json"), entry, default=_jsonable)


def evaluate_runs(runs: Sequence[MethodRun], out: str, resources: Mapping[str, Any],
                  remote_options: Callable[[Mapping[str, Any]], dict[str, Any]],
                  log: Callable[[str], None] = print, reuse: bool = False) -> tuple[float, int]:
    """Fill every run's row with test metrics, ``curve`` and (oracle) ``sweep``; returns the CPU-seconds spent and
    the number of evaluations read back from the cache (``reuse``: ``--resume``)."""
    remote = ray.remote(**remote_options(resources))(final_evaluation)
    cache = os.path.join(out, CACHE_DIR)
    pending: list[tuple[Any, MethodRun, dict[str, Any], bool, str | None]] = []
    reused = 0
    for run in runs:
        for trial, full in _jobs(run):
            key = evaluation_key(run.spec.bilevel, trial["config"], trial["checkpoint"], full)
            hit = _cache_read(cache, key) if reuse else None
            if hit is not None:
                reused += 1
                pending.append((hit, run, trial, full, None))
                continue
            ref = remote.remote(run.spec.bilevel, trial["config"], trial["checkpoint"], full=full, export=full)
            pending.append((ref, run, trial, full, key))
    if pending:
        log(f"reporting: test-split evaluation of {len(pending)} chosen checkpoint(s) (excluded from every method's "
            "cost)" + (f"; {reused} read back from {cache} (--resume)" if reused else ""))
    cpu = 0.0
    for i, (ref, run, trial, full, key) in enumerate(pending, 1):
        what = f"{run.row['task']} / {run.row['method']} / seed {run.row.get('seed')}"
        cached = isinstance(ref, dict)
        try:
            result = ref if cached else ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - one failed evaluation must not lose the others
            log(f"{what}: reporting evaluation failed: {exc}")
            continue
        if not cached:
            cpu += result["cpu_s"]
            try:
                _cache_write(cache, key, result)
            except OSError as exc:  # a full disk must not lose the evaluation itself
                log(f"{what}: could not cache the reporting evaluation: {exc}")
            log(f"reporting: {i} of {len(pending)} done ({what}, {'answer' if full else 'curve point'}, "
                f"{result['cpu_s']:.0f} CPU-s)")
        metrics = {k: finite(v) for k, v in result["metrics"].items()}
        trial["test"] = metrics.get(run.row["metric"])
        if full:
            _fill_answer(run, metrics, result, out)
    for run in runs:
        _curves(run)
    return cpu, reused


def _fill_answer(run: MethodRun, metrics: dict[str, float | None], result: Mapping[str, Any], out: str) -> None:
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


def _curves(run: MethodRun) -> None:
    """The anytime curve: after each finished trial, the current incumbent's test and validation values."""
    incumbent, curve = None, []
    ids = {id(t) for t in run.incumbents}
    for t in run.finished:
        if id(t) in ids:
            incumbent = t
        if incumbent is not None:
            curve.append({"cost_flops": t["cum_cost_flops"], "cpu_s": round(t["cum_cpu_s"], 2),
                          "wall_s": round(t["end_s"], 2), "metric_value": incumbent.get("test"),
                          "metric_value_val": incumbent["val"]})
    run.row["curve"] = curve
    if run.spec.method == "dense":
        run.row["sweep"] = [{"config": t["hyper"], "metric_value": t.get("test"), "metric_value_val": t["val"]}
                            for t in run.finished]


def add_regret(rows: Sequence[dict[str, Any]]) -> None:
    """``regret`` = test metric − the test metric of the oracle's answer of the same task and seed, signed so that
    ≥ 0 is worse (min: value − reference; max: reference − value); negative: the method beat the sweep.

    The oracle (``dense``) is a method like the others (docs/algorithms.md, "Cost and regret in the benchmark"): its
    answer is the sweep point best on *validation* (its last incumbent, ``summary.summarise``), and its row's
    ``metric_value`` is that answer's test value, the reference here; its own regret is 0. The sweep's best
    *test* value (a winner's-curse maximum over noisy values that no method could have chosen) is no reference; it
    stays descriptive, in the oracle table and plot (◆). Rows without an oracle answer keep ``regret = None``."""
    reference: dict[tuple, float] = {}
    for r in rows:
        if r["method"] == "dense" and r.get("metric_value") is not None:
            reference[(r["task"], r["seed"])] = r["metric_value"]
    for r in rows:
        ref = reference.get((r["task"], r["seed"]))
        if ref is not None and r.get("metric_value") is not None:
            r["regret"] = (r["metric_value"] - ref) if r["mode"] == "min" else (ref - r["metric_value"])
