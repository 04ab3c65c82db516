"""A chaos run (issue 25): a smoke comparison of both tasks during which trial actors and the driver are SIGKILLed
at seeded random moments, the driver resumed (``--resume``) after each of its deaths; then the same comparison
without faults, and the two compared method by method.

It reports the kills made, the trial attempts that failed and were retried, the trials lost (budget − trials in
the results; must be 0) and, per method, whether its answer (the validation-chosen configuration, its validation
and test values) and its counted compute equal the fault-free run's.

    python studies/chaos.py                    # 5 driver kills, 10 actor kills; writes docs/studies/chaos.json
    python studies/chaos.py --driver-kills 1 --actor-kills 2 --tasks toy --out /tmp/chaos   # a quick look

How the moments are drawn: a kill is due every ``U(gap/2, 3·gap/2)`` seconds (``--gap``, seeded by ``--seed``); each
due kill is an actor kill or a driver kill in a seeded random order of ``--actor-kills`` + ``--driver-kills``. An
actor kill waits for a trial actor (a Ray worker running a ``…Trainable``) and kills one; a driver kill kills the
driver and the Ray it started, then starts ``compare.py --resume``. The run goes on without faults once every kill
is made. Actors are retried from their last checkpoint by Tune (``FailureConfig(max_failures)`` in the harness);
the driver's restore reads the last whole snapshot (``ray_bilevel/benchmark/snapshot.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import _ray_procs  # noqa: E402 - finds and kills only the Ray processes a driver started (tests/_ray_procs.py)

ANSWER_KEYS = ("trials", "best_config", "metric_value_val", "metric_value", "cost_flops")


def _compare_cmd(args: argparse.Namespace, out: Path) -> list[str]:
    return [sys.executable, str(REPO / "benchmarks" / "compare.py"), "--task", args.tasks, "--preset", args.preset,
            "--methods", args.methods, "--seeds", args.seeds, "--num-cpus", str(args.num_cpus), "--out", str(out),
            "--no-plots", "--verbose", "0"]


def _env() -> dict[str, str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def _actors(tree: dict[int, int]) -> list[int]:
    """Trial actors among the driver's processes (Ray renames a worker after the actor class it hosts)."""
    out = []
    for pid in tree:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::") and "Trainable" in cmd:
            out.append(pid)
    return sorted(out)


def chaos_run(args: argparse.Namespace, out: Path, log: list[dict]) -> float:
    """The comparison under faults; returns its wall time."""
    rng = random.Random(args.seed)
    plan = ["actor"] * args.actor_kills + ["driver"] * args.driver_kills
    rng.shuffle(plan)
    cmd, t0 = _compare_cmd(args, out), time.time()
    resume: list[str] = []
    while True:
        proc = subprocess.Popen(cmd + resume, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tree: dict[int, int] = {}
        due = time.time() + rng.uniform(args.gap / 2, 3 * args.gap / 2)
        driver_killed = False
        while proc.poll() is None:
            tree.update(_ray_procs.snapshot(None, roots=[proc.pid]))
            if plan and time.time() >= due:
                if plan[0] == "driver":
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    _ray_procs.kill(tree)
                    log.append({"t": round(time.time() - t0, 1), "kill": "driver", "pid": proc.pid})
                    plan.pop(0)
                    driver_killed = True
                    break
                actors = _actors(tree)
                if actors:
                    victim = rng.choice(actors)
                    os.kill(victim, signal.SIGKILL)
                    log.append({"t": round(time.time() - t0, 1), "kill": "actor", "pid": victim})
                    plan.pop(0)
                    due = time.time() + rng.uniform(args.gap / 2, 3 * args.gap / 2)
            time.sleep(0.2)
        text = proc.communicate()[0] if not driver_killed else ""
        _ray_procs.kill(tree)
        if driver_killed:
            resume = ["--resume"]
            continue
        if proc.returncode != 0:
            raise SystemExit(f"chaos.py: compare.py failed (rc {proc.returncode}) after {len(log)} kill(s):\n"
                             f"{text[-3000:]}")
        if plan:  # it finished before every kill was made: the figures say so
            log.append({"t": round(time.time() - t0, 1), "kill": "none", "unmade": list(plan)})
        return time.time() - t0


def _rows(out: Path) -> dict[str, dict]:
    rows = json.loads((out / "results.json").read_text())
    return {f"{r['task']}/{r['method']}/s{r['seed']}": {k: r.get(k) for k in ANSWER_KEYS} for r in rows}


def _failures(out: Path) -> int:
    """Trial attempts that failed (Tune writes a ``Failure # k`` entry per failed attempt into the trial's
    ``error.txt``, retried or not)."""
    return sum(p.read_text(errors="replace").count("Failure #") for p in (out / "ray_results").glob("*/*/error.txt"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="noise_schedule,reward_lambda")
    p.add_argument("--methods", default="default,bilevel,random,bayes")
    p.add_argument("--preset", default="smoke")
    p.add_argument("--seeds", default="0")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--driver-kills", type=int, default=5)
    p.add_argument("--actor-kills", type=int, default=10)
    p.add_argument("--gap", type=float, default=25.0, help="mean seconds between kills (default 25)")
    p.add_argument("--seed", type=int, default=0, help="seeds the kill moments and victims")
    p.add_argument("--out", default="results/chaos")
    p.add_argument("--json", default=str(REPO / "docs" / "studies" / "chaos.json"))
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    if out.exists():
        raise SystemExit(f"chaos.py: {out} exists; give another --out (the run must start from nothing).")
    log: list[dict] = []
    wall_chaos = chaos_run(args, out / "chaos", log)
    t0 = time.time()
    ref = subprocess.run(_compare_cmd(args, out / "reference"), env=_env(), capture_output=True, text=True)
    if ref.returncode != 0:
        raise SystemExit(f"chaos.py: the fault-free run failed:\n{ref.stdout[-3000:]}{ref.stderr[-3000:]}")
    wall_ref = time.time() - t0
    got, want = _rows(out / "chaos"), _rows(out / "reference")
    methods = {key: {"identical": got.get(key) == row, "chaos": got.get(key), "reference": row}
               for key, row in want.items()}
    budget = sum(int(r["trials"] or 0) for r in want.values())
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True).stdout.strip(),
        "settings": {k: getattr(args, k) for k in ("tasks", "methods", "preset", "seeds", "num_cpus", "driver_kills",
                                                   "actor_kills", "gap", "seed")},
        "driver_kills": sum(1 for e in log if e["kill"] == "driver"),
        "actor_kills": sum(1 for e in log if e["kill"] == "actor"),
        "unmade_kills": sum(len(e.get("unmade", [])) for e in log),
        "failed_attempts_retried": _failures(out / "chaos"),
        "trials_budget": budget,
        "trials_lost": budget - sum(int(r["trials"] or 0) for r in got.values()),
        "answers_identical": all(m["identical"] for m in methods.values()) and set(got) == set(want),
        "wall_s": {"chaos": round(wall_chaos, 1), "reference": round(wall_ref, 1)},
        "kills": log,
        "methods": methods,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("kills", "methods")}, indent=1))
    print(f"wrote {args.json}")
    return 0 if summary["trials_lost"] == 0 and summary["answers_identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
