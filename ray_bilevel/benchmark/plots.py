"""Plots of the benchmark (matplotlib, Agg): metric vs wall time per method, the bilevel run's
hyperparameter trajectory, learned vs default ᾱ_t (from the exported diffusers scheduler configs)
and the sample grids of every method's best checkpoint (from ``Task.export``)."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["make_plots"]

_COLORS = {"default": "black", "bilevel": "tab:red", "greedy": "tab:blue", "grid": "tab:blue", "random": "tab:green",
           "bayes": "tab:purple", "tpe": "tab:orange", "pbt": "tab:brown"}
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


def _by_task(runs: Sequence[Any]) -> dict[str, list[Any]]:
    tasks: dict[str, list[Any]] = {}
    for r in runs:
        tasks.setdefault(r.row["task"], []).append(r)
    return tasks


def _metric_vs_time(task: str, runs: Sequence[Any], path: str) -> str | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for r in runs:
        if not r.curve:
            continue
        t, v = zip(*r.curve)
        color = _color(r.row["method"])
        if r.spec.bilevel:
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
    values = [v for r in runs for _, v in r.curve if v > 0]
    if values and max(values) / min(values) > 5:  # early bilevel evaluations dwarf the rest
        ax.set_yscale("log")
    return _finish(fig, ax, path, "wall time since the method started (s)", metric,
                   f"{task}: {metric} vs wall time (in-loop evaluation)")


def _trajectory(task: str, run: Any, names: Sequence[str], path: str) -> str | None:
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


def _alphas_cumprod(task: str, runs: Sequence[Any], path: str) -> str | None:
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


def _samples(task: str, runs: Sequence[Any], path: str) -> str | None:
    """Every method's exported ``*.png`` sample grid side by side."""
    images = []
    for r in runs:
        if not r.artifacts or not os.path.isdir(r.artifacts):
            continue
        pngs = sorted(f for f in os.listdir(r.artifacts) if f.endswith(".png"))
        if pngs:
            images.append((r.row["method"], os.path.join(r.artifacts, "samples.png" if "samples.png" in pngs else pngs[0])))
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


def make_plots(runs: Sequence[Any], out: str) -> list[str]:
    """Write the plots of every task into ``out/plots``; returns the paths written."""
    folder = os.path.join(out, "plots")
    os.makedirs(folder, exist_ok=True)
    written = []
    for task, sub in _by_task(runs).items():
        written.append(_metric_vs_time(task, sub, os.path.join(folder, f"{task}_metric_vs_time.png")))
        bilevel = next((r for r in sub if r.spec.bilevel), None)
        if bilevel is not None:
            names = list(bilevel.best_config or {})
            written.append(_trajectory(task, bilevel, names, os.path.join(folder, f"{task}_bilevel_trajectory.png")))
        written.append(_alphas_cumprod(task, sub, os.path.join(folder, f"{task}_alphas_cumprod.png")))
        written.append(_samples(task, sub, os.path.join(folder, f"{task}_samples.png")))
    return [p for p in written if p]
