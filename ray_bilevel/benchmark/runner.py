"""Run every method of the benchmark as a Tune experiment, then one final evaluation per method.

Order of work: for each task, each method runs alone as one ``tune.Tuner`` (so its wall time is
its own: all its trials, on the whole machine or cluster); then the final evaluations of every
method's best checkpoint run as Ray tasks with the per-trial resources. Nothing here knows about
diffusion: tasks are reached through the Task protocol and the trainables.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ray_bilevel.benchmark.methods import ExperimentSpec, build_experiment, iterations_per_step, methods_for
from ray_bilevel.benchmark.trainables import BenchBilevelTrainable, BenchFixedTrainable, final_evaluation
from ray_bilevel.config import ConfigError
from ray_bilevel.space import Budget
from ray_bilevel.tasks import PAPER_TASKS, get_task, task_ref
from ray_bilevel.tune.cluster import is_uri

__all__ = ["BenchmarkConfig", "MethodRun", "run_benchmark", "run_method", "ROW_METRICS", "TASKS"]

#: The tasks of ``--task all`` (the registry's paper applications).
TASKS = PAPER_TASKS
#: Metric columns of every row (null where a task does not report it).
ROW_METRICS = ("fid", "fid_domain", "is", "alignment", "reward")
_STATE_FILE = "ray_bilevel_compare.json"


@dataclasses.dataclass
class BenchmarkConfig:
    """Options of ``benchmarks/compare.py`` (see its ``--help``)."""

    tasks: Sequence[Any] = TASKS  # registered names or Task classes
    preset: str = "quick"
    methods: Sequence[str] | None = None
    trials: int | None = None
    seed: int = 0
    address: str | None = None
    num_cpus: int | None = None
    resources: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"cpu": 1.0})
    storage_path: str | None = None
    out: str = "benchmark_results"
    resume: bool = False
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    verbose: int = 1
    plots: bool = True


@dataclasses.dataclass
class MethodRun:
    """What one method produced: its row, the per-trial records and the best checkpoint."""

    spec: ExperimentSpec
    row: dict[str, Any]
    trials: list[dict[str, Any]]
    curve: list[tuple[float, float]]  # (seconds since the method started, best metric so far)
    history: list[dict[str, Any]]  # per-iteration reports of the best trial
    best_config: dict[str, Any] | None
    checkpoint: Any = None  # tune.Checkpoint of the best trial's end
    config: dict[str, Any] | None = None  # the best trial's resolved config
    final_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    artifacts: str | None = None  # folder of the exported files of the best checkpoint


def _log(msg: str) -> None:
    print(f"[compare] {msg}", flush=True)


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _state(path: str) -> dict[str, Any]:
    try:
        with open(os.path.join(path, _STATE_FILE)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def _write_state(path: str, state: Mapping[str, Any]) -> None:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, _STATE_FILE), "w") as fh:
        json.dump(dict(state), fh)


def _prepare_dir(path: str, resume: bool) -> dict[str, Any]:
    """A fresh experiment folder unless resuming; refuse to delete a folder this harness did not write.

    The folder keeps a small state file (wall time so far, start time) so a resumed method reports
    the time of all its sessions. URIs (``s3://``...) are left to Tune: no state file, no deletion.
    """
    if is_uri(path):
        return {}
    state = _state(path) if resume else {}
    if not resume and os.path.exists(path):
        if not os.path.exists(os.path.join(path, _STATE_FILE)):
            raise ConfigError(f"{path} exists and was not written by compare.py; pass --resume or another --storage-path.")
        shutil.rmtree(path)
    state.setdefault("start", time.time())
    state.setdefault("wall_time_s", 0.0)
    _write_state(path, state)
    return state


def run_method(
    task: Any,
    method: str,
    cfg: BenchmarkConfig,
    base: Mapping[str, Any],
    metric: str,
    mode: str,
    trials: int,
    profile: Budget,
    storage: str,
    max_concurrent: int,
    hyper_names: Sequence[str],
) -> MethodRun:
    """Run ``method`` on ``task`` (a registered name or a Task class) as one Tune experiment and summarise it
    (without the final evaluation)."""
    from ray import tune

    max_concurrent = min(max_concurrent, profile.max_concurrent or max_concurrent)
    spec = build_experiment(task, method, base, metric, mode, trials, profile, cfg.seed, max_concurrent)
    task = spec.task  # its name, for folders and logs
    cls = BenchBilevelTrainable if spec.bilevel else BenchFixedTrainable
    trainable = tune.with_resources(cls, dict(_ray_resources(cfg.resources)))
    name = f"{task}-{method}"
    path = f"{storage.rstrip('/')}/{name}" if is_uri(storage) else os.path.join(storage, name)
    state = _prepare_dir(path, cfg.resume)
    if spec.scheduler is not None:
        random.seed(cfg.seed)  # PBT's explore draws from `random` / numpy's global generator
        import numpy as np

        np.random.seed(cfg.seed)
    _log(f"{task} / {method}: {spec.trials} trial(s) of {'BilevelTrainable' if spec.bilevel else 'FixedHyperTrainable'}"
         + (f" + {type(spec.searcher or spec.search_alg).__name__}" if spec.search_alg is not None else "")
         + (f" + {type(spec.scheduler).__name__}" if spec.scheduler is not None else ""))
    if cfg.resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=spec.param_space,
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, search_alg=spec.search_alg, scheduler=spec.scheduler,
                num_samples=spec.num_samples, reuse_actors=True, max_concurrent_trials=max_concurrent,
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=storage, verbose=cfg.verbose,
                # a checkpoint per iteration: failed trials resume from it, PBT exploits it
                checkpoint_config=tune.CheckpointConfig(
                    checkpoint_at_end=True, checkpoint_frequency=1, num_to_keep=None if spec.scheduler is not None else 2),
                failure_config=tune.FailureConfig(max_failures=1),
            ),
        )
    start = float(state.get("start", time.time()))
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0 + float(state.get("wall_time_s", 0.0))
    if not is_uri(path):
        _write_state(path, {"wall_time_s": wall, "start": start, "task": task, "method": method})
    if grid.num_terminated + grid.num_errors < len(grid):  # Ctrl-C: Tune stopped the experiment early
        raise KeyboardInterrupt(f"{task} / {method} was interrupted; continue it with --resume.")
    run = _summarise(spec, grid, wall, start, hyper_names)
    run.row["preset"] = cfg.preset
    run.row["settings"] = {k: v for k, v in base.items() if k not in ("task", "preset", "seed")}
    run.row["seed"] = cfg.seed
    return run


def _ray_resources(resources: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in resources.items() if k != "memory" or v}


def _summarise(spec: ExperimentSpec, grid: Any, wall: float, start: float, hyper_names: Sequence[str]) -> MethodRun:
    """Rows, trial records, the best-so-far curve and the best checkpoint of one ResultGrid."""
    sign = 1.0 if spec.mode == "min" else -1.0
    trials, events = [], []
    for result in grid:
        last = result.metrics or {}
        value = _finite(last.get(spec.metric))
        config = {k: _py(v) for k, v in (result.config or {}).items() if k in hyper_names or k in spec.hyper_names}
        trials.append({"config": config, spec.metric: value, "time_total_s": _finite(last.get("time_total_s")),
                       "iterations": last.get("training_iteration"), "error": str(result.error) if result.error else None})
        df = result.metrics_dataframe
        if df is not None and len(df) and spec.metric in df:
            if spec.bilevel:  # the bilevel trial's own curve: every evaluation counts
                events += [(float(t) - start, float(v)) for t, v in zip(df["timestamp"], df[spec.metric]) if _finite(v) is not None]
            elif value is not None:
                events.append((float(df["timestamp"].iloc[-1]) - start, value))
    curve, best_so_far = [], None
    for t, v in sorted(events):
        if spec.bilevel:
            curve.append((max(0.0, t), v))
            continue
        if best_so_far is None or sign * v < sign * best_so_far:
            best_so_far = v
        curve.append((max(0.0, t), best_so_far))
    errors = sum(1 for t in trials if t["error"])
    row: dict[str, Any] = {"task": spec.task, "method": spec.method,
                           "metric": spec.metric, "metric_value": None, **{m: None for m in ROW_METRICS},
                           "wall_time_s": round(wall, 2), "trials": len(trials), "errors": errors,
                           "trial_time_s": round(sum(t["time_total_s"] or 0.0 for t in trials), 2),
                           "final_eval_s": None, "best_config": None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            best = grid.get_best_result(spec.metric, spec.mode, scope="last", filter_nan_and_inf=True)
    except RuntimeError:
        _log(f"{row['task']} / {spec.method}: no trial reported a finite {spec.metric}; {errors} error(s).")
        return MethodRun(spec, row, trials, curve, [], None)
    last, config = best.metrics or {}, dict(best.config or {})
    names = list(hyper_names) + [k for k in spec.hyper_names if k not in hyper_names]
    best_config = {n: _py(last[n] if n in last else config[n]) for n in names if n in last or n in config} or None
    row.update({m: _finite(last.get(m)) for m in ROW_METRICS})
    row["metric_value"] = _finite(last.get(spec.metric))
    row["best_config"] = best_config
    df = best.metrics_dataframe
    history = df.to_dict("records") if df is not None else []
    _log(f"{row['task']} / {spec.method}: {len(trials)} trial(s) in {wall:.1f} s; best {spec.metric}="
         f"{row['metric_value']} at {best_config}")
    return MethodRun(spec, row, trials, curve, history, best_config, best.checkpoint, config)


def _py(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _max_concurrent(resources: Mapping[str, float]) -> int:
    """How many trials of ``resources`` the cluster runs at once (the model-based searchers' concurrency)."""
    import ray

    total = ray.cluster_resources()
    names = {"cpu": "CPU", "gpu": "GPU"}
    slots = [int(total.get(names.get(k, k), 0.0) // float(v)) for k, v in resources.items() if k != "memory" and v]
    return max(1, min(slots) if slots else 1)


def _remote_options(resources: Mapping[str, float]) -> dict[str, Any]:
    """``ray.remote`` options equal to one trial's resources (CPUs, GPUs, memory, custom resources)."""
    res = _ray_resources(resources)
    custom = {k: v for k, v in res.items() if k not in ("cpu", "gpu", "memory")}
    options: dict[str, Any] = {"num_cpus": res.get("cpu", 1.0), "num_gpus": res.get("gpu", 0.0)}
    if res.get("memory"):
        options["memory"] = res["memory"]
    if custom:
        options["resources"] = custom
    return options


def _final_evaluations(runs: list[MethodRun], cfg: BenchmarkConfig) -> None:
    """Evaluate every method's best checkpoint with the full protocol (Ray tasks, trial resources)."""
    import ray

    remote = ray.remote(**_remote_options(cfg.resources))(final_evaluation)
    pending = {remote.remote(run.spec.bilevel, run.config, run.checkpoint): run
               for run in runs if run.checkpoint is not None and run.config is not None}
    if pending:
        _log(f"final evaluation of {len(pending)} best checkpoint(s) (Task.evaluate(final=True))")
    for ref, run in pending.items():
        try:
            out = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - one failed evaluation must not lose the others
            _log(f"{run.row['task']} / {run.row['method']}: final evaluation failed: {exc}")
            continue
        run.row.update({m: _finite(out["metrics"][m]) for m in ROW_METRICS if m in out["metrics"]})
        run.row["final_eval_s"] = round(out["seconds"], 2)
        run.final_metrics = {k: _finite(v) for k, v in out["metrics"].items()}
        folder = os.path.join(cfg.out, "artifacts", run.row["task"], run.row["method"])
        for rel, data in out["files"].items():
            target = os.path.join(folder, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(data)
        run.artifacts = folder


def run_benchmark(cfg: BenchmarkConfig) -> list[MethodRun]:
    """Run every (task, method), evaluate, write results.json / results.csv / table.md / plots into ``cfg.out``."""
    from ray_bilevel.benchmark.report import write_outputs
    from ray_bilevel.tune.cluster import check_resources_fit, init_ray, validate_storage_path

    if cfg.trials is not None and cfg.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {cfg.trials}.")
    cfg.out = os.path.abspath(cfg.out)
    os.makedirs(cfg.out, exist_ok=True)
    storage = validate_storage_path(cfg.storage_path or os.path.join(cfg.out, "ray_results"))
    plans = [_task_plan(task, cfg) for task in cfg.tasks]  # validate every task before starting Ray
    init_ray(cfg.address, num_cpus=cfg.num_cpus if cfg.address in (None, "local") else None)
    check_resources_fit(cfg.resources)
    max_concurrent = _max_concurrent(cfg.resources)
    runs: list[MethodRun] = []
    t_all = time.perf_counter()
    for plan in plans:
        _log(f"task {get_task(plan.task).name or plan.task} (preset {cfg.preset}): methods {list(plan.methods)}, {plan.trials} trial(s) per searcher, "
             f"metric {plan.metric} ({plan.mode})")
        for method in plan.methods:
            runs.append(run_method(plan.task, method, cfg, plan.base, plan.metric, plan.mode, plan.trials, plan.budget,
                                   storage, max_concurrent, plan.names))
    _final_evaluations(runs, cfg)
    _log(f"all methods done in {time.perf_counter() - t_all:.1f} s")
    write_outputs(runs, cfg)
    return runs


@dataclasses.dataclass
class TaskPlan:
    """What the benchmark runs on one task: methods, the constants of every trial, the objective, the budget."""

    task: Any  # the registered name, or the Task class
    methods: list[str]
    base: dict[str, Any]
    metric: str
    mode: str
    trials: int
    budget: Budget
    names: list[str]  # the task's hyperparameter names


def _task_plan(task: Any, cfg: BenchmarkConfig) -> TaskPlan:
    """Methods, trial constants, objective, budget and hyperparameter names of one task (raises early)."""
    cls = get_task(task)
    name = cls.name or cls.__name__
    profile = cls.budget(cfg.preset)
    methods = list(cfg.methods or profile.methods or methods_for(cls))
    offered = cls.methods()
    for m in methods:
        if m not in offered:
            hint = "; it declares no search space, run --methods default,bilevel" if cls.search_space() is None else ""
            raise ConfigError(f"unknown method {m!r} for task {name!r}; choose from {list(offered)}{hint}.")
    space = cls.search_space()
    trials = cfg.trials or profile.trials or (space.n_calls if space else 1)
    base = {"task": task_ref(task), "preset": cfg.preset, "seed": cfg.seed, **profile.overrides, **cfg.overrides}
    probe = cls({k: v for k, v in base.items()})  # validates the settings; gives the budgets
    names = list(probe.hyperparameters())
    # about `profile.iterations` Tune iterations (= in-loop evaluations) per trial, bilevel and fixed alike
    base.update(iterations_per_step=iterations_per_step(probe.outer_budget, profile.iterations),
                lower_steps_per_iteration=iterations_per_step(probe.lower_budget, profile.iterations), eval_every=1)
    del probe
    return TaskPlan(task if isinstance(task, str) else cls, methods, base, cls.metric, cls.mode, trials, profile, names)
