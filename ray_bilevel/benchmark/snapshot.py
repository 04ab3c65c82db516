"""A consistent copy of what Tune's experiment restore reads, so that a driver killed at any moment resumes whole.

Why (issue 25, the root cause of "a resumed search can lose trials"): Tune (2.60) writes the experiment state
(``experiment_state-S.json``: every trial, its status and checkpoint) and the searcher's state
(``basic-variant-state-S.json``, or ``search_gen_state-S.json`` + ``searcher-state-S.pkl``) into a local staging
folder, then copies that folder into the experiment folder in the background, file by file, in no fixed order and
not atomically. A driver killed during that copy leaves the experiment folder with

* a *torn* experiment state: ``Tuner.restore`` then logs "Failed to restore the run state", **restarts the
  experiment** with an empty parameter space and names its first trial ``…_00000_…`` again (a trial without
  parameters, which fails), so the search ends with a fraction of its budget; or
* an experiment state and a searcher state from different snapshots: the searcher proposes trials the experiment
  already has, or forgets ones it has.

The fix: :class:`StateSnapshot`, a Tune callback, is called by Tune right after each snapshot is written whole to the
staging folder (``Callback.get_state`` runs after the experiment and searcher states are saved) and copies that
snapshot's files into ``.ray_bilevel_snapshot-N/`` of the experiment folder, then points
``ray_bilevel_snapshot.json`` at it with an atomic rename. :func:`restore_snapshot`, called before
``Tuner.restore``, puts the pointed-to pair back in place of whatever the background copy left. A kill during our
own copy leaves the pointer at the previous whole snapshot. Local experiment folders only; for a storage URI Tune's
own copy is all there is (docs/algorithms.md §4, "Resume after a fault").
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
from typing import Any

from ray.tune import Callback

from ray_bilevel.benchmark.store import atomic_write_json, read_json
from ray_bilevel.config import ConfigError

__all__ = ["StateSnapshot", "restore_snapshot", "POINTER"]

POINTER = "ray_bilevel_snapshot.json"
_STATE = "experiment_state-"
#: the files of one Tune snapshot: experiment state, the searcher's (random/grid, Searcher-based) and callbacks'
_SNAPSHOT_FILE = re.compile(r"^(experiment_state|basic-variant-state|search_gen_state|searcher-state)-(?P<s>.+)\.(json|pkl)$")


def _session(name: str) -> str | None:
    m = _SNAPSHOT_FILE.match(name)
    return m.group("s") if m else None


def _snapshot_files(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if _session(n) is not None)


class StateSnapshot(Callback):
    """Keep the last whole Tune snapshot of the experiment at ``experiment_path`` (see the module doc)."""

    def __init__(self, experiment_path: str) -> None:
        self.experiment_path = experiment_path
        self._staging: str | None = None
        self._index = 0

    def __getstate__(self) -> dict[str, Any]:  # pickled into tuner.pkl: the path only
        return {"experiment_path": self.experiment_path, "_staging": None, "_index": 0}

    def _note_staging(self, trial: Any) -> None:
        storage = getattr(trial, "storage", None)
        path = getattr(storage, "experiment_driver_staging_path", None)
        if path:
            self._staging = str(path)

    def on_trial_add(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._note_staging(trial)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._note_staging(trial)

    def get_state(self) -> dict | None:
        """Called by Tune right after it wrote a whole snapshot to the staging folder: copy it (returns ``None``, so
        Tune writes no callback-state file of ours)."""
        if self._staging and os.path.isdir(self._staging) and os.path.isdir(self.experiment_path):
            self._copy(self._staging)
        return None

    def _copy(self, staging: str) -> None:
        states = sorted(n for n in os.listdir(staging) if n.startswith(_STATE) and n.endswith(".json"))
        if not states:
            return
        session = _session(states[-1])  # the newest session's: the one this driver writes
        files = [n for n in _snapshot_files(staging) if _session(n) == session]
        self._index = max(self._index, _last_index(self.experiment_path)) + 1
        target = os.path.join(self.experiment_path, f".ray_bilevel_snapshot-{self._index}")
        tmp = target + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for name in files:
            shutil.copyfile(os.path.join(staging, name), os.path.join(tmp, name))
        os.replace(tmp, target)
        atomic_write_json(os.path.join(self.experiment_path, POINTER), {"folder": os.path.basename(target), "files": files})
        for old in glob.glob(os.path.join(self.experiment_path, ".ray_bilevel_snapshot-*")):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)


def _last_index(experiment_path: str) -> int:
    pointer = os.path.join(experiment_path, POINTER)
    if not os.path.exists(pointer):
        return 0
    try:
        return int(str(json.loads(open(pointer).read())["folder"]).rsplit("-", 1)[1])
    except (OSError, ValueError, KeyError, IndexError):
        return 0


def restore_snapshot(experiment_path: str) -> bool:
    """Make ``experiment_path`` restorable before ``Tuner.restore`` reads it; returns whether to restore it.

    With a snapshot, its pair replaces whatever the background copy left: True. Without one (the driver was killed
    before the experiment's first trial, or the folder is from an older version), the newest experiment state must
    be whole: True if it is; if it is torn and no trial has started, Tune's files are removed and False says "start
    afresh" (nothing had run); if it is torn and trials have run, a one-line :class:`ConfigError` (Tune would
    silently restart the experiment from nothing)."""
    fix = f"delete the folder {experiment_path} to run this method again (--resume reuses the others)"
    pointer = os.path.join(experiment_path, POINTER)
    if os.path.exists(pointer):
        record = read_json(pointer, fix=fix, expect=dict)
        folder = os.path.join(experiment_path, str(record.get("folder", "")))
        files = [str(f) for f in record.get("files", [])]
        if os.path.isdir(folder) and all(os.path.exists(os.path.join(folder, f)) for f in files):
            for name in _snapshot_files(experiment_path):
                os.unlink(os.path.join(experiment_path, name))
            for name in files:
                shutil.copyfile(os.path.join(folder, name), os.path.join(experiment_path, name))
            return True
    states = sorted(n for n in os.listdir(experiment_path) if n.startswith(_STATE) and n.endswith(".json"))
    if not states:
        return True  # Tune's own error names what is missing
    try:
        read_json(os.path.join(experiment_path, states[-1]), fix=fix, expect=dict)
    except ConfigError:
        started = any(os.path.isdir(os.path.join(experiment_path, n)) and not n.startswith(".")
                      for n in os.listdir(experiment_path))
        if started:
            raise
        for name in [*_snapshot_files(experiment_path), "tuner.pkl"]:
            if os.path.exists(os.path.join(experiment_path, name)):
                os.unlink(os.path.join(experiment_path, name))
        return False
    return True
