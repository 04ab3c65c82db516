"""The output files of the benchmark: ``results.json`` / ``results.csv`` (one row per task, method and seed),
``summary.json`` (means with 95 % t intervals over seeds, paired differences), ``trials.csv`` (every trial),
``curves.json``, ``run_info.json`` (the command, the commit, the machine), ``table.md`` (:mod:`.tables`) and the
plots (:mod:`.plots`)."""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ray

from ray_bilevel.benchmark.common import plain
from ray_bilevel.benchmark.plots import make_plots, make_summary_plots
from ray_bilevel.benchmark.stats import paired_differences, summarise
from ray_bilevel.benchmark.store import atomic_write_json
from ray_bilevel.benchmark.summary import MethodRun
from ray_bilevel.benchmark.tables import REFERENCE, markdown_report, markdown_table

if TYPE_CHECKING:
    from ray_bilevel.benchmark.bench_config import BenchmarkConfig

__all__ = ["COLUMNS", "write_csv", "write_outputs", "write_summary", "git_commit"]

#: Columns of results.csv, in order (results.json objects carry the same keys and more: ``curve``, ``sweep``,
#: ``settings``... go only to JSON). Test metrics, then their validation twins (``_val``).
COLUMNS = ("task", "method", "seed", "preset", "metric", "mode", "metric_value", "metric_value_val", "regret",
           "fid", "fid_domain", "is", "alignment", "reward",
           "fid_val", "fid_domain_val", "is_val", "alignment_val", "reward_val",
           "cost_flops", "wall_time_s", "cpu_s", "final_eval_s", "trials", "lower_steps", "errors", "best_config")


def write_summary(rows: Sequence[dict[str, Any]], out: str, reference: str = REFERENCE) -> str:
    """Write ``out/summary.json``: ``{"summary": summarise(rows), "paired": paired_differences(rows)}``; returns
    its path."""
    path = os.path.join(out, "summary.json")
    atomic_write_json(path, _clean({"summary": summarise(rows), "paired": paired_differences(rows, reference)}),
                      indent=1, allow_nan=False)
    return path


def write_csv(path: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """``rows`` as CSV with ``columns`` (others dropped; dicts and lists as JSON, None as empty)."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else v)
                             for k, v in r.items()})


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return plain(value)


def git_commit(path: str | None = None, exclude: str | None = None) -> dict[str, Any]:
    """``{"sha", "dirty", "dirty_files"}`` of the checkout holding ``path`` (default: this package): ``git rev-parse
    HEAD`` and ``git status --porcelain`` (ignored files do not count, nor anything under ``exclude``, e.g. the
    results folder). ``sha`` is ``None`` outside a git checkout or without git."""
    where = path or os.path.dirname(os.path.abspath(__file__))
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", where, *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout if proc.returncode == 0 else None

    sha = (git("rev-parse", "HEAD") or "").strip() or None
    if sha is None:
        return {"sha": None, "dirty": None, "dirty_files": []}
    top = (git("rev-parse", "--show-toplevel") or "").strip()
    skip = os.path.relpath(os.path.abspath(exclude), top) if exclude and top else None
    files = []
    for line in (git("status", "--porcelain") or "").splitlines():
        name = line[3:].split(" -> ")[-1].strip('"')
        if skip and not skip.startswith("..") and (name == skip or name.startswith(skip.rstrip("/") + "/")):
            continue
        files.append(name)
    return {"sha": sha, "dirty": bool(files), "dirty_files": files[:50]}


def write_outputs(runs: Sequence[MethodRun], cfg: BenchmarkConfig, efficiency: dict[str, Any] | None = None,
                  commit: dict[str, Any] | None = None) -> str:
    """Write every output file into ``cfg.out`` (results.json with every row key incl. ``curve`` / ``sweep``,
    results.csv with :data:`COLUMNS`, summary.json, trials.csv, curves.json, run_info.json with the command, the
    commit and ``efficiency`` (the runner's wall / CPU / utilisation figures), table.md), make the plots, print
    the table last; returns the table. ``commit``: :func:`git_commit` taken when the run started (the code that
    ran; the checkout may have moved on since), read now when not given."""
    out = cfg.out
    extra = ("preset", "seed", "settings")
    rows = [_clean({**{c: r.row.get(c) for c in COLUMNS + extra}, **r.row, "final_metrics": r.final_metrics or None})
            for r in runs]
    atomic_write_json(os.path.join(out, "results.json"), rows, indent=1, allow_nan=False)
    write_csv(os.path.join(out, "results.csv"), rows, COLUMNS)
    first = ("task", "method", "seed", "config", "iterations", "time_total_s", "error")
    trials = [{"task": r.row["task"], "method": r.row["method"], "seed": r.row.get("seed"), **t}
              for r in runs for t in r.trials]
    write_csv(os.path.join(out, "trials.csv"), _clean(trials),
               first + tuple(dict.fromkeys(k for t in trials for k in t if k not in first)))
    curves: dict[str, dict[str, Any]] = {}  # task -> method -> seed -> the anytime curve
    for r in runs:
        curves.setdefault(r.row["task"], {}).setdefault(r.row["method"], {})[str(r.row.get("seed"))] = {
            "metric": r.row.get("metric") or r.spec.metric, "mode": r.row.get("mode"),
            "points": r.row.get("curve") or [list(p) for p in r.curve]}
    atomic_write_json(os.path.join(out, "curves.json"), _clean(curves), indent=1, allow_nan=False)
    commit = commit or git_commit(exclude=out)
    info = {"argv": sys.argv, "commit": commit["sha"], "dirty": commit["dirty"], "dirty_files": commit["dirty_files"],
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "ray": ray.__version__,
            **_clean(dict(efficiency or {})),
            "config": _clean({k: v for k, v in dataclasses.asdict(cfg).items()})}
    write_summary(rows, out)
    atomic_write_json(os.path.join(out, "run_info.json"), info, indent=1, default=str)
    if cfg.plots:
        for path in make_plots(runs, out) + make_summary_plots(rows, out):
            print(f"[compare] wrote {os.path.relpath(path, out)}", flush=True)
    # one row per (task, method, seed): the multi-seed report; rows without seeds: the one-seed table
    table = markdown_report(rows) if rows and all(r.get("seed") is not None for r in rows) else markdown_table(rows)
    with open(os.path.join(out, "table.md"), "w") as fh:
        fh.write(table)
    print(f"[compare] results in {out}: results.json, results.csv, summary.json, trials.csv, curves.json, "
          "run_info.json, table.md, plots/\n", flush=True)
    print(table, flush=True)
    return table
