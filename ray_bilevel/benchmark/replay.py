"""``pbt_replay`` / ``pb2_replay``: a population method's answer as a schedule anyone can re-run.

PBT and PB2 end with a trained model whose hyperparameters changed along the way; the model is not a setting a user
can take to their own training. These methods run the population as ``pbt`` / ``pb2`` do, take its answer (the
validation-best finished trial), read that trial's lineage from Tune's policy log (:mod:`ray_bilevel.tune.replay`)
and train once more from scratch under that schedule (``FixedHyperTrainable`` with ``hyper_schedule``). The replayed
trial is the method's answer; its cost is the population's plus the replay's (everything needed to produce it).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ray_bilevel.benchmark.methods import ExperimentSpec
from ray_bilevel.benchmark.summary import MethodRun
from ray_bilevel.config import ConfigError
from ray_bilevel.tune.replay import policy_file, policy_schedule, schedule_for

__all__ = ["replay_experiment", "merge_replay"]


def replay_experiment(spec: ExperimentSpec, population: MethodRun, experiment_path: str,
                      hyper_names: Sequence[str]) -> ExperimentSpec:
    """The one-trial experiment that replays ``population``'s answer: its lineage's first config, then each
    exploit's new values after the same number of Tune iterations."""
    if not population.incumbents:
        raise ConfigError(f"{spec.task} / {spec.method}: the population has no finished trial with a finite "
                          f"{spec.metric}, so there is no schedule to replay.")
    answer = population.incumbents[-1]
    config = {k: v for k, v in answer["config"].items() if k != "hyper_schedule"}
    initial, changes = policy_schedule(policy_file(experiment_path, str(answer.get("trial_id") or "")))
    names = list(hyper_names)
    if initial is not None:  # the lineage started from another trial's first config
        config.update({k: v for k, v in initial.items() if k in names})
    config["hyper_schedule"] = schedule_for(changes, names)
    return dataclasses.replace(spec, param_space=config, search_alg=None, scheduler=None, searcher=None,
                               num_samples=1, trials=1, replay=False, stops_early=False)


def merge_replay(population: MethodRun, replayed: MethodRun, spec: ExperimentSpec,
                 hyper_names: Sequence[str]) -> MethodRun:
    """The method's run: the replay's answer, booked at the population's cost plus the replay's; its anytime curve
    starts when the replay ends (before it there is no schedule to re-run)."""
    pop, rep = population.row, replayed.row
    row = dict(rep)
    row["method"] = spec.method
    for key in ("cpu_s", "trial_time_s", "wall_time_s"):
        row[key] = round((pop.get(key) or 0.0) + (rep.get(key) or 0.0), 2)
    row["cost_flops"] = (pop.get("cost_flops") or 0.0) + (rep.get("cost_flops") or 0.0)
    row["cost_gflop"] = round(row["cost_flops"] / 1e9, 3)
    networks = dict(pop.get("cost_flops_by_network") or {})
    for k, v in (rep.get("cost_flops_by_network") or {}).items():
        networks[k] = networks.get(k, 0.0) + v
    row["cost_flops_by_network"] = dict(sorted(networks.items()))
    for key in ("trials", "errors", "lower_steps"):
        row[key] = int(pop.get(key) or 0) + int(rep.get(key) or 0)
    config = replayed.config or {}
    row["schedule"] = {"initial": {k: config[k] for k in hyper_names if k in config},
                       "changes": config.get("hyper_schedule", [])}
    offset_cost, offset_cpu = pop.get("cost_flops") or 0.0, pop.get("cpu_s") or 0.0
    offset_s = max((t["end_s"] for t in population.finished), default=0.0)
    shifted = {}
    for t in replayed.finished:
        shifted[t["name"]] = {**t, "cum_cost_flops": t.get("cum_cost_flops", 0.0) + offset_cost,
                              "cum_cpu_s": t.get("cum_cpu_s", 0.0) + offset_cpu, "end_s": t["end_s"] + offset_s}
    run = dataclasses.replace(replayed, spec=dataclasses.replace(spec, trials=spec.trials + 1), row=row,
                              trials=population.trials + replayed.trials)
    run.finished = list(shifted.values())
    run.incumbents = [shifted.get(t["name"], t) for t in replayed.incumbents]
    return run
