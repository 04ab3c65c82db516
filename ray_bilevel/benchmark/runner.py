"""Run every method of the benchmark as a Tune experiment, then one final evaluation per method.

Order of work: for each seed and task, each method runs as one ``tune.Tuner``, one method at a time
(its wall time is its own) or, with ``concurrent_methods=N``, up to N at once, each Tuner in a Ray task
on this node (Tune's controller is not thread-safe), so that a single-trial method leaves no core idle;
then the final evaluations of every method's best checkpoint run as Ray tasks with the trial resources. Nothing
here knows about diffusion: tasks are reached through the Task protocol and the trainables.

The method folder's state (``--resume``) is :mod:`.resume`'s, a ResultGrid's summary (:class:`MethodRun`)
:mod:`.summary`'s, the test-split evaluation :mod:`.evaluation`'s and the output files :mod:`.outputs`'.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import ray
from ray import tune

from ray_bilevel.benchmark import outputs
from ray_bilevel.benchmark.bench_config import TASKS, BenchmarkConfig
from ray_bilevel.benchmark.common import log
from ray_bilevel.benchmark.evaluation import add_regret, evaluate_runs
from ray_bilevel.benchmark.methods import build_experiment, iterations_per_step, methods_for, offered_methods
from ray_bilevel.benchmark.pool import run_ordered
from ray_bilevel.benchmark.progress import MethodProgress, ProgressTail
from ray_bilevel.benchmark.replay import merge_replay, replay_experiment
from ray_bilevel.benchmark.resume import (
    IncompleteRunError,
    check_budget,
    check_complete,
    check_settings,
    method_name,
    prepare_dir,
    session_cpu,
    settings_key,
    write_state,
)
from ray_bilevel.benchmark.snapshot import StateSnapshot, restore_snapshot
from ray_bilevel.benchmark.summary import ROW_METRICS, MethodRun, summarise, trial_cost
from ray_bilevel.benchmark.trainables import trainable_class
from ray_bilevel.config import ConfigError
from ray_bilevel.space import Budget
from ray_bilevel.tasks import get_task, task_ref
from ray_bilevel.tune.cluster import check_resources_fit, init_ray, is_uri, validate_storage_path

__all__ = ["BenchmarkConfig", "IncompleteRunError", "MethodRun", "run_benchmark", "run_method", "ROW_METRICS",
           "TASKS"]



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
    max_concurrent = min(max_concurrent, profile.max_concurrent or max_concurrent)
    seed = int(base.get("seed", cfg.seed))
    spec = build_experiment(task, method, base, metric, mode, trials, profile, seed, max_concurrent)
    task = spec.task  # its name, for folders and logs
    cls = trainable_class(spec.bilevel, spec.param_space)
    trainable = tune.with_resources(cls, dict(_ray_resources(cfg.resources)))
    name = method_name(storage, f"{task}-{method}-s{seed}", spec.trials, cfg.resume)
    path = _experiment_path(storage, name)
    state = prepare_dir(path, cfg.resume)
    check_budget(state, spec.trials, path)
    check_settings(state, base, path)
    if not is_uri(path) and "trials" not in state:  # recorded before the first trial: a killed run keeps its budget
        write_state(path, {**state, "trials": spec.trials, "settings": settings_key(base)})
    if spec.scheduler is not None:
        random.seed(seed)  # PBT's explore draws from `random` / numpy's global generator
        np.random.seed(seed)
    trainable_name = cls.__name__.replace("Bench", "")
    log(f"{task} / {method} / seed {seed}: {spec.trials} trial(s) of {trainable_name}"
        + (f" + {type(spec.searcher or spec.search_alg).__name__}" if spec.search_alg is not None else "")
        + (f" + {type(spec.scheduler).__name__}" if spec.scheduler is not None else ""))
    tuner = _tuner(trainable, spec, name, path, storage, cfg, max_concurrent, f"{task} / {method} / seed {seed}")
    start = float(state.get("start", time.time()))
    t0, t_fit = time.perf_counter(), time.time()
    grid = tuner.fit()
    wall = time.perf_counter() - t0 + float(state.get("wall_time_s", 0.0))
    cpu_now = _grid_cpu(grid)
    if not is_uri(path):
        write_state(path, {"wall_time_s": wall, "start": start, "task": task, "method": method, "trials": spec.trials,
                           "cpu_s": cpu_now, "settings": settings_key(base)})
    _check_finished(grid, task, method)
    check_complete(spec, len(grid), path)
    run = summarise(spec, grid, wall, start, hyper_names)
    session = session_cpu(state, grid, t_fit, cpu_now)
    if spec.replay:  # pbt_replay / pb2_replay: the population's answer, re-run from scratch under its schedule
        rspec = replay_experiment(spec, run, path, hyper_names)
        rname = f"{name}-replay"
        rpath = _experiment_path(storage, rname)
        log(f"{task} / {method} / seed {seed}: replaying the answer's schedule {rspec.param_space['hyper_schedule']}")
        t1, t_fit = time.perf_counter(), time.time()
        label = f"{task} / {method} (replay) / seed {seed}"
        rgrid = _tuner(trainable, rspec, rname, rpath, storage, cfg, 1, label).fit()
        _check_finished(rgrid, task, method)
        replayed = summarise(rspec, rgrid, time.perf_counter() - t1, t_fit, hyper_names)
        run = merge_replay(run, replayed, spec, hyper_names)
        session += _grid_cpu(rgrid)
    run.row["session_cpu_s"] = round(session, 2)
    run.row["preset"] = cfg.preset
    run.row["settings"] = {k: v for k, v in base.items() if k not in ("task", "preset", "seed")}
    run.row["seed"] = seed
    return run


def _experiment_path(storage: str, name: str) -> str:
    """The experiment folder ``name`` under ``storage`` (a local folder or a URI)."""
    return f"{storage.rstrip('/')}/{name}" if is_uri(storage) else os.path.join(storage, name)


def _grid_cpu(grid: Any) -> float:
    """Σ of the trials' own CPU-seconds, as the row books them (:func:`trial_cost`: a PBT exploit's inherited
    counters are not its own; summing the last reported ``cpu_s`` counted the donor's work twice)."""
    return sum(trial_cost(grid[i], grid[i].metrics or {})[2] or 0.0 for i in range(len(grid)))


def _check_finished(grid: Any, task: str, method: str) -> None:
    """Ctrl-C: Tune stopped the experiment early, so the method is not done."""
    if grid.num_terminated + grid.num_errors < len(grid):
        raise KeyboardInterrupt(f"{task} / {method} was interrupted; continue it with --resume.")


def _tuner(trainable: Any, spec: Any, name: str, path: str, storage: str, cfg: BenchmarkConfig, max_concurrent: int,
           label: str) -> tune.Tuner:
    """The method's ``tune.Tuner``: restored from the last whole (experiment, searcher) state pair on ``--resume``
    (not from what a killed background copy left, snapshot.py), else new."""
    if cfg.resume and tune.Tuner.can_restore(path) and (is_uri(path) or restore_snapshot(path)):
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
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
                checkpoint_at_end=True, checkpoint_frequency=1,
                num_to_keep=None if spec.scheduler is not None else 2),
            # a trial whose actor dies resumes from its last checkpoint, up to 3 times (studies/chaos.py)
            failure_config=tune.FailureConfig(max_failures=3),
            callbacks=([] if is_uri(path) else [StateSnapshot(path)])
            + ([MethodProgress(label, spec.trials, file=progress_file(cfg))] if cfg.verbose else []),
        ),
    )


def _ray_resources(resources: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in resources.items() if k != "memory" or v}


def _cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1.0))


def _max_concurrent(resources: Mapping[str, float]) -> int:
    """How many trials of ``resources`` the cluster runs at once (the model-based searchers' concurrency)."""
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
    if cfg.trials is not None and cfg.trials != "paper" and (not isinstance(cfg.trials, int) or cfg.trials < 1):
        raise ConfigError(f"--trials must be >= 1, got {cfg.trials}.")
    if cfg.concurrent_methods is not None and (not isinstance(cfg.concurrent_methods, int)
                                               or cfg.concurrent_methods < 1):
        raise ConfigError(f"--concurrent-methods must be an integer >= 1 or 'auto', got {cfg.concurrent_methods!r}.")
    cfg.out = os.path.abspath(cfg.out)
    os.makedirs(cfg.out, exist_ok=True)
    storage = validate_storage_path(cfg.storage_path or os.path.join(cfg.out, "ray_results"))
    assert storage is not None  # a path was given
    plans = [_task_plan(task, cfg) for task in cfg.tasks]  # validate every task before starting Ray
    commit = outputs.git_commit(exclude=cfg.out)  # the code that runs (the checkout may move on while it runs)
    t_start = time.perf_counter()
    init_ray(cfg.address, num_cpus=cfg.num_cpus if cfg.address in (None, "local") else None)
    startup = time.perf_counter() - t_start
    check_resources_fit(cfg.resources)
    max_concurrent = _max_concurrent(cfg.resources)
    if cfg.concurrent_methods is None:  # auto: a method whose trials leave slots idle shares them with the next one
        cfg.concurrent_methods = max_concurrent
        log(f"{max_concurrent} method(s) at a time (one per trial slot of {dict(cfg.resources)}; "
            "--concurrent-methods 1 runs them one after another)")
    t_all = time.perf_counter()
    seeds = [int(s) for s in (cfg.seeds if cfg.seeds else [cfg.seed])]
    jobs: list[tuple[TaskPlan, int, str]] = []
    for seed in seeds:
        for plan in plans:
            log(f"task {get_task(plan.task).name or plan.task} (preset {cfg.preset}, seed {seed}): methods "
                f"{list(plan.methods)}, {plan.trials} trial(s) per searcher, selection on {plan.metric} ({plan.mode})")
            jobs.extend((plan, seed, method) for method in plan.methods)
    runs = _run_jobs(jobs, cfg, storage, max_concurrent)
    tuned = time.perf_counter() - t_all
    if cfg.validation_only:  # a development study: the answers stand on validation; nothing reads the test split
        log("--validation-only: no test-split reporting; each row keeps its validation metrics")
        reporting_cpu, reporting_reused = 0.0, 0
    else:
        reporting_cpu, reporting_reused = evaluate_runs(runs, cfg.out, cfg.resources, _remote_options, log,
                                                        reuse=cfg.resume)
        add_regret([r.row for r in runs])
    wall = time.perf_counter() - t_all
    log(f"all methods done in {wall:.1f} s ({tuned:.1f} s tuning, {wall - tuned:.1f} s reporting)")
    cores = _cluster_cpus()
    trial_cpu = sum(r.row["cpu_s"] or 0.0 for r in runs)
    # utilisation counts the CPU-s of this invocation only: a resumed run reuses methods that ran before it
    session_cpu = sum(r.row.get("session_cpu_s", r.row["cpu_s"] or 0.0) for r in runs)
    cfg_info = {"wall_s": round(wall, 2), "startup_s": round(startup, 2), "tuning_wall_s": round(tuned, 2),
                "trial_cpu_s": round(trial_cpu, 2), "reused_cpu_s": round(trial_cpu - session_cpu, 2),
                "reporting_cpu_s": round(reporting_cpu, 2), "reporting_reused": reporting_reused, "cores": cores,
                "utilisation": round((session_cpu + reporting_cpu) / max(1e-9, (wall + startup) * cores), 3)}
    for run in runs:  # every row carries the run's efficiency figures (the same for every row of one run)
        run.row.update(utilisation=cfg_info["utilisation"], startup_s=cfg_info["startup_s"],
                       run_wall_s=cfg_info["wall_s"])
    outputs.write_outputs(runs, cfg, efficiency=cfg_info, commit=commit)
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
        jobs, width, log, describe=lambda j: f"{get_task(j[0].task).name or j[0].task} / {j[2]} / seed {j[1]}",
        done_note=lambda r: (f": {r.row['trials']} trial(s), {r.row['cpu_s']:.0f} CPU-s, "
                             f"{r.row['wall_time_s']:.0f} s wall"),
        tick=ProgressTail(progress_file(cfg), log) if width > 1 and cfg.verbose else None)


def progress_file(cfg: BenchmarkConfig) -> str:
    """``OUT/progress.log``: every method's progress lines (:mod:`.progress`), wherever its Tuner runs."""
    return os.path.join(cfg.out, "progress.log")


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
    profile = cls.benchmark.budget(cfg.preset).replaced(cfg.budget_overrides)
    methods = list(cfg.methods or profile.methods or methods_for(cls))
    if cfg.first_look:  # the first look runs the bilevel variant the task's evidence supports
        methods = [cls.benchmark.bilevel_method if m == "bilevel" else m for m in methods]
    offered = offered_methods(cls)
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
    return TaskPlan(task if isinstance(task, str) else cls, methods, base, cls.tuning_metric(), cls.mode, trials,
                    profile, names, cls.metric)
