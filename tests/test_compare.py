"""The benchmark harness: CLI parsing, equal budgets, the table, and runs on the toy task (end to end,
then resumed) and on the paper's tasks (``compare.py --preset smoke``, slow)."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_bilevel.benchmark import BenchmarkConfig, run_benchmark
from ray_bilevel.benchmark.evaluation import CACHE_DIR, evaluation_key
from ray_bilevel.benchmark.methods import build_experiment, iterations_per_step, methods_for
from ray_bilevel.benchmark.outputs import COLUMNS
from ray_bilevel.benchmark.tables import format_number, markdown_table
from ray_bilevel.config import ConfigError
from ray_bilevel.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compare_cli", ROOT / "benchmarks" / "compare.py")
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)


def test_cli_parses_every_option():
    cfg = compare.parse_args([
        "--task", "reward_lambda", "--preset", "smoke", "--methods", "bilevel,bayes", "--trials", "3", "--seed", "7",
        "--address", "auto", "--resources-per-trial", "cpu=2,gpu=0.5", "--storage-path", "/tmp/x", "--out", "o",
        "--resume", "--set", "eval_samples=32", "--set", "family=cosine", "--no-plots",
    ])
    assert cfg.tasks == ["reward_lambda"] and cfg.preset == "smoke" and cfg.methods == ["bilevel", "bayes"]
    assert (cfg.trials, cfg.seed, cfg.address, cfg.storage_path, cfg.out) == (3, 7, "auto", "/tmp/x", "o")
    assert cfg.resources == {"cpu": 2.0, "gpu": 0.5} and cfg.resume and not cfg.plots
    assert cfg.overrides == {"eval_samples": 32, "family": "cosine"}
    default = compare.parse_args([])  # the first look: bilevel, the default and random search at 2 trials
    assert default.tasks == ["noise_schedule", "reward_lambda"] and default.preset == "quick"
    assert (default.methods, default.trials) == (["default", "bilevel", "random"], 2) and default.first_look
    full = compare.parse_args(["--full"])  # the task's baselines and the oracle at the preset's budgets
    assert (full.methods, full.trials) == (None, None)
    assert compare.parse_args(["--methods", "bayes"]).trials is None  # any budget or method flag: no first look
    assert compare.parse_args(["--preset", "smoke"]).methods is None
    assert default.concurrent_methods is None  # auto: as many methods as trial slots (resolved once Ray is up)
    assert compare.parse_args(["--concurrent-methods", "3"]).concurrent_methods == 3
    with pytest.raises(ConfigError, match="'auto'"):
        compare.parse_args(["--concurrent-methods", "two"])


def test_cli_rejects_unknown_method_and_task_before_starting_ray(capsys):
    assert compare.main(["--task", "toy", "--methods", "default,bayesian", "--out", "/tmp/unused_compare"]) == 2
    assert "unknown method 'bayesian'" in capsys.readouterr().err
    assert compare.main(["--task", "toys", "--out", "/tmp/unused_compare"]) == 2
    assert "Did you mean 'toy'" in capsys.readouterr().err


def test_every_searcher_gets_the_same_trial_budget():
    space = get_task("noise_schedule").search_space()
    base = {"task": "noise_schedule", "preset": "quick", "seed": 0}
    budgets = {}
    for method in ("random", "bayes", "tpe", "greedy", "pbt"):
        spec = build_experiment(
            "noise_schedule",
            method,
            base,
            "fid_domain",
            "min",
            4,
            get_task("noise_schedule").benchmark.budget("quick"),
            0,
            2,
            space,
        )
        budgets[method] = (spec.trials, spec.num_samples)
        assert spec.param_space["task"] == "noise_schedule" and spec.metric == "fid_domain"
    assert set(budgets.values()) == {(4, 4)}
    assert methods_for("noise_schedule") == ("default", "bilevel", "greedy", "random", "bayes", "tpe", "pbt", "dense")
    assert methods_for("reward_lambda")[-2:] == ("weighted_sum", "dense")
    assert iterations_per_step(40, 4) == 10 and iterations_per_step(3, 4) == 1
    with pytest.raises(ConfigError, match="weighted_sum"):
        build_experiment("toy", "weighted_sum", base, "x", "min", 2, get_task("toy").benchmark.budget("smoke"), 0, 2)


def test_a_method_that_ends_short_of_its_budget_is_an_error_unless_its_searcher_may_stop_early():
    """A restored search that lost trials (seen once after SIGKILL + --resume: 3 of 6 random trials, rc 0) must not be
    reported under the budget it never ran; greedy legitimately ends early (it skips points it already ran)."""
    from ray_bilevel.benchmark import IncompleteRunError
    from ray_bilevel.benchmark.resume import check_complete

    space = get_task("noise_schedule").search_space()
    base = {"task": "noise_schedule", "preset": "quick", "seed": 0}
    budget = get_task("noise_schedule").benchmark.budget("quick")
    specs = {m: build_experiment("noise_schedule", m, base, "fid_domain", "min", 6, budget, 0, 2, space)
             for m in ("random", "bayes", "tpe", "grid", "pbt", "dense", "default", "greedy")}
    assert [m for m, s in specs.items() if s.stops_early] == ["greedy"]
    for method, spec in specs.items():
        check_complete(spec, spec.trials, "/x")  # a full budget passes
        if method == "greedy":
            check_complete(spec, spec.trials - 3, "/x")
        elif spec.trials > 1:
            with pytest.raises(IncompleteRunError, match=rf"{method} finished with {spec.trials - 1} of its "
                                                         rf"{spec.trials} "
                                                   r"trial\(s\) \(/x\).*Delete /x and run again with --resume"):
                check_complete(spec, spec.trials - 1, "/x")
        else:
            with pytest.raises(IncompleteRunError, match="0 of its 1"):
                check_complete(spec, 0, "/x")
    # a task's own method (a generic searcher over another task's space) follows its searcher
    own = build_experiment("reward_lambda", "weighted_sum", {"task": "reward_lambda", "preset": "smoke", "seed": 0},
                           "alignment_val", "max", 3, get_task("reward_lambda").benchmark.budget("smoke"), 0, 2)
    assert not own.stops_early


def test_table_reports_bilevel_against_default():
    rows = [
        {"task": "noise_schedule", "method": "default", "metric": "fid_domain", "metric_value": 30.0, "fid": 100.0,
         "fid_domain": 30.0, "is": 1.5, "alignment": None, "reward": None, "wall_time_s": 40.0, "trials": 1,
         "best_config": {"tau": 1.0}, "errors": 0},
        {"task": "noise_schedule", "method": "bilevel", "metric": "fid_domain", "metric_value": 20.0, "fid": 70.0,
         "fid_domain": 20.0, "is": 1.6, "alignment": None, "reward": None, "wall_time_s": 100.0, "trials": 1,
         "best_config": {"tau": 1.234}, "errors": 0},
    ]
    table = markdown_table(rows)
    assert "| bilevel | tau=1.23 | 70.0 | 20.0 | 1.60 | – | – | 100 | 2.5 | 1 |" in table
    assert "bilevel vs default: fid -30.0 %, fid_domain -33.3 %, is +6.7 %, time ×2.50" in table
    assert [format_number(v) for v in (None, 0.0012345, 123456789.0, 3)] == ["–", "0.00123", "1.23e+08", "3"]


def _check_outputs(out: Path, methods: list[str], task: str) -> list[dict]:
    rows = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rows if r["task"] == task] == methods
    for r in rows:
        assert set(COLUMNS) <= set(r)
        assert r["metric_value"] is not None and math.isfinite(r["metric_value"]), r
        assert r["trials"] >= 1 and r["errors"] == 0 and r["wall_time_s"] > 0
    with open(out / "results.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert list(csv_rows[0]) == list(COLUMNS) and len(csv_rows) == len(rows)
    table = (out / "table.md").read_text()
    assert all(f"| {m} |" in table for m in methods)
    assert (out / "plots" / f"{task}_metric_vs_time.png").stat().st_size > 1000
    return rows


def test_toy_benchmark_end_to_end_then_resume(ray_local, tmp_path, capsys):
    methods = ["default", "bilevel", "bayes", "greedy", "pbt"]
    cfg = BenchmarkConfig(tasks=["toy"], preset="smoke", methods=methods, trials=3, out=str(tmp_path), verbose=0)
    run_benchmark(cfg)
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith((tmp_path / "table.md").read_text().rstrip())  # the table is printed last
    rows = _check_outputs(tmp_path, methods, "toy")
    by = {r["method"]: r for r in rows}
    assert by["bilevel"]["metric_value"] < by["default"]["metric_value"]  # the toy's hypergradient works
    assert by["bayes"]["trials"] == by["greedy"]["trials"] == by["pbt"]["trials"] == 3
    assert (tmp_path / "plots" / "toy_bilevel_trajectory.png").exists()
    trial_dirs = sorted(p.name for p in (tmp_path / "ray_results" / "toy-bayes-s0").iterdir() if p.is_dir())
    cached = sorted((tmp_path / CACHE_DIR).glob("*.json"))  # one per reporting evaluation
    assert len(cached) >= len(methods)  # every method's answer, and the earlier incumbents of the searchers

    resumed = run_benchmark(BenchmarkConfig(tasks=["toy"], preset="smoke", methods=methods, trials=3, seeds=[0, 1],
                                            out=str(tmp_path), verbose=0, resume=True))  # extend with a second seed
    assert sorted(p.name for p in (tmp_path / "ray_results" / "toy-bayes-s0").iterdir() if p.is_dir()) == trial_dirs
    assert sorted((r.row["method"], r.row["seed"]) for r in resumed) == sorted((m, s) for m in methods for s in (0, 1))
    again = {r.row["method"]: r.row for r in resumed if r.row["seed"] == 0}
    for m in methods:  # nothing re-ran: the same best results, wall time carried over
        assert again[m]["metric_value"] == by[m]["metric_value"] and again[m]["wall_time_s"] >= by[m]["wall_time_s"]
    # efficiency counts this invocation only: the reused seed-0 methods' CPU-s are booked as reused
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert all(again[m]["session_cpu_s"] == 0.0 for m in methods), {
        m: (again[m]["session_cpu_s"], again[m]["cpu_s"]) for m in methods
    }
    assert info["reused_cpu_s"] == pytest.approx(sum(by[m]["cpu_s"] for m in methods), abs=0.05)
    session = info["trial_cpu_s"] - info["reused_cpu_s"] + info["reporting_cpu_s"]
    assert session <= (info["wall_s"] + info["startup_s"]) * info["cores"] * 1.01 and info["utilisation"] <= 1.01
    # the seed-0 reporting evaluations are read back, not run again: same test values, curves included
    assert info["reporting_reused"] == len(cached)
    assert all(
        again[m]["curve"] == by[m]["curve"] and again[m]["final_eval_s"] == by[m]["final_eval_s"] for m in methods
    )
    assert len(list((tmp_path / CACHE_DIR).glob("*.json"))) > len(cached)  # seed 1's evaluations were added
    # other settings cannot reuse finished trials (they would be reported under settings they never ran with)
    with pytest.raises(ConfigError, match=r"toy-bayes-s0 was run with the settings .* --resume now asks for"):
        run_benchmark(BenchmarkConfig(tasks=["toy"], preset="smoke", methods=["bayes"], trials=3, out=str(tmp_path),
                                      verbose=0, resume=True, overrides={"inner_y": 7}))
    # another budget: the search runs afresh beside the finished one (a search of 4 is not that of 3 plus one point),
    # what does not depend on the budget (default) is reused, and asking for 3 again reads the old search back
    bigger = {r.row["method"]: r.row for r in run_benchmark(BenchmarkConfig(
        tasks=["toy"], preset="smoke", methods=["default", "bayes"], trials=4, out=str(tmp_path), verbose=0,
        resume=True))}
    assert bigger["bayes"]["trials"] == 4 and bigger["default"]["metric_value"] == by["default"]["metric_value"]
    assert bigger["default"]["session_cpu_s"] == 0.0 and bigger["bayes"]["session_cpu_s"] > 0
    assert len([p for p in (tmp_path / "ray_results" / "toy-bayes-s0-t4").iterdir() if p.is_dir()]) == 4
    assert sorted(p.name for p in (tmp_path / "ray_results" / "toy-bayes-s0").iterdir() if p.is_dir()) == trial_dirs
    back = run_benchmark(BenchmarkConfig(tasks=["toy"], preset="smoke", methods=["bayes"], trials=3, out=str(tmp_path),
                                         verbose=0, resume=True))
    assert back[0].row["trials"] == 3 and back[0].row["metric_value"] == by["bayes"]["metric_value"]
    assert back[0].row["session_cpu_s"] == 0.0


def test_a_search_of_another_budget_gets_its_own_folder_only_when_resuming_beside_a_finished_one(tmp_path):
    from ray_bilevel.benchmark.resume import method_name, write_state

    storage = str(tmp_path)
    assert method_name(storage, "t-random-s0", 15, resume=True) == "t-random-s0"  # nothing there yet
    write_state(str(tmp_path / "t-random-s0"), {"trials": 2})
    assert method_name(storage, "t-random-s0", 2, resume=True) == "t-random-s0"  # the same budget: resumed
    assert method_name(storage, "t-random-s0", 15, resume=True) == "t-random-s0-t15"  # another: beside it
    assert method_name(storage, "t-random-s0", 15, resume=False) == "t-random-s0"  # a fresh run replaces the folder
    assert method_name("s3://bucket/x", "t-random-s0", 15, resume=True) == "t-random-s0"  # no state read from URIs
    write_state(str(tmp_path / "t-dense-s0"), {"wall_time_s": 1.0})  # an older version's folder: no budget recorded
    assert method_name(storage, "t-dense-s0", 15, resume=True) == "t-dense-s0"


def test_evaluation_key_changes_with_the_checkpoint_bytes_the_config_and_the_kind(tmp_path):
    class Checkpoint:  # what evaluation_key reads of a tune.Checkpoint: its local folder
        def __init__(self, path):
            self.path = str(path)

    ckpt = tmp_path / "checkpoint_000001"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "state.pt").write_bytes(b"weights")
    (ckpt / "sub" / "q.json").write_text("{}")
    key = evaluation_key(False, {"tau": 1.0}, Checkpoint(ckpt), full=True)
    assert key == evaluation_key(False, {"tau": 1.0}, Checkpoint(ckpt), full=True)
    assert key != evaluation_key(False, {"tau": 1.0}, Checkpoint(ckpt), full=False)  # curve point: other metrics
    assert key != evaluation_key(True, {"tau": 1.0}, Checkpoint(ckpt), full=True)
    assert key != evaluation_key(False, {"tau": 1.1}, Checkpoint(ckpt), full=True)
    (ckpt / "state.pt").write_bytes(b"weightz")  # another training with the same config: not the same evaluation
    assert key != evaluation_key(False, {"tau": 1.0}, Checkpoint(ckpt), full=True)
    assert evaluation_key(False, {}, Checkpoint(tmp_path / "missing"), full=True) is None  # not local: not cached


def test_concurrent_methods_overlap_and_give_the_same_answers(ray_local, tmp_path, monkeypatch, capsys):
    """``--concurrent-methods auto`` (compare.py's default: one method per trial slot, 2 on this 2-CPU instance):
    two methods' Tuners run at once, each in a Ray task,
    with the same per-method results as one at a time (toy: deterministic trials, a fixed grid). run_info.json names
    the commit read when the run started, not when it ended."""
    from ray_bilevel.benchmark import outputs

    calls = []
    monkeypatch.setattr(
        outputs,
        "git_commit",
        lambda **kw: calls.append(1) or {"sha": f"read{len(calls)}", "dirty": False, "dirty_files": []},
    )
    methods = ["default", "bilevel", "grid"]
    kw = dict(tasks=["toy"], preset="smoke", methods=methods, trials=2, verbose=0, plots=False)
    one = run_benchmark(BenchmarkConfig(**kw, out=str(tmp_path / "one")))
    assert json.loads((tmp_path / "one" / "run_info.json").read_text())["commit"] == "read1" and len(calls) == 1
    capsys.readouterr()
    two = run_benchmark(BenchmarkConfig(**kw, out=str(tmp_path / "two"), concurrent_methods=None))
    assert [r.row["method"] for r in two] == methods
    assert json.loads((tmp_path / "two" / "run_info.json").read_text())["config"]["concurrent_methods"] == 2
    out = capsys.readouterr().out
    assert "2 method(s) at a time" in out
    log = [line for line in out.splitlines() if line.startswith("[compare] started") or
           line.startswith("[compare] finished")]
    # both slots filled before the first method is collected: the second Tuner is running (or starting) while the
    # first runs; whether their windows overlap in time depends on how fast Ray starts a worker on a loaded machine
    assert log[0].startswith("[compare] started toy / default / seed 0 (1 of 2")
    assert log[1].startswith("[compare] started toy / bilevel / seed 0 (2 of 2"), log
    for a, b in zip(one, two):
        assert b.row["metric_value"] == pytest.approx(a.row["metric_value"], rel=1e-9)
        assert b.row["best_config"] == a.row["best_config"] and b.checkpoint is not None and b.row["cpu_s"] > 0
    with pytest.raises(ConfigError, match="concurrent-methods"):
        run_benchmark(BenchmarkConfig(**kw, out=str(tmp_path / "bad"), concurrent_methods=0))


@pytest.mark.slow
def test_compare_smoke_on_the_paper_tasks(tmp_path):
    """``python benchmarks/compare.py --preset smoke --seeds 0,1 --out DIR``: every method of both tasks (the dense
    oracle included) per seed; the evidence protocol's fields in results.json and summary.json."""
    from ray_bilevel.tasks import get_task

    for name in ("noise_schedule", "reward_lambda", "weighted_sum"):
        get_task(name)  # a broken import fails here, with its cause
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "compare.py"),
            "--preset",
            "smoke",
            "--seeds",
            "0,1",
            "--out",
            str(tmp_path),
            "--num-cpus",
            "2",
            "--verbose",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())
    for task in ("noise_schedule", "reward_lambda"):
        methods = list(methods_for(task))
        assert "dense" in methods
        for seed in (0, 1):
            assert [r["method"] for r in rows if r["task"] == task and r["seed"] == seed] == methods
    for r in rows:
        for key in ("task", "method", "seed", "metric", "mode", "metric_value", "metric_value_val", "wall_time_s",
                    "cpu_s", "final_eval_s", "regret", "best_config"):
            assert key in r, key
        assert r["metric_value"] is not None and math.isfinite(r["metric_value"]), r
        assert r["metric_value_val"] is not None and r["cpu_s"] > 0 and r["regret"] is not None
        assert r["cost_flops"] > 0 and r["cost_flops"] == pytest.approx(sum(r["cost_flops_by_network"].values()))
        assert r["curve"][-1]["cost_flops"] == pytest.approx(r["cost_flops"])
        assert r[f"{r['metric']}_val"] == r["metric_value_val"]
        assert r["curve"] and r["curve"][-1]["metric_value"] == r["metric_value"]
    dense = [r for r in rows if r["method"] == "dense"]
    assert all(len(r["sweep"]) >= 13 and {"config", "metric_value", "metric_value_val"} <= set(r["sweep"][0])
               for r in dense)
    assert all(r["regret"] == 0 for r in dense)  # the reference is the oracle's own validation-chosen answer
    for r in rows:  # every regret against the test value of that answer, same task and seed
        ref = next(d["metric_value"] for d in dense if (d["task"], d["seed"]) == (r["task"], r["seed"]))
        assert r["regret"] == pytest.approx((r["metric_value"] - ref) * (1 if r["mode"] == "min" else -1))
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]
    entry = next(e for e in summary if e["method"] == "bilevel" and e["metric"] == "metric_value")
    assert {"mean", "ci95_low", "ci95_high", "n"} <= set(entry) and entry["n"] == 2
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["commit"] and 0 < info["utilisation"] <= 1 and info["trial_cpu_s"] > 0
    assert info["trial_cpu_s"] + info["reporting_cpu_s"] <= (info["wall_s"] + info["startup_s"]) * info["cores"]
    assert info["trial_cpu_s"] == pytest.approx(sum(r["cpu_s"] for r in rows), abs=0.1 * len(rows))
    assert all(r["utilisation"] == info["utilisation"] and r["startup_s"] == info["startup_s"] for r in rows)
    assert (tmp_path / "plots" / "noise_schedule_anytime.png").exists()
    assert (tmp_path / "plots" / "reward_lambda_oracle.png").exists()


def test_pbt_explore_stays_in_the_box_and_remote_options_match_trial_resources():
    from ray_bilevel.benchmark.methods import _clip_explore
    from ray_bilevel.benchmark.runner import _remote_options

    explore = _clip_explore(get_task("noise_schedule").search_space())
    assert explore({"end": 1.2, "tau": 0.8, "start": 0.1, "eps": 0.05, "seed": 3}) == {
        "end": 1.0, "tau": 1.0, "start": 0.1, "eps": 0.04, "seed": 3}
    assert _remote_options({"cpu": 2.0, "gpu": 0.5, "rb_worker": 1.0}) == {
        "num_cpus": 2.0, "num_gpus": 0.5, "resources": {"rb_worker": 1.0}}


def test_run_ordered_keeps_order_and_checks_width():
    from ray_bilevel.benchmark.pool import run_ordered

    seen: list[str] = []
    assert run_ordered(lambda j: j * 2, [3, 1, 2], 1, log=seen.append) == [6, 2, 4] and seen == []
    with pytest.raises(ValueError, match="width must be >= 1, got 0"):
        run_ordered(lambda j: j, [1, 2], 0)


def test_run_ordered_runs_width_jobs_at_once(ray_local, tmp_path):
    """Two jobs at width 2 are alive at the same time: each waits until the other has started (a barrier that a
    one-at-a-time pool could only pass by timing out), whatever the machine's load."""
    from ray_bilevel.benchmark.pool import run_ordered

    folder = str(tmp_path)

    def job(name: str) -> bool:
        import os
        import time

        open(os.path.join(folder, name), "w").close()
        other = os.path.join(folder, "b" if name == "a" else "a")
        deadline = time.time() + 120
        while time.time() < deadline:
            if os.path.exists(other):
                return True
            time.sleep(0.05)
        return False

    assert run_ordered(job, ["a", "b"], 2, log=lambda msg: None) == [True, True]


def test_the_cli_is_one_command_under_three_names(capsys):
    """``ray-bilevel compare``, ``python -m ray_bilevel.benchmark`` and ``benchmarks/compare.py`` are the same
    command."""
    import subprocess
    import sys

    from ray_bilevel.benchmark.cli import entry, parse_args

    with pytest.raises(SystemExit) as done:
        entry(["compare", "--help"])
    assert done.value.code == 0 and "usage: ray-bilevel compare" in capsys.readouterr().out
    assert entry([]) == 2 and "ray-bilevel compare" in capsys.readouterr().out
    assert entry(["fit"]) == 2 and "unknown command 'fit'" in capsys.readouterr().err
    assert entry(["compare", "--task", "nope", "--out", "/nonexistent/x"]) == 2
    assert "ray-bilevel compare: error: unknown task 'nope'" in capsys.readouterr().err
    assert compare.parse_args is parse_args  # the script is the thin shell over the package's CLI
    out = subprocess.run([sys.executable, "-m", "ray_bilevel.benchmark", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: python -m ray_bilevel.benchmark" in out.stdout


def test_the_first_look_runs_each_tasks_supported_bilevel_variant():
    """The README's main job runs, as its bilevel method, the variant each task's evidence supports
    (``BenchmarkSpec.bilevel_method``: bilevel_fork on the noise schedule, chosen on development seeds); naming
    ``--methods bilevel`` runs the paper's algorithm, whatever the task."""
    from ray_bilevel.benchmark.runner import _task_plan

    first = compare.parse_args([])
    assert _task_plan("noise_schedule", first).methods == ["default", "bilevel_fork", "random"]
    assert _task_plan("reward_lambda", first).methods == ["default", "bilevel", "random"]
    named = compare.parse_args(["--methods", "default,bilevel,random", "--trials", "2"])
    assert not named.first_look and _task_plan("noise_schedule", named).methods == ["default", "bilevel", "random"]
    full = compare.parse_args(["--full"])  # the paper's bilevel and the supported variant side by side
    assert {"bilevel", "bilevel_fork"} <= set(_task_plan("noise_schedule", full).methods)
