"""Deterministic driver kills for the resume tests (issue 25): SIGKILL the Tune driver at a named phase.

``install()`` reads ``RB_KILL`` = ``"<phase>:<n>[@<name>]"`` from the environment and patches the installed Ray's
Tune driver so that the process kills itself (SIGKILL: nothing is saved on the way out) the ``n``-th time it reaches
that phase (in an experiment whose folder's path contains ``name``, if given). The phases are the moments at which
what a restore reads (the experiment state, the searcher state, the trial folders) can be left from different
instants:

==================  ==========================================================================================
``result``          the driver has processed a training result, before any snapshot of it
``trial_added``     the searcher has produced a new trial, before the experiment state records it
``after_state``     in a snapshot: the experiment state written, the searcher's state not yet
``upload_state``    in the upload to the storage folder: the experiment state copied, the searcher's not yet
``upload_search``   in the upload: the searcher's state copied, the experiment state not yet
``upload_torn``     in the upload: the experiment state half copied (a torn file)
==================  ==========================================================================================

The upload phases replace Tune's directory copy (``pyarrow.fs.copy_files``, whose file order and concurrency are
not fixed) by a file-by-file copy in a chosen order, one of the orders the real copy can take. Test-only: the
package never imports this.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PHASES = ("result", "trial_added", "after_state", "upload_state", "upload_search", "upload_torn")
_count: dict[str, int] = {}


def _reached(phase: str, where: str = "") -> None:
    want = os.environ.get("RB_KILL", "")
    if not want:
        return
    want, _, only = want.partition("@")
    name, _, n = want.partition(":")
    if name != phase or only not in where:
        return
    _count[phase] = _count.get(phase, 0) + 1
    if _count[phase] >= int(n or 1):
        marker = os.environ.get("RB_KILL_MARKER")
        if marker:
            Path(marker).write_text(f"{phase}:{_count[phase]}\n")
        os.kill(os.getpid(), signal.SIGKILL)


def _is_state(name: str) -> bool:
    return name.startswith("experiment_state-")


def _is_search(name: str) -> bool:
    return name.startswith(("basic-variant-state-", "search_gen_state-", "searcher-state-"))


def _ordered_upload(local_path: str, fs: Any, fs_path: str, exclude: Any = None) -> None:
    """Tune's experiment upload as a file-by-file copy, experiment state first (``upload_state``/``upload_torn``)
    or the searcher's first (``upload_search``), with the kill between the two (or mid-file)."""
    phase = os.environ.get("RB_KILL", "").partition(":")[0]
    src = Path(local_path)
    if src.is_file():  # a single file: as Tune does
        shutil.copyfile(src, fs_path)
        return
    files = sorted(p for p in src.rglob("*") if p.is_file())
    first = _is_search if phase == "upload_search" else _is_state
    files.sort(key=lambda p: (not first(p.name), str(p)))
    for path in files:
        dest = Path(fs_path) / path.relative_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if phase == "upload_torn" and _is_state(path.name):
            data = path.read_bytes()
            dest.write_bytes(data[: len(data) // 2])
            _reached("upload_torn", fs_path)
        shutil.copyfile(path, dest)
        if _is_state(path.name) and phase == "upload_state":
            _reached("upload_state", fs_path)
        if _is_search(path.name) and phase == "upload_search":
            _reached("upload_search", fs_path)


def _after(method: Callable[..., Any], phase: str) -> Callable[..., Any]:
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = method(self, *args, **kwargs)
        _reached(phase, self._storage.experiment_fs_path)
        return out

    return wrapped


def _before(method: Callable[..., Any], phase: str) -> Callable[..., Any]:
    def wrapped(self: Any, dirpath: str, *args: Any, **kwargs: Any) -> Any:
        _reached(phase, dirpath)  # the staging folder's path names the experiment
        return method(self, dirpath, *args, **kwargs)

    return wrapped


def install() -> None:
    """Patch Tune's driver for ``RB_KILL`` (no-op without it)."""
    phase = os.environ.get("RB_KILL", "").partition(":")[0]
    if not phase:
        return
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the patched upload may travel to the actors
    if phase not in PHASES:
        raise ValueError(f"RB_KILL phase {phase!r} is not one of {PHASES}")
    from ray.train._internal import storage
    from ray.tune.execution import tune_controller
    from ray.tune.execution.tune_controller import TuneController

    if phase == "result":
        TuneController._process_trial_result = _after(TuneController._process_trial_result, "result")
    elif phase == "trial_added":
        TuneController.add_trial = _after(TuneController.add_trial, "trial_added")
    elif phase == "after_state":  # the searcher's save, which Tune calls right after writing the experiment state
        from ray.tune.search import BasicVariantGenerator, SearchGenerator

        for cls in (BasicVariantGenerator, SearchGenerator):
            cls.save_to_dir = _before(cls.save_to_dir, "after_state")
    else:
        storage._upload_to_fs_path = _ordered_upload
    del tune_controller
