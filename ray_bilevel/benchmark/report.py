"""Outputs of the benchmark: ``results.json`` / ``results.csv`` (one row per task and method),
``trials.csv`` (every trial), ``curves.json``, ``run_info.json``, ``table.md`` and the plots."""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

from ray_bilevel.tasks.base import GENERIC_METHODS

__all__ = ["COLUMNS", "write_outputs", "markdown_table", "format_number"]

#: Columns of results.csv, in order (results.json objects carry the same keys).
COLUMNS = ("task", "method", "fid", "fid_domain", "is", "alignment", "reward", "wall_time_s", "trials", "best_config",
           "metric", "metric_value", "trial_time_s", "final_eval_s", "errors")




def _compared(method: str) -> bool:
    """The table's ratio lines compare bilevel against the default and Bayesian search (the paper's claims) and
    against any baseline a task offers of its own (a method that is not generic, e.g. a weighted sum)."""
    return method in ("default", "bayes") or method not in GENERIC_METHODS

_METRIC_HEADERS = {"fid": "FID", "fid_domain": "FID (domain)", "is": "IS", "alignment": "alignment", "reward": "reward"}


def format_number(value: Any, digits: int = 3) -> str:
    """``12.3``, ``0.00123``; ``–`` for null."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if value == 0:
        return "0"
    mag = math.floor(math.log10(abs(value)))
    return f"{value:.{max(0, digits - 1 - mag)}f}" if -3 <= mag < 6 else f"{value:.{digits - 1}e}"


def _config_text(config: dict | None) -> str:
    if not config:
        return "–"
    return ", ".join(f"{k}={format_number(v) if isinstance(v, (int, float)) else v}" for k, v in config.items())


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One markdown table per task (rows in run order), each followed by bilevel-vs-default ratios."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        sub = [r for r in rows if r["task"] == task]
        default = next((r for r in sub if r["method"] == "default"), None)
        ref_time = default["wall_time_s"] if default and default["wall_time_s"] else None
        metric = sub[0]["metric"]
        extra = [metric] if metric not in _METRIC_HEADERS else []  # a task's own objective gets a column
        settings = ", ".join(f"{k}={v}" for k, v in (sub[0].get("settings") or {}).items())
        searchers = [r["trials"] for r in sub if r["method"] not in ("default", "bilevel")]
        out.append(f"### {task}\n")
        out.append(f"preset {sub[0].get('preset')}, seed {sub[0].get('seed')}; settings for every trial: {settings or '–'}; "
                   f"{max(searchers) if searchers else 0} trials per searcher; selection metric {metric} "
                   "(in-loop); FID / IS / alignment / reward from one final evaluation of each method's best checkpoint.\n")
        out.append("| method | best hyperparameters | " + " | ".join(extra + list(_METRIC_HEADERS.values()))
                   + " | wall time (s) | × default time | trials |")
        out.append("|" + "---|" * (2 + len(extra) + len(_METRIC_HEADERS) + 3))
        for r in sub:
            ratio = r["wall_time_s"] / ref_time if ref_time else None
            cells = [r["method"], _config_text(r["best_config"])] + [format_number(r["metric_value"]) for _ in extra]
            cells += [format_number(r[m]) for m in _METRIC_HEADERS]
            cells += [format_number(r["wall_time_s"]), format_number(ratio, 2), str(r["trials"])
                      + (f" ({r['errors']} failed)" if r.get("errors") else "")]
            out.append("| " + " | ".join(cells) + " |")
        bilevel = next((r for r in sub if r["method"] == "bilevel"), None)
        for other in sub:  # the paper's comparisons (docs/algorithms.md §7): bilevel against each other method
            if bilevel and other is not bilevel and _compared(other["method"]):
                out.append(f"\nbilevel vs {other['method']}: " + ", ".join(_relative(bilevel, other)))
        out.append("")
    return "\n".join(out)


def _relative(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Relative change of each metric and the wall-time ratio of row ``a`` against row ``b``."""
    notes = [f"{m} {100 * (a[m] - b[m]) / abs(b[m]):+.1f} %" for m in ("fid", "fid_domain", "is", "alignment", "reward")
             if a.get(m) is not None and b.get(m)]
    if a.get("wall_time_s") and b.get("wall_time_s"):
        notes.append(f"time ×{a['wall_time_s'] / b['wall_time_s']:.2f}")
    return notes


def _write_csv(path: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
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
    return value.item() if hasattr(value, "item") else value


def write_outputs(runs: Sequence[Any], cfg: Any) -> str:
    """Write every output file into ``cfg.out``, make the plots, print the table last; returns the table."""
    out = cfg.out
    extra = ("preset", "seed", "settings")
    rows = [_clean({c: r.row.get(c) for c in COLUMNS + extra} | {"final_metrics": r.final_metrics or None}) for r in runs]
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(rows, fh, indent=1, allow_nan=False)
    _write_csv(os.path.join(out, "results.csv"), rows, COLUMNS)
    trials = [{"task": r.row["task"], "method": r.row["method"], **t} for r in runs for t in r.trials]
    _write_csv(os.path.join(out, "trials.csv"), _clean(trials),
               ("task", "method", "config", "iterations", "time_total_s", "error") + tuple(dict.fromkeys(
                   k for t in trials for k in t if k not in ("task", "method", "config", "iterations", "time_total_s",
                                                             "error"))))
    curves: dict[str, dict[str, Any]] = {}
    for r in runs:
        curves.setdefault(r.row["task"], {})[r.row["method"]] = {"metric": r.spec.metric, "points": r.curve}
    with open(os.path.join(out, "curves.json"), "w") as fh:
        json.dump(_clean(curves), fh, indent=1, allow_nan=False)
    import ray

    info = {"argv": sys.argv, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "ray": ray.__version__,
            "config": _clean({k: v for k, v in dataclasses.asdict(cfg).items()})}
    with open(os.path.join(out, "run_info.json"), "w") as fh:
        json.dump(info, fh, indent=1, default=str)
    if cfg.plots:
        from ray_bilevel.benchmark.plots import make_plots

        for path in make_plots(runs, out):
            print(f"[compare] wrote {os.path.relpath(path, out)}", flush=True)
    table = markdown_table(rows)
    with open(os.path.join(out, "table.md"), "w") as fh:
        fh.write(table)
    print(f"[compare] results in {out}: results.json, results.csv, trials.csv, curves.json, table.md, plots/\n", flush=True)
    print(table, flush=True)
    return table
