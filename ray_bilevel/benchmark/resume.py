"""What ``--resume`` reads and checks: the state file of a method's folder (``ray_bilevel_compare.json``).

A method's experiment folder keeps a small state file: its budget and settings (written before the first trial, so
a killed run keeps them), its wall time and CPU-seconds so far and when it started. A resumed method must ask for the
budget and settings it was run with, and a finished one must hold its whole budget; a search of another budget runs
beside the old one (:func:`method_name`). URIs (``s3://``...) are left to Tune: no state file, no deletion.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

from ray_bilevel.benchmark.methods import ExperimentSpec
from ray_bilevel.benchmark.store import atomic_write_json, read_json
from ray_bilevel.config import ConfigError
from ray_bilevel.tune.cluster import is_uri

__all__ = ["STATE_FILE", "IncompleteRunError", "read_state", "write_state", "prepare_dir", "check_budget",
           "check_complete", "check_settings", "settings_key", "method_name", "session_cpu"]

#: The state file of a method's folder.
STATE_FILE = "ray_bilevel_compare.json"


def read_state(path: str) -> dict[str, Any]:
    """The state file of a method's folder ({} when there is none); a truncated or corrupt one is a ConfigError."""
    try:
        return read_json(os.path.join(path, STATE_FILE), expect=dict,
                         fix=f"delete the folder {path} to run this method again (--resume still reuses the "
                             "finished methods and seeds).")
    except FileNotFoundError:
        return {}


def write_state(path: str, state: Mapping[str, Any]) -> None:
    atomic_write_json(os.path.join(path, STATE_FILE), dict(state))


def prepare_dir(path: str, resume: bool) -> dict[str, Any]:
    """A fresh experiment folder unless resuming; refuse to delete a folder this harness did not write.

    The folder keeps a small state file (wall time so far, start time) so a resumed method reports
    the time of all its sessions. URIs (``s3://``...) are left to Tune: no state file, no deletion.
    """
    if is_uri(path):
        return {}
    state = read_state(path) if resume else {}
    if not resume and os.path.exists(path):
        if not os.path.exists(os.path.join(path, STATE_FILE)):
            raise ConfigError(f"{path} exists and was not written by compare.py; pass --resume or another "
                              "--storage-path.")
        shutil.rmtree(path)
    state.setdefault("start", time.time())
    state.setdefault("wall_time_s", 0.0)
    write_state(path, state)
    return state


def check_budget(state: dict[str, Any], trials: int, path: str) -> None:
    """A resumed method must ask for the budget it was run with: Tune restores an experiment with its old
    ``num_samples``, and a searcher's first n points are not the first n of a longer search (the GP's random
    start scales with the budget), so "more trials" cannot extend a finished search without changing it. Local
    folders never get here with another budget (:func:`method_name` puts that search beside the old one); a
    remote storage URI, whose state this harness does not read, can."""
    done = state.get("trials")
    if done is not None and int(done) != int(trials):
        raise ConfigError(
            f"{path} was run with {done} trial(s), and --resume now asks for {trials}: a finished search cannot be "
            f"extended to another budget without changing its answer. Write the new budget to another --out, or "
            f"delete {path} to rerun this method with {trials} trial(s) (finished methods and seeds are still "
            "reused).")


class IncompleteRunError(RuntimeError):
    """A method finished with fewer trials than its budget (see :func:`check_complete`)."""


def check_complete(spec: ExperimentSpec, ran: int, path: str) -> None:
    """A finished method must hold its whole budget: a search whose searcher cannot stop early (every one but
    greedy) that ends with fewer trials than ``spec.trials`` lost some, which a Tune restore after the driver was
    killed at an unlucky moment can do; its answer would be reported under a budget it never ran."""
    if not spec.stops_early and ran < spec.trials:
        raise IncompleteRunError(
            f"{spec.task} / {spec.method} finished with {ran} of its {spec.trials} trial(s) ({path}): the restored "
            f"experiment lost trials, so its answer is not that of its budget. Delete {path} and run again with "
            f"--resume (finished methods and seeds are reused).")


def settings_key(base: Mapping[str, Any]) -> str:
    """The task settings a method's trials ran with (everything but task and seed), as canonical JSON."""
    return json.dumps({k: v for k, v in base.items() if k not in ("task", "seed")}, sort_keys=True, default=str)


def method_name(storage: str, name: str, trials: int, resume: bool) -> str:
    """The experiment folder of one method and seed: ``TASK-METHOD-sSEED``, or ``...-tN`` when resuming with a budget
    of N trials while that folder holds a search of another budget. So ``--resume --trials paper`` into a finished
    quick comparison reuses what does not depend on the budget (default, bilevel, the dense oracle: their trial
    counts do not change) and runs each search afresh at the new budget beside the old one, which stays and is
    reused when the old budget is asked for again (a search of N trials is not the shorter one plus more points)."""
    if not resume or is_uri(storage):
        return name
    done = read_state(os.path.join(storage, name)).get("trials")
    return name if done is None or int(done) == int(trials) else f"{name}-t{int(trials)}"


def check_settings(state: dict[str, Any], base: Mapping[str, Any], path: str) -> None:
    """A resumed method must run with the settings it was run with (``--preset``, ``--set``): otherwise its finished
    trials would be reported under settings they never ran with. Folders of older versions record none: not
    checked."""
    done = state.get("settings")
    if done is not None and done != settings_key(base):
        raise ConfigError(
            f"{path} was run with the settings {done}, and --resume now asks for {settings_key(base)}: its finished "
            f"trials cannot be reused under other settings. Write the new settings to another --out, or delete {path} "
            f"to rerun this method with them (finished methods and seeds are still reused).")


def session_cpu(state: Mapping[str, Any], grid: Any, t_fit: float, total: float) -> float:
    """CPU-seconds the method's trials spent in this invocation: its total minus what an earlier session of a
    resumed folder had spent (recorded in the state file; for a folder of an older version without that record, a
    method none of whose trials reported since this session began ran entirely before it)."""
    prior = state.get("cpu_s")
    if prior is None and state.get("wall_time_s"):
        stamps = [float((grid[i].metrics or {}).get("timestamp") or 0.0) for i in range(len(grid))]
        prior = total if stamps and max(stamps) < t_fit else 0.0
    return max(0.0, total - float(prior or 0.0))
