"""Fault tolerance (issue 6, item 3): trials retry from their last checkpoint and end exactly where an
uninterrupted seeded run ends; a killed driver's experiment resumes with ``Tuner.restore`` without
re-running finished trials.

Faults are injected by :func:`faulty`, a test-only subclass of a real Task that reads extra
``ft_*`` config keys: ``ft_log`` (append ``"<tag> <step index> <pid>"`` per step), ``ft_sleep``
(seconds per step, so a kill lands mid-run), ``ft_crash_at`` + ``ft_marker`` (raise once at that
step index; the marker file makes it once). The classes are pickled by value so Ray workers need
not import this test module.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ray import cloudpickle, tune

from ray_bilevel import BilevelTrainable, FixedHyperTrainable
from ray_bilevel.tasks.base import Task
from ray_bilevel.tasks.toy import ToyTask

import _ray_procs  # noqa: E402 - tests/ helper

cloudpickle.register_pickle_by_value(sys.modules[__name__])

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


def faulty(base: type[Task]) -> type[Task]:
    """``base`` plus fault injection on every ``hyper_step`` / ``lower_step`` (see module doc)."""

    class Faulty(base):  # type: ignore[misc, valid-type]
        def __init__(self, config: dict[str, Any]) -> None:
            config = dict(config)
            self.ft = {k: config.pop(k) for k in list(config) if k.startswith("ft_")}
            super().__init__(config)
            self.ft_index = 0
            if "ft_tag" not in self.ft:  # the trial's starting point names it in the log
                self.ft["ft_tag"] = ",".join(f"{v:.9g}" for v in self.hyperparameters().values())

        def _event(self) -> None:
            index = self.ft_index
            if self.ft.get("ft_log"):
                with open(self.ft["ft_log"], "a") as fh:
                    fh.write(f"{self.ft.get('ft_tag', '-')} {index} {os.getpid()}\n")
            if self.ft.get("ft_sleep"):
                time.sleep(self.ft["ft_sleep"])
            crash_at, marker = self.ft.get("ft_crash_at"), self.ft.get("ft_marker")
            if crash_at is not None and index == crash_at and not os.path.exists(marker):
                Path(marker).touch()
                raise RuntimeError(f"injected failure at step {index}")

        def _step(self, work: Callable[[], dict[str, float]]) -> dict[str, float]:
            if getattr(self, "_ft_busy", False):  # called by the task itself: count the trainable's calls only
                return work()
            self._event()
            self.ft_index += 1
            self._ft_busy = True
            try:
                return work()
            finally:
                self._ft_busy = False

        def hyper_step(self) -> dict[str, float]:
            return self._step(super().hyper_step)

        def lower_step(self) -> dict[str, float]:
            return self._step(super().lower_step)

        def evaluate(self, final: bool = False) -> dict[str, float]:
            # a final evaluation may finish lower-level work itself (reward_lambda): not a trainable call
            busy, self._ft_busy = getattr(self, "_ft_busy", False), True
            try:
                return super().evaluate(final)
            finally:
                self._ft_busy = busy

        def state_dict(self) -> dict[str, Any]:
            return {**super().state_dict(), "ft_index": self.ft_index}

        def load_state_dict(self, state: Any) -> None:
            super().load_state_dict(state)
            self.ft_index = int(state["ft_index"])

    Faulty.__name__ = Faulty.__qualname__ = f"Faulty{base.__name__}"
    return Faulty


FaultyToy = faulty(ToyTask)


def state_settled(storage: Path, terminated: int) -> bool:
    """Tune's experiment state on disk parses and records at least ``terminated`` finished trials.

    A SIGKILL that lands while Tune rewrites that file (it is not written atomically) leaves a
    truncated file that no restore can read — a Tune limitation, documented in
    examples/cluster/README.md — so the tests kill only once the state on disk is complete.
    """
    files = sorted(storage.glob("*/experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return False
    try:
        text = files[-1].read_text()
        json.loads(text)
    except (OSError, ValueError):
        return False
    return text.count("TERMINATED") >= terminated


def read_log(path: Path) -> list[tuple[str, int, int]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            rows.append((parts[0], int(parts[1]), int(parts[2])))
    return rows


def uninterrupted(cls: type, config: dict[str, Any], iterations: int) -> dict[str, Any]:
    """The reference: the same seeded trial run in-process, no Ray, no faults."""
    t = cls(config=config)
    for _ in range(iterations):
        last = t.train()
    t.stop()
    return last


# -- a trial that crashes once --------------------------------------------------------------
@pytest.mark.parametrize("trainable", [BilevelTrainable, FixedHyperTrainable])
def test_trial_crashing_once_resumes_from_checkpoint_and_matches_uninterrupted(ray_local, tmp_path, trainable):
    log = tmp_path / "steps.log"
    base = {"preset": "smoke", "seed": 3, "x0": 0.7}
    # FixedHyperTrainable: 20 Tune iterations of 10 lower steps; crash inside iteration 6
    crash_at = 5 if trainable is BilevelTrainable else 55
    per_iter = 1 if trainable is BilevelTrainable else 10
    config = {"task": FaultyToy, **base, "ft_log": str(log), "ft_crash_at": crash_at, "ft_marker": str(tmp_path / "crashed")}
    grid = tune.Tuner(
        trainable,
        param_space=config,
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "ray"),
            name="crash_once",
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=2, checkpoint_at_end=True),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    ).fit()
    assert not grid.errors
    final = grid[0].metrics
    reference = uninterrupted(trainable, {"task": "toy", **base}, 20)
    assert final["done"] and final["training_iteration"] == reference["training_iteration"] == 20
    for key in ("x0", "x1", "upper_loss", "lower_loss", "samples_seen"):
        assert final[key] == reference[key], key
    # resumed from the checkpoint at Tune iteration 4 (not from scratch): steps of iteration 5 and 6 rerun
    indices = [i for _, i, _ in read_log(log)]
    assert indices == list(range(crash_at + 1)) + list(range(4 * per_iter, 20 * per_iter))
    assert (tmp_path / "crashed").exists()


# -- a trial actor killed mid-run -------------------------------------------------------------
def test_killed_trial_actor_finishes_from_checkpoint_with_identical_hyperparameters(ray_local, tmp_path):
    log = tmp_path / "steps.log"
    base = {"preset": "smoke", "seed": 2, "x0": -0.4}
    config = {"task": FaultyToy, **base, "ft_log": str(log), "ft_sleep": 0.1}
    killed: list[int] = []

    def killer() -> None:  # SIGKILL the trial's worker once it is past its second checkpoint
        deadline = time.time() + 120
        while time.time() < deadline:
            rows = read_log(log)
            if rows and rows[-1][1] >= 7:
                killed.append(rows[-1][2])
                os.kill(rows[-1][2], signal.SIGKILL)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    grid = tune.Tuner(
        BilevelTrainable,
        param_space=config,
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "ray"),
            name="kill_actor",
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=2, checkpoint_at_end=True),
            failure_config=tune.FailureConfig(max_failures=2),
        ),
    ).fit()
    thread.join(timeout=5)
    assert killed, "the trial finished before it could be killed"
    assert not grid.errors
    final = grid[0].metrics
    reference = uninterrupted(BilevelTrainable, {"task": "toy", **base}, 20)
    assert (final["x0"], final["x1"]) == (reference["x0"], reference["x1"])
    assert final["upper_loss"] == reference["upper_loss"] and final["training_iteration"] == 20
    rows = read_log(log)
    before = [i for _, i, pid in rows if pid == killed[0]]
    after = [i for _, i, pid in rows if pid != killed[0]]
    assert before[0] == 0 and before[-1] >= 7
    # the new actor starts at a checkpoint (an even Tune iteration >= 6), not at step 0
    assert after[0] >= 6 and after[0] % 2 == 0 and after[0] <= before[-1] and after[-1] == 19
    assert after == list(range(after[0], 20))


# -- the driver killed and the experiment resumed ----------------------------------------------
DRIVER = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests!r})
    from ray import tune
    from ray_bilevel import BilevelTrainable
    from ray_bilevel.tune.cluster import init_ray
    from test_fault_tolerance import FaultyToy

    storage, log, temp_dir = sys.argv[1:4]
    path = os.path.join(storage, "resume")
    init_ray("local", num_cpus=1, _temp_dir=temp_dir)
    # a Task class in the config is stored as an object reference: re-specify the space on restore
    space = {{"task": FaultyToy, "preset": "smoke", "seed": 4, "ft_log": log, "ft_sleep": 0.1,
             "x0": tune.grid_search([0.25, 0.5, 0.75]), "ft_tag": tune.sample_from(lambda s: s.config.x0)}}
    if tune.Tuner.can_restore(path):
        with open(log, "a") as fh:
            fh.write("RESTORE\\n")
        tuner = tune.Tuner.restore(path, trainable=BilevelTrainable, param_space=space,
                                   resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            BilevelTrainable, param_space=space,
            tune_config=tune.TuneConfig(max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=storage, name="resume", verbose=0,
                checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=5, checkpoint_at_end=True)))
    grid = tuner.fit()
    for r in grid:
        print("RESULT", r.config["x0"], repr(r.metrics["x0"]), repr(r.metrics["x1"]), r.metrics["training_iteration"], r.error is None)
    """
)


@pytest.mark.slow
def test_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    log = tmp_path / "steps.log"
    storage = tmp_path / "ray"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(TESTS_DIR)))
    temp_dir = tempfile.mkdtemp(prefix="rbft", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0", "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, str(script), str(storage), str(log), temp_dir]
    started: dict[int, int] = {}
    try:
        driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 240
        finished_tag = None
        while time.time() < deadline and driver.poll() is None:
            rows = read_log(log)
            done = {tag for tag, i, _ in rows if i == 19}
            if done:
                finished_tag = next(iter(done))
                if any(tag != finished_tag and i >= 7 for tag, i, _ in rows) and state_settled(storage, 1):
                    break
            time.sleep(0.05)
        assert driver.poll() is None, "the driver ended before it could be killed:\n" + driver.stdout.read()
        started = _ray_procs.snapshot(temp_dir, roots=[driver.pid])
        driver.kill()  # SIGKILL: no chance to save anything on the way out
        driver.wait(timeout=30)
        _ray_procs.kill(started)  # its Ray agents outlive it (they are re-parented), so kill them too
        before = read_log(log)

        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    finally:
        _ray_procs.kill(started)
        _ray_procs.kill(_ray_procs.snapshot(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not _ray_procs.alive(started)

    text = log.read_text()
    assert "RESTORE" in text
    after = [row for row in read_log(log)[len(before):]]
    # the finished trial was not run again; the interrupted one resumed from its checkpoint (iteration 5)
    assert finished_tag is not None and all(tag != finished_tag for tag, _, _ in after)
    interrupted = {tag for tag, i, _ in before if tag != finished_tag}
    for tag in interrupted:
        first = min(i for t, i, _ in after if t == tag)
        assert first in (5, 10, 15), (tag, first)
    results = [line.split() for line in out.stdout.splitlines() if line.startswith("RESULT")]
    assert len(results) == 3
    for _, x0, x0_final, x1_final, iters, ok in results:
        reference = uninterrupted(BilevelTrainable, {"task": "toy", "preset": "smoke", "seed": 4, "x0": float(x0)}, 20)
        assert ok == "True" and int(iters) == 20
        assert (float(x0_final), float(x1_final)) == (reference["x0"], reference["x1"]), x0


# -- searcher state saved and restored ---------------------------------------------------------
SEARCHER_TRIALS = 5


def searcher_experiment(storage: str, log: str, restore: bool) -> list[tuple[float, float]]:
    """Fixed-x toy trials proposed by the project's GP searcher (``make_searcher("bayes")``), one at a time.

    Returns the final (x0, x1) of every trial. With ``restore``, continues the experiment under
    ``storage`` with ``Tuner.restore`` (the searcher's pickled state included).
    """
    from ray_bilevel.tune.searchers import make_searcher

    space = {"x0": tune.uniform(-2.0, 2.0), "x1": tune.uniform(-2.0, 2.0)}
    plan = make_searcher("bayes", space, metric="upper_loss", mode="min", seed=0, num_samples=SEARCHER_TRIALS,
                         max_concurrent=1, n_initial_points=2)
    constants = {"task": FaultyToy, "preset": "smoke", "seed": 1, "ft_log": log, "ft_sleep": 0.01}
    path = os.path.join(storage, "searcher")
    if restore:
        tuner = tune.Tuner.restore(path, trainable=FixedHyperTrainable, param_space=constants,
                                   resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            FixedHyperTrainable,
            param_space={**plan.param_space, **constants},
            tune_config=plan.tune_config("upper_loss", "min"),
            run_config=tune.RunConfig(storage_path=storage, name="searcher", verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=5, checkpoint_at_end=True)),
        )
    grid = tuner.fit()
    assert not grid.errors, grid.errors
    return [(r.metrics["x0"], r.metrics["x1"]) for r in grid]


SEARCHER_DRIVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from ray_bilevel.tune.cluster import init_ray
    from test_fault_tolerance import searcher_experiment

    storage, log, temp_dir, restore = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "restore"
    init_ray("local", num_cpus=1, _temp_dir=temp_dir)
    if restore:
        with open(log, "a") as fh:
            fh.write("RESTORE\\n")
    print("DONE", len(searcher_experiment(storage, log, restore)))
    """
)


def first_seen(rows: list[tuple[str, int, int]]) -> list[str]:
    order: list[str] = []
    for tag, _, _ in rows:
        if tag not in order:
            order.append(tag)
    return order


@pytest.mark.slow
def test_searcher_state_survives_a_killed_driver(ray_local, tmp_path):
    """The GP searcher's state is saved with the experiment and restored by ``Tuner.restore``: the
    resumed experiment proposes exactly the points an uninterrupted one proposes, and finished
    trials are not run again."""
    ref_log = tmp_path / "ref.log"
    searcher_experiment(str(tmp_path / "ref"), str(ref_log), restore=False)
    reference = first_seen(read_log(ref_log))
    assert len(reference) == SEARCHER_TRIALS

    log, storage = tmp_path / "steps.log", tmp_path / "ray"
    script = tmp_path / "driver.py"
    script.write_text(SEARCHER_DRIVER.format(tests=str(TESTS_DIR)))
    temp_dir = tempfile.mkdtemp(prefix="rbsr", dir="/tmp")
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0", "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    started: dict[int, int] = {}
    try:
        driver = subprocess.Popen([sys.executable, str(script), str(storage), str(log), temp_dir, "fresh"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None:
            rows = read_log(log)
            order = first_seen(rows)
            # two or more trials finished (the GP has been told), the running one past a checkpoint
            if (len(order) >= 3 and any(tag == order[-1] and 70 <= i < 190 for tag, i, _ in rows)
                    and state_settled(storage, 2)):
                break
            time.sleep(0.05)
        assert driver.poll() is None, "the driver ended before it could be killed:\n" + driver.stdout.read()
        started = _ray_procs.snapshot(temp_dir, roots=[driver.pid])
        driver.kill()
        driver.wait(timeout=30)
        _ray_procs.kill(started)
        before = read_log(log)
        out = subprocess.run([sys.executable, str(script), str(storage), str(log), temp_dir, "restore"], env=env,
                             capture_output=True, text=True, timeout=400)
        assert out.returncode == 0 and f"DONE {SEARCHER_TRIALS}" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    finally:
        _ray_procs.kill(started)
        _ray_procs.kill(_ray_procs.snapshot(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
    after = read_log(log)[len(before):]
    # trials run one at a time: all but the last one started before the kill had finished (and
    # were recorded) before their successor started; the last one may resume from its checkpoint
    finished = set(first_seen(before)[:-1])
    assert len(finished) >= 2 and not finished & {tag for tag, _, _ in after}
    resumed = first_seen(before)[-1]
    assert all(i >= 50 for tag, i, _ in after if tag == resumed)  # from a checkpoint, not from step 0
    assert first_seen(before + after) == reference


# -- the real tasks -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["noise_schedule", "reward_lambda"])
def test_real_task_trial_crashing_once_matches_uninterrupted(ray_local, tmp_path, name):
    """A smoke-preset trial of a real task fails once mid-run, is retried from its last checkpoint
    (every iteration) and ends with exactly the hyperparameters and metrics of an uninterrupted run."""
    from ray_bilevel.config import ConfigError
    from ray_bilevel.tasks import get_task

    try:
        base = get_task(name)
        reference_task = base({"preset": "smoke"})
    except (ConfigError, FileNotFoundError) as exc:
        pytest.skip(f"{name} cannot run here yet: {exc}")
    iterations = reference_task.outer_budget
    hyper = list(reference_task.hyperparameters())
    del reference_task
    reference = uninterrupted(BilevelTrainable, {"task": name, "preset": "smoke"}, iterations)
    log = tmp_path / "steps.log"
    config = {"task": faulty(base), "preset": "smoke", "ft_log": str(log), "ft_crash_at": iterations - 1,
              "ft_marker": str(tmp_path / "crashed"), "ft_tag": name}
    grid = tune.Tuner(
        BilevelTrainable,
        param_space=config,
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "ray"), name=name, verbose=0,
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, checkpoint_at_end=True),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    ).fit()
    assert not grid.errors, grid.errors
    final = grid[0].metrics
    assert (tmp_path / "crashed").exists() and final["training_iteration"] == iterations and final["done"]
    # the retry resumed from the checkpoint of the iteration before the crash
    assert [i for _, i, _ in read_log(log)] == list(range(iterations)) + [iterations - 1]
    for key in hyper + [base.metric, "lower_loss"]:
        if key in reference:
            # float32 CPU kernels may take another reduction order in another worker process
            # (thread count), so the real tasks agree to ~1e-6 relative, not bit for bit
            assert final[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-7), (key, final[key], reference[key])


# -- compare.py --resume ---------------------------------------------------------------------------
def result_lines(experiment: Path) -> dict[str, int]:
    """Trial folder -> number of results it has written (lines of result.json)."""
    out = {}
    for trial in sorted(experiment.glob("Bench*")):
        f = trial / "result.json"
        out[trial.name] = len(f.read_text().splitlines()) if f.exists() else 0
    return out


@pytest.mark.slow
def test_compare_resume_after_the_driver_is_killed(tmp_path):
    """``compare.py`` killed (SIGKILL) in the middle of its random search; ``--resume`` finishes the
    run: finished experiments and trials are not run again, the interrupted search completes its
    budget, and every method is in the results."""
    compare = REPO / "benchmarks" / "compare.py"
    if not compare.exists():
        pytest.skip("benchmarks/compare.py has not landed")
    out = tmp_path / "out"
    cmd = [sys.executable, str(compare), "--task", "toy", "--preset", "smoke", "--methods", "default,bilevel,random",
           "--trials", "6", "--num-cpus", "1", "--out", str(out), "--no-plots", "--verbose", "0"]
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0", "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    random_dir = out / "ray_results" / "toy-random-s0"
    started: dict[int, int] = {}
    try:
        driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
        deadline = time.time() + 400
        while time.time() < deadline and driver.poll() is None:
            lines = result_lines(random_dir) if random_dir.exists() else {}
            if sum(1 for n in lines.values() if n > 0) >= 2:
                break
            time.sleep(0.05)
        assert driver.poll() is None, "compare.py ended before it could be killed:\n" + driver.stdout.read()[-3000:]
        started = _ray_procs.snapshot(None, roots=[driver.pid])
        driver.kill()
        driver.wait(timeout=30)
        _ray_procs.kill(started)
        before = {name: result_lines(out / "ray_results" / f"{name}-s0") for name in ("toy-default", "toy-bilevel", "toy-random")}
        assert not (out / "results.json").exists()
        resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    finally:
        _ray_procs.kill(started)
    assert not _ray_procs.alive(started)
    after = {name: result_lines(out / "ray_results" / f"{name}-s0") for name in before}
    # finished experiments: the same trials, not one more result
    assert before["toy-default"] and after["toy-default"] == before["toy-default"]
    assert before["toy-bilevel"] and after["toy-bilevel"] == before["toy-bilevel"]
    # the interrupted search: the same trial folders continued, new ones up to the budget of 6
    assert set(before["toy-random"]) <= set(after["toy-random"]) and len(after["toy-random"]) == 6
    full = max(after["toy-random"].values())
    for trial, n in before["toy-random"].items():
        if n == full:  # finished before the kill: not run again
            assert after["toy-random"][trial] == n, trial
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
    assert set(rows) == {"default", "bilevel", "random"} and all(r["errors"] == 0 for r in rows.values())
    assert rows["random"]["trials"] == 6
