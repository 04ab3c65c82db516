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
staging folder (``Callback.get_state`` runs after the experiment and searcher states are saved) and packs that
snapshot's files into one file of the experiment folder, ``ray_bilevel_snapshot.json``, written whole or not at all
(a temporary file renamed over it). It writes the same file into the staging folder too: a restored experiment's
staging folder holds the pointer downloaded at the restore, and Tune's copy of the staging folder would otherwise
put that stale pointer back over the fresh one, so that a second resume rolled the experiment back to its first
restore and ran its finished trials again. :func:`restore_snapshot`, called before ``Tuner.restore``, puts the pair
back in place of whatever the background copy left. A kill during our own write leaves the previous whole snapshot.
Local experiment folders only; for a storage URI Tune's own copy is all there is (docs/algorithms.md §4, "Resume after a
fault").
"""
from __future__ import annotations

import base64
import os
import re
from typing import Any

from ray.tune import Callback

from ray_bilevel.benchmark.store import atomic_write_bytes, atomic_write_json, read_json
from ray_bilevel.config import ConfigError

__all__ = ["StateSnapshot", "restore_snapshot", "POINTER"]

POINTER = "ray_bilevel_snapshot.json"
_FORMAT = "ray_bilevel.tune_snapshot/1"
_STATE = "experiment_state-"
#: the files of one Tune snapshot: the experiment state and the searcher's (random/grid, or Searcher-based)
_SNAPSHOT_FILE = re.compile(
    r"^(experiment_state|basic-variant-state|search_gen_state|searcher-state)-(?P<s>.+)\.(json|pkl)$")


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

    def __getstate__(self) -> dict[str, Any]:  # pickled into tuner.pkl: the path only
        return {"experiment_path": self.experiment_path, "_staging": None}

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
        """Called by Tune right after it wrote a whole snapshot to the staging folder: keep it (returns ``None``, so
        Tune writes no callback-state file of ours)."""
        if self._staging and os.path.isdir(self._staging) and os.path.isdir(self.experiment_path):
            self._keep(self._staging)
        return None

    def _keep(self, staging: str) -> None:
        states = sorted(n for n in os.listdir(staging) if n.startswith(_STATE) and n.endswith(".json"))
        if not states:
            return
        session = _session(states[-1])  # the newest session's: the one this driver writes
        files = {}
        for name in _snapshot_files(staging):
            if _session(name) == session:
                with open(os.path.join(staging, name), "rb") as fh:
                    files[name] = base64.b64encode(fh.read()).decode("ascii")
        record = {"format": _FORMAT, "files": files}
        # into the staging folder first: after a restore it holds the pointer Tune downloaded then, and Tune's sync
        # copies the staging folder over the experiment folder, so a stale pointer there would overwrite ours and a
        # second resume would roll the experiment back to its first restore
        atomic_write_json(os.path.join(staging, POINTER), record)
        atomic_write_json(os.path.join(self.experiment_path, POINTER), record)


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
        files = record.get("files") or {}
        if record.get("format") == _FORMAT and any(str(n).startswith(_STATE) for n in files):
            if any(_session(str(n)) is None or os.sep in str(n) for n in files):
                raise ConfigError(f"{pointer} names files that are not Tune's state ({sorted(files)}); {fix}")
            for name in _snapshot_files(experiment_path):
                os.unlink(os.path.join(experiment_path, name))
            for name, data in files.items():
                atomic_write_bytes(os.path.join(experiment_path, name), base64.b64decode(data))
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
