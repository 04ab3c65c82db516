"""Run every method of the benchmark as a Tune experiment, then one final evaluation per method.

Order of work: for each seed and task, each method runs as one ``tune.Tuner``, one method at a time
(its wall time is its own) or, with ``concurrent_methods=N``, up to N at once, each Tuner in a Ray task
on this node (Tune's controller is not thread-safe), so that a single-trial method leaves no core idle;
then the final evaluations of every method's best checkpoint run as Ray tasks with the trial resources. Nothing here knows about
diffusion: tasks are reached through the Task protocol and the trainables.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ray_bilevel.benchmark.methods import ExperimentSpec, build_experiment, iterations_per_step, methods_for
from ray_bilevel.benchmark.pool import run_ordered
from ray_bilevel.benchmark.reporting import ROW_METRICS, _finite, add_regret, evaluate_runs
from ray_bilevel.benchmark.store import atomic_write_json, read_json
from ray_bilevel.benchmark.trainables import BenchBilevelTrainable, BenchFixedTrainable
from ray_bilevel.config import ConfigError
from ray_bilevel.space import Budget
from ray_bilevel.tasks import PAPER_TASKS, get_task, task_ref
from ray_bilevel.tune.cluster import is_uri

__all__ = ["BenchmarkConfig", "MethodRun", "run_benchmark", "run_method", "ROW_METRICS", "TASKS"]

#: The tasks of ``--task all`` (the registry's paper applications).
TASKS = PAPER_TASKS
_STATE_FILE = "ray_bilevel_compare.json"


@dataclasses.dataclass
class BenchmarkConfig:
    """Options of ``benchmarks/compare.py`` (see its ``--help``)."""

    tasks: Sequence[Any] = TASKS  # registered names or Task classes
    preset: str = "quick"
    methods: Sequence[str] | None = None
    trials: int | str | None = None  # per searcher; "paper": the space's Bayesian n_calls
    seed: int = 0
    seeds: Sequence[int] | None = None  # several seeds (task seed and searcher seed); None: [seed]
    address: str | None = None
    num_cpus: int | None = None
    resources: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"cpu": 1.0})
    storage_path: str | None = None
    out: str = "benchmark_results"
    resume: bool = False
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    verbose: int = 1
    plots: bool = True
    # methods run at once on one Ray instance (>1: each method's wall time then includes waiting for
    # cores other methods hold; compare cost by CPU-seconds); None: as many as trials fit at once (compare.py's default)
    concurrent_methods: int | None = 1


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
    incumbents: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # validation-best trials, in order
    finished: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # every trial, by finishing time


def _log(msg: str) -> None:
    print(f"[compare] {msg}", flush=True)


def _state(path: str) -> dict[str, Any]:
    """The state file of a method's folder ({} when there is none); a truncated or corrupt one is a ConfigError."""
    try:
        return read_json(os.path.join(path, _STATE_FILE), expect=dict,
                         fix=f"delete the folder {path} to run this method again (--resume still reuses the "
                             "finished methods and seeds).")
    except FileNotFoundError:
        return {}


def _write_state(path: str, state: Mapping[str, Any]) -> None:
    atomic_write_json(os.path.join(path, _STATE_FILE), dict(state))


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


def _check_budget(state: dict[str, Any], trials: int, path: str) -> None:
    """A resumed method must ask for the budget it was run with: Tune restores an experiment with its old
    ``num_samples``, and a searcher's first n points are not the first n of a longer search (the GP's random
    start scales with the budget), so "more trials" cannot extend a finished search without changing it. Local
    folders never get here with another budget (:func:`_method_name` puts that search beside the old one); a
    remote storage URI, whose state this harness does not read, can."""
    done = state.get("trials")
    if done is not None and int(done) != int(trials):
        raise ConfigError(
            f"{path} was run with {done} trial(s), and --resume now asks for {trials}: a finished search cannot be "
            f"extended to another budget without changing its answer. Write the new budget to another --out, or "
            f"delete {path} to rerun this method with {trials} trial(s) (finished methods and seeds are still reused).")


class IncompleteRunError(RuntimeError):
    """A method finished with fewer trials than its budget (see :func:`_check_complete`)."""


def _check_complete(spec: ExperimentSpec, ran: int, path: str) -> None:
    """A finished method must hold its whole budget: a search whose searcher cannot stop early (every one but
    greedy) that ends with fewer trials than ``spec.trials`` lost some, which a Tune restore after the driver was
    killed at an unlucky moment can do; its answer would be reported under a budget it never ran."""
    if not spec.stops_early and ran < spec.trials:
        raise IncompleteRunError(
            f"{spec.task} / {spec.method} finished with {ran} of its {spec.trials} trial(s) ({path}): the restored "
            f"experiment lost trials, so its answer is not that of its budget. Delete {path} and run again with "
            f"--resume (finished methods and seeds are reused).")


def _settings_key(base: Mapping[str, Any]) -> str:
    """The task settings a method's trials ran with (everything but task and seed), as canonical JSON."""
    return json.dumps({k: v for k, v in base.items() if k not in ("task", "seed")}, sort_keys=True, default=str)


def _method_name(storage: str, name: str, trials: int, resume: bool) -> str:
    """The experiment folder of one method and seed: ``TASK-METHOD-sSEED``, or ``...-tN`` when resuming with a budget
    of N trials while that folder holds a search of another budget. So ``--resume --trials paper`` into a finished
    quick comparison reuses what does not depend on the budget (default, bilevel, the dense oracle: their trial
    counts do not change) and runs each search afresh at the new budget beside the old one, which stays and is
    reused when the old budget is asked for again (a search of N trials is not the shorter one plus more points)."""
    if not resume or is_uri(storage):
        return name
    done = _state(os.path.join(storage, name)).get("trials")
    return name if done is None or int(done) == int(trials) else f"{name}-t{int(trials)}"


def _check_settings(state: dict[str, Any], base: Mapping[str, Any], path: str) -> None:
    """A resumed method must run with the settings it was run with (``--preset``, ``--set``): otherwise its finished
    trials would be reported under settings they never ran with. Folders of older versions record none: not checked."""
    done = state.get("settings")
    if done is not None and done != _settings_key(base):
        raise ConfigError(
            f"{path} was run with the settings {done}, and --resume now asks for {_settings_key(base)}: its finished "
            f"trials cannot be reused under other settings. Write the new settings to another --out, or delete {path} "
            f"to rerun this method with them (finished methods and seeds are still reused).")


def _session_cpu(state: Mapping[str, Any], grid: Any, t_fit: float, total: float) -> float:
    """CPU-seconds the method's trials spent in this invocation: its total minus what an earlier session of a
    resumed folder had spent (recorded in the state file; for a folder of an older version without that record, a
    method none of whose trials reported since this session began ran entirely before it)."""
    prior = state.get("cpu_s")
    if prior is None and state.get("wall_time_s"):
        stamps = [float((grid[i].metrics or {}).get("timestamp") or 0.0) for i in range(len(grid))]
        prior = total if stamps and max(stamps) < t_fit else 0.0
    return max(0.0, total - float(prior or 0.0))


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

    from ray_bilevel.benchmark.snapshot import StateSnapshot, restore_snapshot

    max_concurrent = min(max_concurrent, profile.max_concurrent or max_concurrent)
    seed = int(base.get("seed", cfg.seed))
    spec = build_experiment(task, method, base, metric, mode, trials, profile, seed, max_concurrent)
    task = spec.task  # its name, for folders and logs
    cls = BenchBilevelTrainable if spec.bilevel else BenchFixedTrainable
    trainable = tune.with_resources(cls, dict(_ray_resources(cfg.resources)))
    name = _method_name(storage, f"{task}-{method}-s{seed}", spec.trials, cfg.resume)
    path = f"{storage.rstrip('/')}/{name}" if is_uri(storage) else os.path.join(storage, name)
    state = _prepare_dir(path, cfg.resume)
    _check_budget(state, spec.trials, path)
    _check_settings(state, base, path)
    if not is_uri(path) and "trials" not in state:  # recorded before the first trial: a killed run keeps its budget
        _write_state(path, {**state, "trials": spec.trials, "settings": _settings_key(base)})
    if spec.scheduler is not None:
        random.seed(seed)  # PBT's explore draws from `random` / numpy's global generator
        import numpy as np

        np.random.seed(seed)
    _log(f"{task} / {method} / seed {seed}: {spec.trials} trial(s) of {'BilevelTrainable' if spec.bilevel else 'FixedHyperTrainable'}"
         + (f" + {type(spec.searcher or spec.search_alg).__name__}" if spec.search_alg is not None else "")
         + (f" + {type(spec.scheduler).__name__}" if spec.scheduler is not None else ""))
    # the last whole (experiment, searcher) state pair, not what a killed background copy left (snapshot.py)
    if cfg.resume and tune.Tuner.can_restore(path) and (is_uri(path) or restore_snapshot(path)):
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
                # a trial whose actor dies resumes from its last checkpoint, up to 3 times (studies/chaos.py)
                failure_config=tune.FailureConfig(max_failures=3),
                callbacks=[] if is_uri(path) else [StateSnapshot(path)],
            ),
        )
    start = float(state.get("start", time.time()))
    t0, t_fit = time.perf_counter(), time.time()
    grid = tuner.fit()
    wall = time.perf_counter() - t0 + float(state.get("wall_time_s", 0.0))
    cpu_now = sum(float((grid[i].metrics or {}).get("cpu_s") or 0.0) for i in range(len(grid)))
    if not is_uri(path):
        _write_state(path, {"wall_time_s": wall, "start": start, "task": task, "method": method, "trials": spec.trials,
                            "cpu_s": cpu_now, "settings": _settings_key(base)})
    if grid.num_terminated + grid.num_errors < len(grid):  # Ctrl-C: Tune stopped the experiment early
        raise KeyboardInterrupt(f"{task} / {method} was interrupted; continue it with --resume.")
    _check_complete(spec, len(grid), path)
    run = _summarise(spec, grid, wall, start, hyper_names)
    run.row["session_cpu_s"] = round(_session_cpu(state, grid, t_fit, cpu_now), 2)
    run.row["preset"] = cfg.preset
    run.row["settings"] = {k: v for k, v in base.items() if k not in ("task", "preset", "seed")}
    run.row["seed"] = seed
    return run


def _ray_resources(resources: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in resources.items() if k != "memory" or v}


def _summarise(spec: ExperimentSpec, grid: Any, wall: float, start: float, hyper_names: Sequence[str]) -> MethodRun:
    """The row, trial records, validation incumbents and the best checkpoint of one ResultGrid.

    ``spec.metric`` is the tuning (validation) metric. Trials are ordered by the time they finished; a trial
    that ran to its end (``done``; not one a scheduler stopped at a rung) and whose validation value beats every
    earlier one is an *incumbent* (the method's answer from then on). Every trial's compute counts. The
    test values of the incumbents (the anytime curve) and of the answer come later, from the reporting
    evaluation."""
    sign = 1.0 if spec.mode == "min" else -1.0
    names = list(hyper_names) + [k for k in spec.hyper_names if k not in hyper_names]
    trials: list[dict[str, Any]] = []
    finished: list[dict[str, Any]] = []
    for result in grid:
        last = result.metrics or {}
        value = _finite(last.get(spec.metric))
        config = {k: _py(v) for k, v in (result.config or {}).items() if k in names}
        hyper = {n: _py(last[n]) for n in names if n in last} or config
        flops, by_network, cpu = _trial_cost(result, last)
        trials.append({"config": config, spec.metric: value, "cpu_s": cpu, "cost_flops": flops,
                       "time_total_s": _finite(last.get("time_total_s")), "iterations": last.get("training_iteration"),
                       "error": str(result.error) if result.error else None})
        end = _finite(last.get("reported_at")) or _finite(last.get("timestamp")) or 0.0
        finished.append({"end_s": max(0.0, end - start), "cpu_s": cpu or 0.0, "val": value,
                         "cost_flops": flops, "cost_flops_by_network": by_network, "lower_steps": last.get("lower_steps"),
                         # a trial a scheduler stopped at a rung (asha) is not an answer: its lower level is unfinished
                         "done": bool(last.get("complete", last.get("done", True))),
                         "checkpoint": result.checkpoint, "config": dict(result.config or {}), "hyper": hyper,
                         "name": os.path.basename(str(getattr(result, "path", "") or ""))})
    # finishing order; ties (whole-second timestamps of older runs) by the trial folder's name, which a restored
    # experiment keeps (its ResultGrid order is not), so a resumed run draws the same anytime curve
    finished.sort(key=lambda t: (t["end_s"], t["name"]))
    cum, cum_flops, best, incumbents = 0.0, 0.0, None, []
    method_networks: dict[str, float] = {}
    for t in finished:
        cum += t["cpu_s"]
        cum_flops += t["cost_flops"]
        t["cum_cpu_s"], t["cum_cost_flops"] = cum, cum_flops
        for k, v in t["cost_flops_by_network"].items():
            method_networks[k] = method_networks.get(k, 0.0) + v
        if t["val"] is not None and t["checkpoint"] is not None and t["done"] and (best is None or sign * t["val"] < sign * best):
            best = t["val"]
            incumbents.append(t)
    errors = sum(1 for t in trials if t["error"])
    row: dict[str, Any] = {"task": spec.task, "method": spec.method, "metric": None, "mode": spec.mode,
                           "metric_value": None, "metric_value_val": best, **{m: None for m in ROW_METRICS},
                           **{f"{m}_val": None for m in ROW_METRICS}, "wall_time_s": round(wall, 2),
                           "cpu_s": round(cum, 2), "cost_flops": cum_flops, "cost_gflop": round(cum_flops / 1e9, 3),
                           "cost_flops_by_network": dict(sorted(method_networks.items())), "trials": len(trials),
                           "errors": errors,
                           # lower-level steps over the method's fixed-hyperparameter trials (None for bilevel trials)
                           "lower_steps": sum(int(t["lower_steps"]) for t in finished if t["lower_steps"] is not None)
                           if any(t["lower_steps"] is not None for t in finished) else None,
                           "trial_time_s": round(sum(t["time_total_s"] or 0.0 for t in trials), 2),
                           "final_eval_s": None, "regret": None, "best_config": None, "curve": []}
    if not incumbents:
        _log(f"{row['task']} / {spec.method}: no trial reported a finite {spec.metric}; {errors} error(s).")
        return MethodRun(spec, row, trials, [], [], None)
    answer = incumbents[-1]
    row["best_config"] = answer["hyper"] or None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            best_result = grid.get_best_result(spec.metric, spec.mode, scope="last", filter_nan_and_inf=True)
        df = best_result.metrics_dataframe
        history = df.to_dict("records") if df is not None else []
    except RuntimeError:
        history = []
    _log(f"{row['task']} / {spec.method}: {len(trials)} trial(s) in {wall:.1f} s ({cum:.0f} CPU-s); best "
         f"{spec.metric}={best} at {row['best_config']}")
    run = MethodRun(spec, row, trials, [], history, row["best_config"], answer["checkpoint"], answer["config"])
    run.incumbents = incumbents
    run.finished = finished
    return run


def _trial_cost(result: Any, last: Mapping[str, Any]) -> tuple[float, dict[str, float], float | None]:
    """A trial's own counted compute (``cost_flops``, :mod:`ray_bilevel.cost`), its split by network, and its
    measured CPU-seconds.

    Each is the sum of the trial's reports' increments (``cost_flops_step``, ``cpu_s_step``): a PBT trial that
    exploited another restores the donor's counters with its checkpoint, so its last ``cost_flops`` / ``cpu_s``
    would count the donor's work twice; and a trial restored after a failure spends CPU-s rebuilding that its
    checkpointed ``cpu_s`` does not hold. The split by network is the last report's, scaled to the sum where the two
    differ (PBT only). Iterations re-run after a restore count once (counted compute is the same restored or not);
    their CPU-s count each time (measured). Results of older versions (no increments) fall back to the last
    report's counters."""
    total = _finite(last.get("cost_flops")) or 0.0
    by_network = {str(k): float(v) for k, v in dict(last.get("cost_flops_by_network") or {}).items()}
    own, cpu = total, _finite(last.get("cpu_s"))
    try:
        df = result.metrics_dataframe
    except Exception:  # noqa: BLE001 - no progress file (e.g. a remote storage URI): the last report's counters
        df = None
    if df is not None and "cost_flops_step" in df.columns:
        # a trial resumed from its checkpoint after a driver kill re-runs (and re-reports) the iterations after it:
        # the same work, counted once (same iteration, same cumulative count); a PBT exploit's iterations differ
        counted = df.drop_duplicates(["training_iteration", "cost_flops"], keep="last") \
            if {"training_iteration", "cost_flops"} <= set(df.columns) else df
        own = float(counted["cost_flops_step"].fillna(0.0).sum())
    if df is not None and "cpu_s_step" in df.columns:
        cpu = float(df["cpu_s_step"].fillna(0.0).sum())
    if total > 0 and abs(own - total) > 1e-6 * total:
        by_network = {k: v * own / total for k, v in by_network.items()}
    return own, by_network, cpu


def _py(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


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


def run_benchmark(cfg: BenchmarkConfig) -> list[MethodRun]:
    """Run every (task, method), evaluate, write results.json / results.csv / table.md / plots into ``cfg.out``."""
    from ray_bilevel.benchmark.report import git_commit, write_outputs
    from ray_bilevel.tune.cluster import check_resources_fit, init_ray, validate_storage_path

    if cfg.trials is not None and cfg.trials != "paper" and (not isinstance(cfg.trials, int) or cfg.trials < 1):
        raise ConfigError(f"--trials must be >= 1, got {cfg.trials}.")
    if cfg.concurrent_methods is not None and (not isinstance(cfg.concurrent_methods, int) or cfg.concurrent_methods < 1):
        raise ConfigError(f"--concurrent-methods must be an integer >= 1 or 'auto', got {cfg.concurrent_methods!r}.")
    cfg.out = os.path.abspath(cfg.out)
    os.makedirs(cfg.out, exist_ok=True)
    storage = validate_storage_path(cfg.storage_path or os.path.join(cfg.out, "ray_results"))
    assert storage is not None  # a path was given
    plans = [_task_plan(task, cfg) for task in cfg.tasks]  # validate every task before starting Ray
    commit = git_commit(exclude=cfg.out)  # the code that runs (the checkout may move on while it runs)
    t_start = time.perf_counter()
    init_ray(cfg.address, num_cpus=cfg.num_cpus if cfg.address in (None, "local") else None)
    startup = time.perf_counter() - t_start
    check_resources_fit(cfg.resources)
    max_concurrent = _max_concurrent(cfg.resources)
    if cfg.concurrent_methods is None:  # auto: a method whose trials leave slots idle shares them with the next one
        cfg.concurrent_methods = max_concurrent
        _log(f"{max_concurrent} method(s) at a time (one per trial slot of {dict(cfg.resources)}; --concurrent-methods 1 "
             "runs them one after another)")
    t_all = time.perf_counter()
    seeds = [int(s) for s in (cfg.seeds if cfg.seeds else [cfg.seed])]
    jobs: list[tuple[TaskPlan, int, str]] = []
    for seed in seeds:
        for plan in plans:
            _log(f"task {get_task(plan.task).name or plan.task} (preset {cfg.preset}, seed {seed}): methods "
                 f"{list(plan.methods)}, {plan.trials} trial(s) per searcher, selection on {plan.metric} ({plan.mode})")
            jobs.extend((plan, seed, method) for method in plan.methods)
    runs = _run_jobs(jobs, cfg, storage, max_concurrent)
    tuned = time.perf_counter() - t_all
    reporting_cpu, reporting_reused = evaluate_runs(runs, cfg.out, cfg.resources, _remote_options, _log, reuse=cfg.resume)
    add_regret([r.row for r in runs])
    wall = time.perf_counter() - t_all
    _log(f"all methods done in {wall:.1f} s ({tuned:.1f} s tuning, {wall - tuned:.1f} s reporting)")
    cores = _cluster_cpus()
    trial_cpu = sum(r.row["cpu_s"] or 0.0 for r in runs)
    # utilisation counts the CPU-s of this invocation only: a resumed run reuses methods that ran before it
    session_cpu = sum(r.row.get("session_cpu_s", r.row["cpu_s"] or 0.0) for r in runs)
    cfg_info = {"wall_s": round(wall, 2), "startup_s": round(startup, 2), "tuning_wall_s": round(tuned, 2),
                "trial_cpu_s": round(trial_cpu, 2), "reused_cpu_s": round(trial_cpu - session_cpu, 2),
                "reporting_cpu_s": round(reporting_cpu, 2), "reporting_reused": reporting_reused, "cores": cores,
                "utilisation": round((session_cpu + reporting_cpu) / max(1e-9, (wall + startup) * cores), 3)}
    for run in runs:  # every row carries the run's efficiency figures (the same for every row of one run)
        run.row.update(utilisation=cfg_info["utilisation"], startup_s=cfg_info["startup_s"], run_wall_s=cfg_info["wall_s"])
    write_outputs(runs, cfg, efficiency=cfg_info, commit=commit)
    return runs


def _run_job(job: tuple[TaskPlan, int, str], cfg: BenchmarkConfig, storage: str, max_concurrent: int,
             remote: bool = False) -> MethodRun:
    """One method of one task and seed; in a Ray task (``remote``) the searcher and scheduler stay there."""
    plan, seed, method = job
    run = run_method(plan.task, method, cfg, {**plan.base, "seed": seed}, plan.metric, plan.mode, plan.trials,
                     plan.budget, storage, max_concurrent, plan.names)
    run.row["metric"] = plan.report_metric
    if remote:
        run.spec = dataclasses.replace(run.spec, search_alg=None, scheduler=None, searcher=None)
    return run


def _run_jobs(jobs: list[tuple[TaskPlan, int, str]], cfg: BenchmarkConfig, storage: str,
              max_concurrent: int) -> list[MethodRun]:
    """Every (task plan, seed, method), ``cfg.concurrent_methods`` at a time (:func:`.pool.run_ordered`)."""
    width = int(cfg.concurrent_methods or 1)  # resolved from auto before the jobs run
    return run_ordered(
        functools.partial(_run_job, cfg=cfg, storage=storage, max_concurrent=max_concurrent, remote=width > 1),
        jobs, width, _log, describe=lambda j: f"{get_task(j[0].task).name or j[0].task} / {j[2]} / seed {j[1]}",
        done_note=lambda r: f": {r.row['trials']} trial(s), {r.row['cpu_s']:.0f} CPU-s, {r.row['wall_time_s']:.0f} s wall")


@dataclasses.dataclass
class TaskPlan:
    """What the benchmark runs on one task: methods, the constants of every trial, the objective, the budget."""

    task: Any  # the registered name, or the Task class
    methods: list[str]
    base: dict[str, Any]
    metric: str  # what tuning selects on (the validation twin)
    mode: str
    trials: int
    budget: Budget
    names: list[str]  # the task's hyperparameter names
    report_metric: str = ""  # the same metric's name, reported on the test split


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
    if cfg.trials == "paper":
        trials = space.n_calls if space else 1
    else:
        trials = int(cfg.trials or profile.trials or (space.n_calls if space else 1))
    base = {"task": task_ref(task), "preset": cfg.preset, "seed": cfg.seed, **profile.overrides, **cfg.overrides}
    probe = cls({k: v for k, v in base.items()})  # validates the settings; gives the budgets
    names = list(probe.hyperparameters())
    # about `profile.iterations` Tune iterations (= in-loop evaluations) per trial, bilevel and fixed alike
    base.update(iterations_per_step=iterations_per_step(probe.outer_budget, profile.iterations),
                lower_steps_per_iteration=iterations_per_step(probe.lower_budget, profile.iterations), eval_every=1)
    del probe
    return TaskPlan(task if isinstance(task, str) else cls, methods, base, cls.tuning_metric(), cls.mode, trials, profile,
                    names, cls.metric)
