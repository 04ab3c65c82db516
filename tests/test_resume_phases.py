"""Issue 25: a comparison whose driver is SIGKILLed at each phase of Tune's snapshotting resumes (``--resume``) to
the full budget and the answers of an uninterrupted run, not by timing luck: ``_kill_phases`` kills the driver the
n-th time it reaches a named phase (see its doc for the phases). The root cause these guard is in
``ray_bilevel/benchmark/snapshot.py``: a torn or mismatched (experiment state, searcher state) pair left by Tune's
background copy made the restore restart the experiment from nothing (a parameterless ``…_00000_…`` trial).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import _ray_procs  # noqa: E402 - tests/ helper

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
METHODS = "random,bayes,optuna_tpe"
DRIVER = textwrap.dedent(
    """
    import runpy, sys
    sys.path.insert(0, {tests!r})
    import _kill_phases
    _kill_phases.install()
    sys.argv = [{compare!r}] + sys.argv[1:]
    runpy.run_path({compare!r}, run_name="__main__")
    """
)
# (phase, n, experiment): the n-th time the driver reaches the phase in that method's experiment
CASES = [
    ("result", 9, "toy-random"),
    ("trial_added", 3, "toy-bayes"),
    ("after_state", 12, "toy-optuna_tpe"),
    ("upload_state", 14, "toy-bayes"),
    ("upload_search", 10, "toy-random"),
    ("upload_torn", 20, "toy-random"),  # the symptom of the issue: restarted from nothing before the fix
    ("upload_torn", 16, "toy-optuna_tpe"),
]


def _env() -> dict[str, str]:
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0", "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RB_KILL", None)
    return env


def _compare(script: Path, out: Path, extra: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(script), "--task", "toy", "--preset", "smoke", "--methods", METHODS, "--trials", "5",
           "--num-cpus", "1", "--concurrent-methods", "1", "--out", str(out), "--no-plots", "--verbose", "0", *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=out.parent)
    started: dict[int, int] = {}
    deadline = time.time() + 400
    while proc.poll() is None and time.time() < deadline:
        started.update(_ray_procs.snapshot(None, roots=[proc.pid]))  # its Ray outlives a killed driver
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    text = proc.communicate()[0]
    _ray_procs.kill(started)
    return subprocess.CompletedProcess(cmd, proc.returncode, text, "")


def _answers(out: Path) -> dict[str, dict]:
    """Per method: trials, the validation-chosen answer and value, counted cost, and every trial's configuration."""
    rows = json.loads((out / "results.json").read_text())
    answers = {}
    for row in rows:
        folder = out / "ray_results" / f"toy-{row['method']}-s0"
        configs = set()
        for params in folder.glob("Bench*/params.json"):
            cfg = json.loads(params.read_text())
            configs.add((round(cfg["x0"], 9), round(cfg["x1"], 9)))
        answers[row["method"]] = {"trials": row["trials"], "errors": row["errors"], "best": row["best_config"],
                                  "val": row["metric_value_val"], "test": row["metric_value"],
                                  "cost_flops": row["cost_flops"], "configs": configs}
    return answers


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("ref")
    script = base / "driver.py"
    script.write_text(DRIVER.format(tests=str(TESTS_DIR), compare=str(REPO / "benchmarks" / "compare.py")))
    out = base / "out"
    done = _compare(script, out, [], _env())
    assert done.returncode == 0, done.stdout[-3000:]
    return script, _answers(out)


@pytest.mark.slow
@pytest.mark.parametrize("phase,n,experiment", CASES, ids=[f"{p}-{n}-{e}" for p, n, e in CASES])
def test_killed_at_a_phase_resumes_to_the_uninterrupted_answers(reference, tmp_path, phase, n, experiment):
    script, expected = reference
    out = tmp_path / "out"
    marker = tmp_path / "killed"
    killed = _compare(script, out, [],
                      {**_env(), "RB_KILL": f"{phase}:{n}@{experiment}", "RB_KILL_MARKER": str(marker)})
    assert killed.returncode == -9 and marker.exists(), \
        f"the driver was not killed at {phase}:{n}:\n{killed.stdout[-2000:]}"
    assert not (out / "results.json").exists()
    resumed = _compare(script, out, ["--resume"], _env())
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    got = _answers(out)
    assert set(got) == set(expected)
    for method, want in expected.items():
        assert got[method] == want, (method, got[method], want)
