"""Plots of the benchmark (matplotlib, Agg): metric vs wall time per method, the bilevel run's
hyperparameter trajectory, learned vs default ᾱ_t (from the exported diffusers scheduler configs)
and the sample grids of every method's best checkpoint (from ``Task.export``) -- per run, from the
``MethodRun`` objects (:func:`make_plots`); and from the multi-seed result rows (:func:`make_summary_plots`):
the anytime curve (test value of the validation-selected answer vs CPU-seconds, mean over seeds with a
min-max band) and the dense oracle sweep against the swept hyperparameter."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from ray_bilevel.benchmark.stats import mean_ci, sweep_slice, sweep_summary, task_mode
from ray_bilevel.benchmark.summary import MethodRun

__all__ = ["make_plots", "make_summary_plots", "anytime_plot", "oracle_plot"]

#: The oracle plot's two marked sweep points, in colours no method line uses (methods are drawn dotted).
_SELECTED = {"*": "darkorange", "D": "teal"}
_COLORS = {"default": "black", "bilevel": "tab:red", "greedy": "tab:blue", "grid": "tab:blue",
           "random": "tab:green", "bayes": "tab:purple", "tpe": "tab:orange", "pbt": "tab:brown", "dense": "dimgray",
           "bilevel_retrain": "darkred", "asha": "limegreen", "optuna_tpe": "goldenrod",
           "optuna_gp": "mediumorchid", "pb2": "sienna"}
_EXTRA_COLORS = ("tab:cyan", "tab:olive", "tab:pink", "tab:gray")


def _color(method: str) -> str:
    """A fixed colour per generic method; a task's own methods take the spare colours in a stable order."""
    if method in _COLORS:
        return _COLORS[method]
    return _EXTRA_COLORS[sum(map(ord, method)) % len(_EXTRA_COLORS)]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig: Any, ax: Any, path: str, xlabel: str, ylabel: str, title: str) -> str:
    """Label, grid, legend, save and close a single-axes figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


def _by_task(runs: Sequence[MethodRun]) -> dict[str, list[MethodRun]]:
    tasks: dict[str, list[MethodRun]] = {}
    for r in runs:
        tasks.setdefault(r.row["task"], []).append(r)
    return tasks


def _metric_vs_time(task: str, runs: Sequence[MethodRun], path: str) -> str | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    values = []
    for r in runs:
        curve = r.curve or [(p["wall_s"], p["metric_value_val"]) for p in r.row.get("curve") or []
                            if p.get("wall_s") is not None and p.get("metric_value_val") is not None]
        if not curve:
            continue
        t, v = zip(*curve)
        values += [x for x in v if x > 0]
        color = _color(r.row["method"])
        if r.spec.bilevel and r.curve:  # the older per-evaluation curve of the bilevel trial
            ax.plot(t, v, "-o", color=color, ms=3, label="bilevel (current)")
        elif len(t) == 1:
            ax.plot(t, v, "s", color=color, ms=7, label=r.row["method"])
        else:
            ax.step(t, v, where="post", marker="o", ms=3, color=color, label=f"{r.row['method']} (best so far)")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    metric = runs[0].spec.metric
    if values and max(values) / min(values) > 5:  # early bilevel evaluations dwarf the rest
        ax.set_yscale("log")
    seed = runs[0].row.get("seed")
    return _finish(fig, ax, path, "wall time since the method started (s)", metric,
                   f"{task}: {metric} vs wall time (in-loop evaluation{'' if seed is None else f', seed {seed}'})")


def _trajectory(task: str, run: MethodRun, names: Sequence[str], path: str) -> str | None:
    """Hyperparameters of the bilevel trial per outer step (the exported per-step trajectory if the task
    writes one, else the Tune reports)."""
    points = []
    exported = os.path.join(run.artifacts or "", f"{task}.json")  # a task's export named after it, if any
    if run.artifacts and os.path.exists(exported):
        with open(exported) as fh:
            points = [(p.get("outer_step", i), p) for i, p in enumerate(json.load(fh).get("trajectory", []))]
    if not points:
        points = [(h.get("outer_steps", h.get("training_iteration", i)), h) for i, h in enumerate(run.history)]
    names = [n for n in names if any(n in p for _, p in points)]
    if not points or not names:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for ax, n in zip(axes[0], names):
        xs = [x for x, p in points if n in p]
        ax.plot(xs, [p[n] for _, p in points if n in p], "-", color="tab:red")
        ax.set_title(n)
        ax.set_xlabel("outer step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{task}: bilevel hyperparameter trajectory")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _alphas_cumprod(task: str, runs: Sequence[MethodRun], path: str) -> str | None:
    """ᾱ_t = ∏(1 − β_s) of each method's best schedule, from ``scheduler/scheduler_config.json``."""
    import numpy as np

    curves = {}
    for r in runs:
        cfg = os.path.join(r.artifacts or "", "scheduler", "scheduler_config.json")
        if r.artifacts and os.path.exists(cfg):
            with open(cfg) as fh:
                betas = json.load(fh).get("trained_betas")
            if betas:
                curves[r.row["method"]] = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, abar in curves.items():
        style = {"lw": 2.5} if method in ("default", "bilevel") else {"lw": 1, "alpha": 0.7}
        label = {"default": "default (DDIM cosine)", "bilevel": "learned (bilevel)"}.get(method, f"{method} (best)")
        ax.plot(np.arange(len(abar)), abar, color=_color(method), label=label, **style)
    return _finish(fig, ax, path, "t", r"$\bar\alpha_t$", f"{task}: learned vs default schedule")


def _samples(task: str, runs: Sequence[MethodRun], path: str) -> str | None:
    """Every method's exported ``*.png`` sample grid side by side."""
    images = []
    for r in runs:
        if not r.artifacts or not os.path.isdir(r.artifacts):
            continue
        pngs = sorted(f for f in os.listdir(r.artifacts) if f.endswith(".png"))
        if pngs:
            png = "samples.png" if "samples.png" in pngs else pngs[0]
            images.append((r.row["method"], os.path.join(r.artifacts, png)))
    if not images:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(images), figsize=(2.6 * len(images), 2.9), squeeze=False)
    for ax, (method, png) in zip(axes[0], images):
        ax.imshow(plt.imread(png), cmap="gray")
        ax.set_title(method, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{task}: samples of each method's best checkpoint")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def make_plots(runs: Sequence[MethodRun], out: str) -> list[str]:
    """Write the per-run plots of every task into ``out/plots`` (of its first seed when there are several; the
    multi-seed pictures are :func:`make_summary_plots`'); returns the paths written."""
    folder = os.path.join(out, "plots")
    os.makedirs(folder, exist_ok=True)
    written = []
    for task, sub in _by_task(runs).items():
        seeds = list(dict.fromkeys(r.row.get("seed") for r in sub))
        sub = [r for r in sub if r.row.get("seed") == seeds[0]]  # per-run pictures: the first seed (all: summary plots)
        written.append(_metric_vs_time(task, sub, os.path.join(folder, f"{task}_metric_vs_time.png")))
        bilevel = next((r for r in sub if r.spec.bilevel), None)
        if bilevel is not None:
            names = list(bilevel.best_config or {})
            written.append(_trajectory(task, bilevel, names, os.path.join(folder, f"{task}_bilevel_trajectory.png")))
        written.append(_alphas_cumprod(task, sub, os.path.join(folder, f"{task}_alphas_cumprod.png")))
        written.append(_samples(task, sub, os.path.join(folder, f"{task}_samples.png")))
    return [p for p in written if p]


# ---------------------------------------------------------------------------------------------------------------
# Multi-seed plots, from the result rows (one per task, method and seed)


def _task_rows(rows: Sequence[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("task") == task]


def _better_text(mode: str | None) -> str:
    return {"min": " (lower is better)", "max": " (higher is better)"}.get(mode or "", "")


def _step_curve(points: Sequence[dict[str, Any]], x_key: str = "cpu_s") -> tuple[list[float], list[float]]:
    """A seed's anytime curve as (cumulative cost ``x_key``, test value) steps, points without a test value left out."""
    xs, ys = [], []
    for p in sorted((p for p in points or [] if p.get("metric_value") is not None and p.get(x_key) is not None),
                    key=lambda p: float(p[x_key])):
        xs.append(float(p[x_key]))
        ys.append(float(p["metric_value"]))
    return xs, ys


def _cost_axis(rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """The anytime curves' x: counted compute (``cost_flops``) where every curve point has it, else CPU-seconds
    (results written before counted compute existed)."""
    points = [p for r in rows for p in (r.get("curve") or [])]
    if points and all(p.get("cost_flops") is not None for p in points):
        return "cost_flops", "cumulative counted compute of the method's trials (FLOPs)"
    return "cpu_s", "cumulative CPU-seconds of the method's trials"


def _on_grid(xs: Sequence[float], ys: Sequence[float], grid: Any) -> Any:
    """The step function (value of the last point at or before x, held after the last point; NaN before the
    first) on ``grid``."""
    import numpy as np

    idx = np.searchsorted(np.asarray(xs), grid, side="right") - 1
    vals = np.asarray(ys, dtype=float)[np.clip(idx, 0, None)]
    vals[idx < 0] = np.nan
    return vals


def anytime_plot(rows: Sequence[dict[str, Any]], task: str, path: str) -> str | None:
    """Test value of each method's validation-selected incumbent (the rows' ``curve``) against its cumulative
    counted compute (``cost_flops``; CPU-seconds for older results): per method the mean over seeds (each seed's
    step curve evaluated on the union of the seeds' breakpoints, from where every seed has a point to where the last
    one ends; a finished seed holds its answer) with a min-max band; log x when the CPU range spans more than 30×.
    ``None`` if no row has a curve."""
    import numpy as np

    sub = _task_rows(rows, task)
    methods = list(dict.fromkeys(r["method"] for r in sub))
    x_key, x_label = _cost_axis(sub)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    spans, drawn = [], False
    for method in methods:
        curves = [c for c in (_step_curve(r.get("curve") or [], x_key) for r in sub if r["method"] == method) if c[0]]
        if not curves:
            continue
        start, end = max(c[0][0] for c in curves), max(c[0][-1] for c in curves)
        grid = np.unique(np.concatenate([np.asarray(c[0]) for c in curves]))
        grid = grid[(grid >= start) & (grid <= end)]
        if grid.size == 0:
            grid = np.asarray([start])
        values = np.vstack([_on_grid(xs, ys, grid) for xs, ys in curves])
        mean, low, high = values.mean(axis=0), values.min(axis=0), values.max(axis=0)
        color = _color(method)
        label = f"{method} (n={len(curves)})"
        if grid.size == 1:
            ax.errorbar(grid, mean, yerr=[mean - low, high - mean], fmt="s", color=color, ms=6, capsize=3, label=label)
        else:
            ax.step(grid, mean, where="post", color=color, lw=2 if method.startswith("bilevel") else 1.3, label=label)
            if len(curves) > 1:
                ax.fill_between(grid, low, high, step="post", color=color, alpha=0.15, lw=0)
        spans += [float(x) for x in grid if x > 0]
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    if spans and max(spans) / min(spans) > 30:
        ax.set_xscale("log")
    mode = task_mode(sub)
    metric = next((r.get("metric") for r in sub if r.get("metric")), "metric")
    return _finish(fig, ax, path, x_label, f"{metric} (test)",
                   f"{task}: test {metric} of the validation-selected answer{_better_text(mode)}\n"
                   "mean over seeds, band = min–max over seeds")


def oracle_plot(rows: Sequence[dict[str, Any]], task: str, path: str) -> str | None:
    """The dense sweep's test value (mean over seeds, min-max band; validation mean dashed) against the swept
    hyperparameter: the whole sweep when one parameter varies, else its 1-D slice through the defaults (the
    ``default`` method's config) along the parameter that varies most there. ★ marks the config with the best
    mean validation value (the validation-selected answer; a horizontal line when it lies off the slice),
    ◆ the best mean test value (descriptive: chosen on test, not the regret reference); dotted lines: bilevel's
    and default's mean test values. Log x when positive and spanning more than 30×. ``None`` without a sweep."""
    import numpy as np

    sub = _task_rows(rows, task)
    configs = sweep_summary([r for r in sub if r.get("method") == "dense"])
    configs = [c for c in configs if c["test"]["mean"] is not None]
    param, idx, is_slice = sweep_slice(sub, configs)
    if not configs or param is None:
        return None
    mode = task_mode(sub)
    sign = -1.0 if mode == "max" else 1.0
    with_val = [i for i, c in enumerate(configs) if c["val"]["mean"] is not None]
    val_best = min(with_val, key=lambda i: sign * configs[i]["val"]["mean"]) if with_val else None
    test_best = min(range(len(configs)), key=lambda i: sign * configs[i]["test"]["mean"])
    raw = [configs[i]["config"].get(param) for i in idx]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
    order = sorted(range(len(idx)), key=(lambda j: float(raw[j])) if numeric else (lambda j: str(raw[j])))
    idx = [idx[j] for j in order]
    labels = [configs[i]["config"].get(param) for i in idx]
    x = np.asarray([float(v) for v in labels]) if numeric else np.arange(len(idx), dtype=float)
    test = np.asarray([configs[i]["test"]["mean"] for i in idx])
    low = np.asarray([min(configs[i]["test_values"]) for i in idx])
    high = np.asarray([max(configs[i]["test_values"]) for i in idx])
    val = np.asarray([configs[i]["val"]["mean"] if configs[i]["val"]["mean"] is not None else np.nan for i in idx])
    n_seeds = max(configs[i]["test"]["n"] for i in idx)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    style = "-o" if is_slice else "o"
    ax.plot(x, test, style, color="tab:gray", ms=4, label=f"dense sweep, test (mean of {n_seeds} seed(s))")
    if n_seeds > 1:
        if is_slice:
            ax.fill_between(x, low, high, color="tab:gray", alpha=0.2, lw=0, label="min–max over seeds")
        else:
            ax.vlines(x, low, high, color="tab:gray", alpha=0.4)
    if np.isfinite(val).any():
        ax.plot(x, val, "--" if is_slice else "x", color="tab:gray", alpha=0.7,
                label="dense sweep, validation (mean)")
    for i, marker, name in ((val_best, "*", "validation-selected"), (test_best, "D", "best on test (descriptive)")):
        if i is None:
            continue
        text = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in configs[i]["config"].items())
        if i in idx:
            j = idx.index(i)
            ax.plot([x[j]], [test[j]], marker, color=_SELECTED[marker], ms=13 if marker == "*" else 7,
                    mfc="none" if marker == "D" else None, label=f"{name}: {text}", zorder=5)
        else:
            ax.axhline(configs[i]["test"]["mean"], color=_SELECTED[marker], lw=1.2,
                       ls="-." if marker == "*" else "--", label=f"{name} (off the slice): {text}")
    for method in ("bilevel", "default"):
        mean = mean_ci(r.get("metric_value") for r in sub if r.get("method") == method)[0]
        if mean is not None:
            ax.axhline(mean, color=_color(method), ls=":", lw=1.2, label=f"{method} (mean test)")
    if numeric and (x > 0).all() and x.max() / x.min() > 30:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(x, [str(v) for v in labels], rotation=30, fontsize=8)
    metric = next((r.get("metric") for r in sub if r.get("metric")), "metric")
    if len(configs[idx[0]]["config"]) > 1:
        rest = ", ".join(f"{k}={configs[idx[0]]['config'][k]}" for k in configs[idx[0]]["config"] if k != param)
        where = (f"slice through the defaults ({rest})" if is_slice
                 else "every config (no 1-D slice through the defaults)")
    else:
        where = "1-D sweep"
    return _finish(fig, ax, path, param, f"{metric} (test)",
                   f"{task}: oracle sweep of {param}{_better_text(mode)}\n{where}")


def make_summary_plots(rows: Sequence[dict[str, Any]], out: str) -> list[str]:
    """From the multi-seed result rows: ``out/plots/{task}_anytime.png`` (:func:`anytime_plot`) and
    ``out/plots/{task}_oracle.png`` (:func:`oracle_plot`) for every task that has the data; returns the paths."""
    folder = os.path.join(out, "plots")
    os.makedirs(folder, exist_ok=True)
    written = []
    for task in dict.fromkeys(str(r["task"]) for r in rows):
        written.append(anytime_plot(rows, task, os.path.join(folder, f"{task}_anytime.png")))
        written.append(oracle_plot(rows, task, os.path.join(folder, f"{task}_oracle.png")))
    return [p for p in written if p]
