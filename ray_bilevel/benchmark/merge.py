"""Join results folders of ``benchmarks/compare.py`` that ran different seeds (or other methods on the same seeds)
into one multi-seed folder.

A five-seed comparison on two cores takes hours per seed; it is natural to run the seeds apart (one per machine,
one per session, one per Ray cluster job) and report them together. :func:`merge_runs` reads each part's
``results.json``, ``curves.json``, ``trials.csv`` and ``run_info.json``, checks that they are parts of one study
(the same task, preset and per-method settings; no (task, method, seed) twice) and writes the joined folder as
``compare.py`` would have written it for all seeds at once: ``results.json`` / ``results.csv``, ``summary.json``
(means with 95 % intervals and paired differences over every seed), ``trials.csv``, ``curves.json``, ``table.md``
and the summary plots. ``run_info.json`` keeps every part's command, commit, date and efficiency figures under
``parts``, so the section that ``benchmarks/benchmarks_md.py`` writes names each command that produced a number.

A part may also add methods to seeds another part ran (``compare.py --methods NEW --seeds 0,1,2``: a method that
landed after the others, without rerunning them or the oracle). Regret is per seed: each row's is taken (again)
against the oracle answer (``dense``) of its task and seed, wherever that row came from, which is what a single
all-seed run computes (:func:`~ray_bilevel.benchmark.evaluation.add_regret`); rows of a seed no part ran the
oracle on keep theirs.
"""
from __future__ import annotations

import csv
import datetime
import os
import sys
from collections.abc import Sequence
from typing import Any

from ray_bilevel.benchmark.evaluation import add_regret
from ray_bilevel.benchmark.outputs import COLUMNS, write_csv, write_summary
from ray_bilevel.benchmark.store import atomic_write_json, read_json
from ray_bilevel.benchmark.tables import markdown_report
from ray_bilevel.config import ConfigError

__all__ = ["merge_runs", "PART_KEYS"]

#: The run_info.json fields of a part that the joined run_info.json keeps under ``parts``.
PART_KEYS = ("argv", "commit", "dirty", "dirty_files", "date", "machine", "cpus", "platform", "python", "ray",
             "wall_s", "startup_s", "tuning_wall_s", "trial_cpu_s", "reused_cpu_s", "reporting_cpu_s",
             "reporting_reused", "cores", "utilisation", "config")


def _read_part(folder: str) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], list[dict[str, str]]]:
    fix = f"rerun the benchmarks/compare.py command that wrote {folder} with --resume to rewrite it."
    path = os.path.join(folder, "results.json")
    if not os.path.exists(path):
        raise ConfigError(f"{folder} holds no results.json: pass folders written by benchmarks/compare.py --out.")
    rows = read_json(path, fix, expect=list)
    info_path, curves_path = os.path.join(folder, "run_info.json"), os.path.join(folder, "curves.json")
    info = read_json(info_path, fix, expect=dict) if os.path.exists(info_path) else {}
    curves = read_json(curves_path, fix, expect=dict) if os.path.exists(curves_path) else {}
    trials: list[dict[str, str]] = []
    trials_path = os.path.join(folder, "trials.csv")
    if os.path.exists(trials_path):
        with open(trials_path, newline="") as fh:
            trials = list(csv.DictReader(fh))
    return rows, info, curves, trials


def _check(parts: Sequence[tuple[str, list[dict[str, Any]]]]) -> None:
    """Raise :class:`ConfigError` unless the parts are seeds of one study (see the module docstring)."""
    seen: dict[tuple[Any, Any, Any], str] = {}
    settings: dict[tuple[Any, Any], tuple[str, Any]] = {}
    presets: dict[Any, tuple[str, Any]] = {}
    for folder, rows in parts:
        for r in rows:
            if r.get("seed") is None:
                raise ConfigError(f"{folder}/results.json has a row without a seed ({r.get('task')} / "
                                  f"{r.get('method')}): merge runs made with --seeds.")
            key = (r.get("task"), r.get("method"), r.get("seed"))
            if key in seen:
                raise ConfigError(f"{key[0]} / {key[1]} / seed {key[2]} is in both {seen[key]} and {folder}: "
                                  "merge parts with distinct seeds (remove one of the two folders).")
            seen[key] = folder
            task_preset = presets.setdefault(r.get("task"), (folder, r.get("preset")))
            if task_preset[1] != r.get("preset"):
                raise ConfigError(f"{r.get('task')} ran with preset {task_preset[1]!r} in {task_preset[0]} but "
                                  f"{r.get('preset')!r} in {folder}: merge runs of one preset.")
            method_settings = settings.setdefault((r.get("task"), r.get("method")), (folder, r.get("settings")))
            if method_settings[1] != r.get("settings"):
                raise ConfigError(f"{r.get('task')} / {r.get('method')} ran with settings {method_settings[1]} in "
                                  f"{method_settings[0]} but {r.get('settings')} in {folder}: these are different "
                                  "methods; merge runs made with the same --set and --trials/--budget.")


def _seed_key(seed: Any) -> tuple[int, Any]:
    return (0, seed) if isinstance(seed, (int, float)) else (1, str(seed))


def _in_run_order(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in the order one all-seed compare.py run writes them: by seed, then task and method in the order they
    first appear (the summary's per-seed lists follow this order)."""
    tasks = {t: i for i, t in enumerate(dict.fromkeys(r.get("task") for r in rows))}
    methods = {m: i for i, m in enumerate(dict.fromkeys(r.get("method") for r in rows))}
    return sorted(rows, key=lambda r: (_seed_key(r.get("seed")), tasks[r.get("task")], methods[r.get("method")]))


def _write_trials(path: str, trials: Sequence[dict[str, str]]) -> None:
    columns = list(dict.fromkeys(k for t in trials for k in t))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(trials)


def merge_runs(folders: Sequence[str], out: str, plots: bool = True) -> str:
    """Join the results folders ``folders`` (each written by ``compare.py --seeds ...``) into ``out``; returns the
    multi-seed table (also written to ``out/table.md``).

    Rows are put in the order of one all-seed run (by seed); the seeds need not be contiguous. ``out`` may not be one
    of the parts (its files would be overwritten while read).

    Raises:
        ConfigError: fewer than one folder, a folder without results.json, a row without a seed, a (task, method,
            seed) in two parts, a task with two presets, a method with two settings, or ``out`` among the parts.
    """
    if not folders:
        raise ConfigError("merge_runs needs at least one results folder.")
    if any(os.path.abspath(f) == os.path.abspath(out) for f in folders):
        raise ConfigError(f"--out {out} is one of the parts: write the joined folder somewhere else.")
    read = [(f, *_read_part(f)) for f in folders]
    _check([(f, rows) for f, rows, *_ in read])
    rows = _in_run_order([r for _, part_rows, *_ in read for r in part_rows])
    add_regret(rows)  # a part that added methods to a seed has no oracle of its own
    curves: dict[str, dict[str, dict[str, Any]]] = {}
    for _, _, _, part_curves, _ in read:
        for task, methods in part_curves.items():
            for method, seeds in methods.items():
                curves.setdefault(task, {}).setdefault(method, {}).update(seeds)
    trials = [t for *_, part_trials in read for t in part_trials]
    parts: list[dict[str, Any]] = []
    for f, part_rows, info, _, _ in read:
        if info.get("parts"):  # a folder this function wrote: keep its own parts
            parts += [dict(p) for p in info["parts"]]
        else:
            parts.append({"folder": f, "seeds": sorted({r.get("seed") for r in part_rows}, key=str),
                          "methods": list(dict.fromkeys(str(r.get("method")) for r in part_rows)),
                          **{k: info[k] for k in PART_KEYS if k in info}})
    shas = {p.get("commit") for p in parts}
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "results.json"), rows, indent=1, allow_nan=False)
    write_csv(os.path.join(out, "results.csv"), rows, COLUMNS)
    _write_trials(os.path.join(out, "trials.csv"), trials)
    atomic_write_json(os.path.join(out, "curves.json"), curves, indent=1, allow_nan=False)
    write_summary(rows, out)
    info = {"argv": sys.argv, "merged": True,
            "commit": next(iter(shas)) if len(shas) == 1 else None,
            "dirty": any(bool(p.get("dirty")) for p in parts),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "parts": parts}
    atomic_write_json(os.path.join(out, "run_info.json"), info, indent=1, default=str)
    if plots:
        from ray_bilevel.benchmark.plots import make_summary_plots

        make_summary_plots(rows, out)
    table = markdown_report(rows)
    with open(os.path.join(out, "table.md"), "w") as fh:
        fh.write(table)
    return table
