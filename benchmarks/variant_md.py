"""One method run with changed settings against the same method of a reference run: a markdown section.

    python benchmarks/variant_md.py VARIANT_DIR[,VARIANT_DIR...] REFERENCE_DIR [--method bilevel]
                                    [--reference-method M] [--oracle DIR] [--title TITLE]

The folders are compare.py results folders (results.json, run_info.json) of the same task and preset; the variant
ran ``--methods METHOD`` with some ``--set KEY=VALUE`` (several folders: e.g. one per seed, each with its own
settings). Printed: the variant's commands and commits, the settings that differ from the reference's, a per-seed
table (validation and test selection metric, regret against the test value of the validation-chosen answer of the
dense oracle of the same seed in ``--oracle``, by default the reference folder, CPU-seconds, the answer's
configuration) and the paired differences
variant − reference over seeds with their 95 % t intervals. A variant is adopted on its validation value, never on
the test values or regrets it is reported with.

Nothing is measured here: the output is built from committed JSON only, so BENCHMARKS.md can hold it in a generated
block (benchmarks/refresh_md.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ray_bilevel.benchmark.evaluation import add_regret
from ray_bilevel.benchmark.stats import paired_differences
from ray_bilevel.benchmark.store import read_json
from ray_bilevel.benchmark.tables import difference_cell, format_number
from ray_bilevel.config import ConfigError

__all__ = ["section", "main"]

#: Keys of the paired-difference table, in order, with their column names.
_PAIRED = (("metric_value_val", "{m} val"), ("metric_value", "{m} test"), ("regret", "regret"), ("fid", "FID test"),
           ("cpu_s", "CPU s"))


def _load(folder: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    path = os.path.join(folder, "results.json")
    if not os.path.exists(path):
        raise SystemExit(f"variant_md.py: {path} not found: pass a compare.py results folder (--out DIR).")
    fix = (f"rerun the benchmarks/compare.py command that wrote {folder}, with --resume, to rewrite it (finished "
           "methods are reused).")
    try:
        rows = read_json(path, fix, expect=list)
        info_path = os.path.join(folder, "run_info.json")
        info = read_json(info_path, fix, expect=dict) if os.path.exists(info_path) else {}
    except ConfigError as exc:
        raise SystemExit(f"variant_md.py: {exc}") from None
    return rows, info


def _config(row: Mapping[str, Any]) -> str:
    cfg = row.get("best_config") or {}
    return ", ".join(f"{k}={format_number(v)}" for k, v in cfg.items()) or "–"


def _changed(variant: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, Any]:
    a, b = variant.get("settings") or {}, reference.get("settings") or {}
    return {k: a.get(k) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def section(variant_dir: str, reference_dir: str, method: str = "bilevel", title: str | None = None,
            reference_method: str | None = None, oracle_dir: str | None = None) -> str:
    """The markdown section (see the module docstring); ``variant_dir`` may list several folders, comma-separated."""
    reference_method = reference_method or method
    var, infos = [], []
    for folder in [d for d in variant_dir.split(",") if d]:
        rows, info = _load(folder)
        var += [dict(r) for r in rows if r.get("method") == method]
        infos.append(info)
    ref_rows, ref_info = _load(reference_dir)
    ref = [dict(r) for r in ref_rows if r.get("method") == reference_method]
    if not var or not ref:
        raise SystemExit(f"variant_md.py: no {method if not var else reference_method!r} rows in "
                         f"{variant_dir if not var else reference_dir}.")
    tasks = {r.get("task") for r in var} | {r.get("task") for r in ref}
    if len(tasks) != 1:
        raise SystemExit(f"variant_md.py: one task per comparison, found {sorted(map(str, tasks))}.")
    presets = {r.get("preset") for r in var} | {r.get("preset") for r in ref}
    if len(presets) != 1:
        raise SystemExit(f"variant_md.py: the two runs used different presets {sorted(map(str, presets))}.")
    label = "variant"
    for r in var:
        r["method"], r["regret"] = label, None
    for r in ref:
        r["regret"] = None
    oracle_rows = _load(oracle_dir)[0] if oracle_dir else ref_rows
    oracle = [dict(r) for r in oracle_rows if r.get("method") == "dense"]
    add_regret(var + ref + oracle)  # both against the reference's oracle of the same seed
    metric, mode = var[0].get("metric") or "metric", var[0].get("mode")
    lines = [f"## {title}" if title else f"## {method}: a variant against the reference run", ""]
    commands = ["python " + " ".join(i["argv"]) for i in infos if i.get("argv")]
    if commands:
        lines += ["```", *commands, "```", ""]
    commits = sorted({f"`{i.get('commit')}`" + (" (dirty)" if i.get("dirty") else "") for i in infos})
    lines.append(f"Variant commit {', '.join(commits)}; reference: `{reference_dir}` ({reference_method}, commit "
                 f"`{ref_info.get('commit')}`).  ")
    ref_by = {r.get("seed"): r for r in ref}
    changed = {r.get("seed"): _changed(r, ref_by.get(r.get("seed"), ref[0])) for r in var}
    text = {seed: ", ".join(f"`{k}={format_number(v) if v is not None else 'default'}`" for k, v in c.items()) or "none"
            for seed, c in changed.items()}
    if len(set(text.values())) == 1:
        lines.append(f"Settings changed: {next(iter(text.values()))}.")
    else:
        lines.append("Settings changed, per seed: " + "; ".join(f"seed {k}: "
                                                                f"{v}" for k, v in sorted(text.items())) + ".")
    lines.append("")
    where = f"`{oracle_dir}`" if oracle_dir else "the reference's"
    lines.append(f"Selection metric `{metric}` ({'lower' if mode == 'min' else 'higher'} is better); regret against "
                 f"{where} dense oracle's validation-chosen answer of the same seed, on test (negative: the method "
                 "beat "
                 f"the sweep's validation-chosen answer){'' if oracle else ' (no oracle there: –)'}.")
    lines.append("")
    lines.append(f"| seed | {metric} val: reference → variant | {metric} test: reference → variant | regret: reference "
                 "→ "
                 "variant | CPU s: reference → variant | variant's answer |")
    lines.append("|---|---|---|---|---|---|")
    for r in sorted(var, key=lambda r: r.get("seed") or 0):
        b = ref_by.get(r.get("seed"))
        if b is None:
            continue
        cells = [f"{format_number(b.get(k))} → {format_number(r.get(k))}"
                 for k in ("metric_value_val", "metric_value", "regret", "cpu_s")]
        lines.append(f"| {r.get('seed')} | " + " | ".join(cells) + f" | {_config(r)} |")
    lines.append("")
    diffs = {d["metric"]: d for d in paired_differences(var + [dict(r, method="reference") for r in ref],
                                                        reference=label) if d["method"] == "reference"}
    lines.append("**variant − reference**, paired by seed: mean [95 % t interval]; `tie` when the interval contains 0.")
    lines.append("")
    lines.append("| " + " | ".join(name.format(m=metric) for _, name in _PAIRED) + " |")
    lines.append("|" + "---|" * len(_PAIRED))
    cells = [difference_cell(diffs.get(key), digits=3) for key, _ in _PAIRED]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variant_dir")
    p.add_argument("reference_dir")
    p.add_argument("--method", default="bilevel", help="the method both runs ran (default bilevel)")
    p.add_argument("--reference-method", default=None, help="the reference run's method (default: --method)")
    p.add_argument("--oracle", default=None, metavar="DIR", help="results folder of the dense oracle (default: the "
                                                                 "reference)")
    p.add_argument("--title", default=None)
    a = p.parse_args(argv)
    sys.stdout.write(section(a.variant_dir, a.reference_dir, a.method, a.title, a.reference_method, a.oracle))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
