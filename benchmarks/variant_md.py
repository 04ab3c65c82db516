"""One method run with changed settings against the same method of a reference run: a markdown section.

    python benchmarks/variant_md.py VARIANT_DIR REFERENCE_DIR [--method bilevel] [--title TITLE]

Both folders are compare.py results folders (results.json, run_info.json) of the same task, preset and seeds; the
variant ran ``--methods METHOD`` with some ``--set KEY=VALUE``. Printed: the variant's command and commit, the
settings that differ, a per-seed table (validation and test selection metric, regret against the *reference's*
dense oracle of the same seed, CPU-seconds, the learned configuration) and the paired differences
variant − reference over seeds with their 95 % t intervals. The verdict follows the validation value first: a
variant is adopted on validation, never on the test values or regrets it is reported with.

Nothing is measured here: the output is built from committed JSON only, so BENCHMARKS.md can hold it in a generated
block (benchmarks/refresh_md.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ray_bilevel.benchmark.report import format_number
from ray_bilevel.benchmark.reporting import add_regret
from ray_bilevel.benchmark.stats import paired_differences

__all__ = ["section", "main"]

#: Keys of the paired-difference table, in order, with their column names.
_PAIRED = (("metric_value_val", "{m} val"), ("metric_value", "{m} test"), ("regret", "regret"), ("fid", "FID test"),
           ("cpu_s", "CPU s"))


def _load(folder: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    path = os.path.join(folder, "results.json")
    if not os.path.exists(path):
        raise SystemExit(f"variant_md.py: {path} not found: pass a compare.py results folder (--out DIR).")
    with open(path) as fh:
        rows = json.load(fh)
    info_path = os.path.join(folder, "run_info.json")
    info = json.load(open(info_path)) if os.path.exists(info_path) else {}
    return rows, info


def _config(row: Mapping[str, Any]) -> str:
    cfg = row.get("best_config") or {}
    return ", ".join(f"{k}={format_number(v)}" for k, v in cfg.items()) or "–"


def _changed(variant: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, Any]:
    a, b = variant.get("settings") or {}, reference.get("settings") or {}
    return {k: a.get(k) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def section(variant_dir: str, reference_dir: str, method: str = "bilevel", title: str | None = None) -> str:
    """The markdown section (see the module docstring)."""
    var_rows, var_info = _load(variant_dir)
    ref_rows, ref_info = _load(reference_dir)
    var = [dict(r) for r in var_rows if r.get("method") == method]
    ref = [dict(r) for r in ref_rows if r.get("method") == method]
    if not var or not ref:
        raise SystemExit(f"variant_md.py: no {method!r} rows in {variant_dir if not var else reference_dir}.")
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
    oracle = [dict(r) for r in ref_rows if r.get("method") == "dense"]
    add_regret(var + ref + oracle)  # both against the reference's oracle of the same seed
    metric, mode = var[0].get("metric") or "metric", var[0].get("mode")
    lines = [f"## {title}" if title else f"## {method}: a variant against the reference run", ""]
    argv = var_info.get("argv")
    if argv:
        lines += ["```", "python " + " ".join(argv), "```", ""]
    commit = var_info.get("commit")
    lines.append(f"Variant commit `{commit}`{' (dirty)' if var_info.get('dirty') else ''}; reference: "
                 f"`{reference_dir}` (commit `{ref_info.get('commit')}`).  ")
    changed = _changed(var[0], ref[0])
    lines.append("Settings changed: " + (", ".join(f"`{k}={v}`" for k, v in changed.items()) or "none") + ".")
    lines.append("")
    lines.append(f"Selection metric `{metric}` ({'lower' if mode == 'min' else 'higher'} is better); regret against "
                 f"the reference's dense oracle of the same seed{'' if oracle else ' (none in the reference: –)'}.")
    lines.append("")
    lines.append(f"| seed | {metric} val: reference → variant | {metric} test: reference → variant | regret: reference → "
                 "variant | CPU s: reference → variant | variant's answer |")
    lines.append("|---|---|---|---|---|---|")
    ref_by = {r.get("seed"): r for r in ref}
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
    cells = []
    for key, _ in _PAIRED:
        d = diffs.get(key)
        if d is None:
            cells.append("–")
            continue
        interval = (f" [{format_number(d['ci95_low'])}, {format_number(d['ci95_high'])}]"
                    if d["ci95_low"] is not None else "")
        verdict = "tie" if d["better"] == "tie" else f"{d['better']} better" if d["better"] else d["verdict"]
        cells.append(f"{d['mean']:+.3g}{interval} {verdict}")
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variant_dir")
    p.add_argument("reference_dir")
    p.add_argument("--method", default="bilevel", help="the method both runs ran (default bilevel)")
    p.add_argument("--title", default=None)
    a = p.parse_args(argv)
    sys.stdout.write(section(a.variant_dir, a.reference_dir, a.method, a.title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
