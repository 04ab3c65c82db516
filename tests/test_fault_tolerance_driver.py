"""Fault tolerance (issue 6, item 3) when the driver dies: a killed driver's experiment resumes with
``Tuner.restore`` without re-running finished trials, the GP searcher's state survives, and ``compare.py --resume``
finishes an interrupted comparison. Faults are injected by ``_faults.faulty``; the driver scripts import ``_faults``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from _faults import SEARCHER_TRIALS, first_seen, read_log, searcher_experiment, state_settled, uninterrupted  # noqa: E402

from ray_bilevel import BilevelTrainable

import _ray_procs  # noqa: E402 - tests/ helper

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


# -- the driver killed and the experiment resumed ----------------------------------------------
DRIVER = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests!r})
    from ray import tune
    from ray_bilevel import BilevelTrainable
    from ray_bilevel.tune.cluster import init_ray
    from _faults import FaultyToy

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
        print("RESULT", r.config["x0"], repr(r.metrics["x0"]), repr(r.metrics["x1"]), r.metrics["training_iteration"],
              r.error is None)
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


SEARCHER_DRIVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from ray_bilevel.tune.cluster import init_ray
    from _faults import searcher_experiment

    storage, log, temp_dir, restore = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "restore"
    init_ray("local", num_cpus=1, _temp_dir=temp_dir)
    if restore:
        with open(log, "a") as fh:
            fh.write("RESTORE\\n")
    print("DONE", len(searcher_experiment(storage, log, restore)))
    """
)


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
    out = tmp_path / "out"
    cmd = [sys.executable, str(compare), "--task", "toy", "--preset", "smoke", "--methods", "default,bilevel,random",
           "--trials", "6", "--num-cpus", "1", "--out", str(out), "--no-plots", "--verbose", "0"]
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0", "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    random_dir = out / "ray_results" / "toy-random-s0"
    started: dict[int, int] = {}
    try:
        driver = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
        )
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
        before = {
            name: result_lines(out / "ray_results" / f"{name}-s0")
            for name in ("toy-default", "toy-bilevel", "toy-random")
        }
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
