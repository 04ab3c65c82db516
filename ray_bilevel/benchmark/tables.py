"""The markdown tables of the benchmark (``table.md``, BENCHMARKS.md) from its result rows (one per task, method
and seed; the files are :mod:`ray_bilevel.benchmark.outputs`').

:func:`markdown_report` is the multi-seed report (mean ± CI per method, paired bilevel − baseline differences with
a verdict, the dense oracle sweep); :func:`markdown_table` the older one-seed table, kept for single rows."""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ray_bilevel.benchmark.stats import paired_differences, summarise, sweep_summary, task_mode, task_reference
from ray_bilevel.benchspec import GENERIC_METHODS
from ray_bilevel.config import ConfigError

__all__ = ["markdown_report", "markdown_table", "format_number", "difference_cell", "print_markdown",
           "REFERENCE", "ORACLE"]


def print_markdown(prog: str, build: Callable[[], str]) -> int:
    """A markdown script's ending (benchmarks/ablation_md.py, reach_md.py): print what ``build`` returns and exit 0,
    or print a one-line error naming ``prog`` (a bad option or folder: :class:`ConfigError`, a missing file) and exit
    2."""
    try:
        text = build()
    except (ConfigError, FileNotFoundError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


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
        # cost: counted compute where the rows have it (older results: wall time)
        cost_key = "cost_flops" if all(r.get("cost_flops") is not None for r in sub) else "wall_time_s"
        ref_time = default[cost_key] if default and default.get(cost_key) else None
        metric = sub[0]["metric"]
        extra = [metric] if metric not in _METRIC_HEADERS else []  # a task's own objective gets a column
        settings = ", ".join(f"{k}={v}" for k, v in (sub[0].get("settings") or {}).items())
        searchers = [r["trials"] for r in sub if r["method"] not in ("default", "bilevel")]
        out.append(f"### {task}\n")
        out.append(f"preset {sub[0].get('preset')}, seed {sub[0].get('seed')}; settings for every trial: "
                   f"{settings or '–'}; {max(searchers) if searchers else 0} trials per searcher; selection metric "
                   f"{metric} (in-loop); FID / IS / alignment / reward from one final evaluation of each method's best "
                   "checkpoint.\n")
        out.append("| method | best hyperparameters | " + " | ".join(extra + list(_METRIC_HEADERS.values()))
                   + (" | GFLOP | wall time (s) | × default cost |" if cost_key == "cost_flops" else
                      " | wall time (s) | × default time |") + " trials |")
        out.append("|" + "---|" * (2 + len(extra) + len(_METRIC_HEADERS) + 3 + (cost_key == "cost_flops")))
        for r in sub:
            ratio = r[cost_key] / ref_time if ref_time else None
            cells = [r["method"], _config_text(r["best_config"])] + [format_number(r["metric_value"]) for _ in extra]
            cells += [format_number(r[m]) for m in _METRIC_HEADERS]
            cells += [format_number(r["cost_flops"] / 1e9)] if cost_key == "cost_flops" else []
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
    if a.get("cost_flops") and b.get("cost_flops"):
        notes.append(f"cost ×{a['cost_flops'] / b['cost_flops']:.2f}")
    if a.get("wall_time_s") and b.get("wall_time_s"):
        notes.append(f"time ×{a['wall_time_s'] / b['wall_time_s']:.2f}")
    return notes


# ---------------------------------------------------------------------------------------------------------------
# The multi-seed report (one row per task, method and seed)

#: Reference of the paired comparisons, and the oracle sweep's method.
REFERENCE = "bilevel"
ORACLE = "dense"
_ORACLE_ROWS = 20  # a longer sweep shows its 10 best configs on validation and its best on test


def _pm(entry: dict[str, Any] | None, seeds: int | None = None) -> str:
    """``12.3 ± 1.4`` (mean ± half-width of the 95 % t interval); ``12.3`` for one value; ``–`` for none;
    `` (n=2)`` when fewer than ``seeds`` seeds reported it."""
    if not entry or entry.get("mean") is None:
        return "–"
    text = format_number(entry["mean"])
    if entry.get("ci95_high") is not None and entry["n"] > 1:
        text += f" ± {format_number(entry['ci95_high'] - entry['mean'], 2)}"
    if seeds is not None and entry["n"] < seeds:
        text += f" (n={entry['n']})"
    return text


def _signed(value: float | None, digits: int = 3) -> str:
    text = format_number(value, digits)
    return f"+{text}" if value is not None and value > 0 else text


def difference_cell(entry: dict[str, Any] | None, digits: int = 2) -> str:
    """``-2.10 [-3.0, -1.2] bilevel better`` / ``+0.4 [-1.0, 1.8] tie``: a paired difference of
    :func:`~ray_bilevel.benchmark.stats.paired_differences` as mean (3 significant digits), 95 % interval (``digits``)
    and verdict; ``+12.5 (n=1: no interval)`` where one pair gives no interval, and so no verdict."""
    if not entry:
        return "–"
    text = _signed(entry["mean"])
    if entry.get("ci95_low") is None:
        return f"{text} (n={entry['n']}: no interval)"
    text += f" [{format_number(entry['ci95_low'], digits)}, {format_number(entry['ci95_high'], digits)}]"
    better = entry.get("better")
    return f"{text} {'tie' if better == 'tie' else (f'{better} better' if better else entry['verdict'])}"


def _seed_sort(values: Sequence[Any]) -> list[Any]:
    return sorted(values, key=lambda v: (not isinstance(v, (int, float)), v if isinstance(v, (int, float)) else str(v)))


def _best_config_cell(rows: Sequence[dict[str, Any]]) -> str:
    """The best config when every seed found the same one, else ``varies (seed 0: ...)``."""
    configs = {json.dumps(r.get("best_config"), sort_keys=True, default=str): r for r in rows}
    if len(configs) <= 1:
        return _config_text(rows[0].get("best_config")) if rows else "–"
    first = min(rows, key=lambda r: (not isinstance(r.get("seed"), int),
                                     r.get("seed") if isinstance(r.get("seed"), int) else 0))
    return f"varies (seed {first.get('seed')}: {_config_text(first.get('best_config'))})"


def _present(rows: Sequence[dict[str, Any]], key: str) -> bool:
    return any(r.get(key) is not None for r in rows)


def _mode_text(mode: str | None) -> str:
    return {"min": "lower is better", "max": "higher is better"}.get(mode or "", "direction unknown")


def _best_index(configs: Sequence[dict[str, Any]], split: str, mode: str | None) -> int | None:
    scored = [(c[split]["mean"], i) for i, c in enumerate(configs) if c[split]["mean"] is not None]
    if not scored or mode not in ("min", "max"):
        return None
    return (min(scored) if mode == "min" else max(scored, key=lambda p: (p[0], -p[1])))[1]


def _oracle_table(rows: Sequence[dict[str, Any]], metric: str, mode: str | None) -> list[str]:
    configs = sweep_summary(rows)
    if not configs:
        return []
    val_best, test_best = _best_index(configs, "val", mode), _best_index(configs, "test", mode)
    shown = list(range(len(configs)))
    note = ""
    if len(configs) > _ORACLE_ROWS:
        sign = 1.0 if mode != "max" else -1.0
        by_val = sorted((i for i in shown if configs[i]["val"]["mean"] is not None),
                        key=lambda i: sign * configs[i]["val"]["mean"])[:10]
        shown = sorted(set(by_val) | ({test_best} if test_best is not None else set()))
        note = (f" Showing {len(shown)} of {len(configs)} configs (the 10 best on validation and the best on test); "
                "every point is in results.json (`sweep`).")
    n_seeds = len({r.get("seed") for r in rows})
    lines = [f"**Oracle ({ORACLE} sweep)**: every config evaluated on both splits, mean over {n_seeds} seed(s) "
             f"± 95 % t half-width. ★ = best mean on validation (the config a validation-selected sweep answers; "
             f"regret is measured per seed against the oracle's own validation-chosen answer, the `{ORACLE}` row), "
             f"◆ = best mean on test (descriptive only: chosen on test, no method could choose it).{note}\n",
             f"| config | {metric} test | {metric} val | |", "|---|---|---|---|"]
    for i in shown:
        c = configs[i]
        mark = ("★" if i == val_best else "") + ("◆" if i == test_best else "")
        lines.append(f"| {_config_text(c['config'])} | {_pm(c['test'], n_seeds)} | {_pm(c['val'], n_seeds)} | {mark} |")
    return lines


def markdown_report(rows: Sequence[dict[str, Any]], reference: str = REFERENCE) -> str:
    """The multi-seed report, per task: (a) each method's mean ± 95 % t half-width over seeds (test values of
    the validation-selected answer, its validation value, regret, cost); (b) the paired differences
    ``reference − baseline`` by seed with their interval and verdict; (c) the dense oracle sweep.
    Everything is computed from ``rows`` (:mod:`ray_bilevel.benchmark.stats`)."""
    summary = {(s["task"], s["method"], s["metric"]): s for s in summarise(rows)}
    paired = {(p["task"], p["method"], p["metric"]): p for p in paired_differences(rows, reference)}
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        sub = [r for r in rows if r["task"] == task]
        methods = list(dict.fromkeys(r["method"] for r in sub))
        metric, mode = sub[0].get("metric") or "metric_value", task_mode(sub)
        seeds = _seed_sort(list(dict.fromkeys(r.get("seed") for r in sub)))
        others = [m for m in _METRIC_HEADERS if m != metric and _present(sub, m)]
        settings = ", ".join(f"{k}={v}" for k, v in (sub[0].get("settings") or {}).items())
        out.append(f"### {task}\n")
        out.append(f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}), preset {sub[0].get('preset')}; settings for "
                   f"every trial: {settings or '–'}. Selection metric `{metric}` ({_mode_text(mode)}): each method "
                   "chooses its answer on the validation split; `test` is that answer's value on the test split. "
                   "Cells: mean ± half-width of the 95 % Student-t interval over seeds (one value when n = 1). "
                   + ("Regret: the test value minus the test value of the dense oracle's answer of the same seed "
                      "(the sweep point best on validation; signed so that > 0 is worse, 0 = the oracle; negative: the "
                      "method beat the sweep's validation-chosen answer). " if _present(sub, "regret") else "")
                   + ("Cost: counted compute (GFLOP: the FLOPs of every network the method's trials ran, "
                      "deterministic at any concurrency and on any machine), with the CPU-seconds summed over its "
                      "trials and its wall time beside it; " if _present(sub, "cost_gflop") else
                      "Cost: CPU-seconds summed over the method's trials and its wall time; ")
                   + "the final test evaluation (final eval) is excluded from cost.\n")
        head = ["method", "seeds", "best config", f"{metric} test", f"{metric} val"]
        head += [f"{_METRIC_HEADERS[m]} test" for m in others]
        keys = ["metric_value", "metric_value_val", *others]
        if _present(sub, "regret"):
            head.append("regret")
            keys.append("regret")
        cost = ["cost_gflop"] if _present(sub, "cost_gflop") else []
        head += ["GFLOP"] * len(cost) + ["CPU s", "wall s", "final eval s", "trials"]
        keys += [*cost, "cpu_s", "wall_time_s", "final_eval_s"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for m in methods:
            mrows = [r for r in sub if r["method"] == m]
            n_seeds = len({r.get("seed") for r in mrows})
            trials = sorted({int(r["trials"]) for r in mrows if r.get("trials") is not None})
            trial_text = ("–" if not trials else str(trials[0]) if len(trials) == 1
                          else f"{trials[0]}–{trials[-1]}")
            errors = sum(r.get("errors") or 0 for r in mrows)
            trial_text += f" ({errors} failed)" if errors else ""
            cells = [m, str(n_seeds), _best_config_cell(mrows)]
            cells += [_pm(summary.get((task, m, k)), n_seeds) for k in keys]
            out.append("| " + " | ".join(cells + [trial_text]) + " |")
        ref = task_reference(sub, reference)  # bilevel, or the variant the first look ran in its place
        if ref is not None and len(methods) > 1:
            pkeys = ["metric_value", "metric_value_val", *others, *cost, "cpu_s", "wall_time_s"]
            phead = [f"{metric} test", f"{metric} val", *(f"{_METRIC_HEADERS[m]} test" for m in others),
                     *(["GFLOP"] * len(cost)), "CPU s", "wall s"]
            out.append(f"\n**{ref} − baseline**, paired by seed: mean difference [95 % t interval] over the "
                       "seeds both have; `tie` when the interval contains 0, else the better method given the "
                       f"metric's direction (`{metric}`: {_mode_text(mode)}); one seed gives no interval and no "
                       "verdict.\n")
            out.append("| baseline | paired seeds | " + " | ".join(phead) + " |")
            out.append("|" + "---|" * (len(phead) + 2))
            for m in methods:
                if m == ref:
                    continue
                entries = [paired.get((task, m, k)) for k in pkeys]
                n = max((e["n"] for e in entries if e), default=0)
                out.append(f"| {m} | {n} | " + " | ".join(difference_cell(e) for e in entries) + " |")
        oracle = _oracle_table([r for r in sub if r["method"] == ORACLE], metric, mode)
        if oracle:
            out.append("")
            out += oracle
        out.append("")
    return "\n".join(out)
