"""The harness's per-method progress line: trials done of the budget, compute done and left, an ETA."""
from __future__ import annotations

import time
from types import SimpleNamespace

from ray_bilevel.benchmark.progress import MethodProgress, format_eta


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _trial(i: int) -> SimpleNamespace:
    return SimpleNamespace(trial_id=f"t{i}")


def test_the_line_counts_trials_and_extrapolates_compute_to_an_eta():
    lines: list[str] = []
    clock = Clock()
    p = MethodProgress("toy / random / seed 0", trials=4, every_s=60.0, printer=lines.append, clock=clock)
    clock.now = 10.0
    p.on_trial_result(0, [], _trial(0), {"work_fraction": 0.5, "cost_flops": 1e9})
    assert lines == []  # not yet every_s since the last line
    clock.now = 20.0
    p.on_trial_result(0, [], _trial(0), {"work_fraction": 1.0, "cost_flops": 2e9})
    p.on_trial_complete(0, [], _trial(0))
    # one trial = 2 GFLOP, so the budget is ~8 GFLOP; 2 done in 20 s -> 6 left take 60 s
    assert lines == ["toy / random / seed 0: 1 of 4 trial(s) done, 2.0 of ~8.0 GFLOP, ETA 1 min 00 s"]
    clock.now = 90.0
    p.on_trial_result(0, [], _trial(1), {"work_fraction": 0.5, "cost_flops": 1e9})  # 70 s since the last: a line
    assert lines[-1].startswith("toy / random / seed 0: 1 of 4 trial(s) done, 3.0 of ~8.0 GFLOP, ETA")


def test_a_task_that_books_no_compute_is_measured_in_trials_and_setup_restarts_the_clock():
    lines: list[str] = []
    clock = Clock()
    p = MethodProgress("line / bayes / seed 1", trials=2, every_s=1e9, printer=lines.append, clock=clock)
    clock.now = 5.0
    p.on_trial_result(0, [], _trial(0), {"work_fraction": 1.0, "cost_flops": 0.0})
    p.on_trial_complete(0, [], _trial(0))
    assert lines == ["line / bayes / seed 1: 1 of 2 trial(s) done, ETA 5 s"]
    clock.now = 100.0
    p.setup()  # a restored experiment: nothing seen, elapsed from now
    assert p.seen == {} and p.done == set() and p.start == 100.0
    assert p.line() == "line / bayes / seed 1: 0 of 2 trial(s) done"


def test_format_eta():
    assert [format_eta(s) for s in (0.4, 59, 61, 3599, 3720)] == ["0 s", "59 s", "1 min 01 s", "59 min 59 s",
                                                                  "1 h 02 min"]


def test_lines_go_to_the_progress_file_and_the_tail_echoes_each_new_whole_line_once(tmp_path):
    from ray_bilevel.benchmark.progress import ProgressTail

    path = tmp_path / "progress.log"
    path.write_text("an earlier run's line\n")
    echoed: list[str] = []
    tail = ProgressTail(str(path), echoed.append)  # starts at the end: an earlier run is not news
    p = MethodProgress("toy / bayes / seed 0", trials=1, printer=lambda line: None, clock=Clock(), file=str(path))
    p.on_trial_result(0, [], _trial(0), {"work_fraction": 1.0, "cost_flops": 0.0})
    p.on_trial_complete(0, [], _trial(0))
    with open(path, "a") as fh:
        fh.write("half a li")  # being written: waits for its newline
    tail()
    tail()
    assert echoed == ["toy / bayes / seed 0: 1 of 1 trial(s) done"]
    with open(path, "a") as fh:
        fh.write("ne\n")
    tail()
    assert echoed[-1] == "half a line"


def test_a_resumed_experiment_counts_the_trials_finished_before_and_times_only_this_run():
    lines: list[str] = []
    clock = Clock()
    p = MethodProgress("ns / dense / seed 0", trials=4, every_s=1e9, printer=lines.append, clock=clock)
    p.setup()  # restored: trials t0, t1 finished in the earlier invocation, t2 runs now
    before = [SimpleNamespace(trial_id=f"t{i}", status="TERMINATED", last_result={"cost_flops": 2e9}) for i in (0, 1)]
    running = SimpleNamespace(trial_id="t2", status="RUNNING", last_result={})
    clock.now = 30.0
    p.on_trial_result(0, [*before, running], running, {"work_fraction": 1.0, "cost_flops": 2e9})
    running.status = "TERMINATED"
    p.on_trial_complete(0, [*before, running], running)
    # 3 of 4 done (6 of ~8 GFLOP); this run did 2 GFLOP in 30 s, so the last 2 take 30 s (not 10 s)
    assert lines == ["ns / dense / seed 0: 3 of 4 trial(s) done (2 before --resume), 6.0 of ~8.0 GFLOP, ETA 30 s"]


def test_setup_accepts_a_callback_pickled_by_an_older_version():
    import pickle

    p = MethodProgress("ns / dense / seed 0", trials=2, printer=print, clock=time.monotonic)  # picklable
    del p.restored  # what Tune's restore hands back from a tuner.pkl written before the attribute existed
    old = pickle.loads(pickle.dumps(p))
    old.setup()
    assert old.restored == set() and old.seen == {} and old.done == set()
