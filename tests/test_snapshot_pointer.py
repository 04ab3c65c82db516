"""The state snapshot of a resumed experiment stays fresh (ray_bilevel/benchmark/snapshot.py).

After a restore, Tune's staging folder holds the ``ray_bilevel_snapshot.json`` downloaded at the restore, and Tune
copies the staging folder over the experiment folder after each snapshot. Measured on the noise-schedule run: that
stale pointer overwrote the fresh one, and the next ``--resume`` rolled the dense sweep back to its first restore
(5 of 25 trials finished) and ran finished trials again. The snapshot is now written into the staging folder too."""
from __future__ import annotations

import json
import os

from ray_bilevel.benchmark.snapshot import POINTER, StateSnapshot, restore_snapshot


def _write(path, text):
    with open(path, "w") as fh:
        fh.write(text)


def test_a_resumed_experiments_pointer_names_the_live_session_in_both_folders(tmp_path):
    experiment, staging = tmp_path / "exp", tmp_path / "staging"
    experiment.mkdir()
    staging.mkdir()
    old, new = "2026-12-05_08-39-30", "2026-12-05_13-57-17"
    stale = {"format": "ray_bilevel.tune_snapshot/1", "files": {}}
    _write(staging / POINTER, json.dumps(stale))  # what Tune downloaded at the restore
    _write(staging / f"experiment_state-{old}.json", '{"trials": 5}')
    _write(staging / f"experiment_state-{new}.json", '{"trials": 25}')
    _write(staging / f"searcher-state-{new}.pkl", "live searcher")
    snap = StateSnapshot(str(experiment))
    snap._staging = str(staging)
    assert snap.get_state() is None
    for folder in (experiment, staging):  # Tune's copy of the staging folder now carries the fresh pointer
        record = json.loads((folder / POINTER).read_text())
        assert sorted(record["files"]) == [f"experiment_state-{new}.json", f"searcher-state-{new}.pkl"]
    # a later restore puts the live session back, whatever else the folder holds
    _write(experiment / f"experiment_state-{old}.json", '{"trials": 5}')
    assert restore_snapshot(str(experiment))
    assert sorted(n for n in os.listdir(experiment) if n != POINTER) == [f"experiment_state-{new}.json",
                                                                          f"searcher-state-{new}.pkl"]
    assert (experiment / f"experiment_state-{new}.json").read_text() == '{"trials": 25}'
