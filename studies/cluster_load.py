"""The cluster path under load (issue 25): the two-node ``ray job submit`` test, several times in a row, beside a
CPU-bound load on every core; records each run's outcome and wall time.

    python studies/cluster_load.py     # 5 runs beside 2 busy processes; writes docs/studies/cluster_load.json

The test is ``tests/test_cluster_jobs.py::test_two_node_cluster_job_submit_with_token_auth``: a head and a worker
node with token auth, ``examples/cluster/submit.sh`` submitting ``compare.py --preset smoke --task toy`` with
``--concurrent-methods auto``. The load is ``--load`` processes spinning in pure Python at normal priority, started
before the first run and stopped after the last. A run that exceeds ``--timeout`` seconds is a hang: its pytest
output is kept in the JSON.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST = "tests/test_cluster_jobs.py::test_two_node_cluster_job_submit_with_token_auth"


def _spin() -> None:  # pragma: no cover - runs in a child
    x = 0
    while True:
        x = (x * 1103515245 + 12345) % 2147483648


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy processes (default: one per core)")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--json", default=str(REPO / "docs" / "studies" / "cluster_load.json"))
    args = p.parse_args(argv)
    load = [mp.Process(target=_spin, daemon=True) for _ in range(args.load)]
    for proc in load:
        proc.start()
    runs = []
    try:
        for i in range(args.runs):
            t0 = time.time()
            try:
                out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST], cwd=REPO,
                                     capture_output=True, text=True, timeout=args.timeout)
                outcome = "passed" if out.returncode == 0 else f"failed (rc {out.returncode})"
                tail = "" if out.returncode == 0 else (out.stdout + out.stderr)[-4000:]
            except subprocess.TimeoutExpired as exc:
                outcome, tail = "hung", str(exc.stdout or "")[-4000:]
            runs.append({"run": i + 1, "outcome": outcome, "wall_s": round(time.time() - t0, 1), "output": tail})
            print(f"run {i + 1}: {outcome} in {runs[-1]['wall_s']} s", flush=True)
    finally:
        for proc in load:
            proc.terminate()
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True).stdout.strip(),
        "test": TEST, "load_processes": args.load, "cores": os.cpu_count(),
        "passed": sum(r["outcome"] == "passed" for r in runs), "runs": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{summary['passed']} of {len(runs)} passed; wrote {args.json}")
    return 0 if summary["passed"] == len(runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
