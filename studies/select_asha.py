"""Choose the ``asha`` method's grace period and reduction factor on development seeds and validation only (#21).

compare.py's ``asha`` is random search (Optuna's seeded RandomSampler) under Tune's ``AsyncHyperBandScheduler``
within the same counted compute as every searcher (``BudgetLimiter``); its two settings are the grace period (Tune
iterations before a trial can be stopped) and the reduction factor η (1/η of the trials at a rung go on). This study
runs the harness's own ``asha`` method, as a user would (``compare.py --methods asha --budget-set asha_grace=G
--budget-set asha_eta=E --validation-only``), for each candidate (G, E) on development seeds (default 100-104;
seeds < 100 are refused) at the task's quick budget, and never reads the test split (``--validation-only``).

Rule (fixed before the run): the candidate with the best mean validation value of its chosen answer (the selection
metric of the task: ``alignment_val`` for λ, higher is better; ``fid_domain_val`` for the noise schedule, lower is
better) wins; the paired difference of each candidate to the first one (today's setting) is reported with its 95 %
Student-t interval, as in BENCHMARKS.md. The candidates' counted compute is reported beside it: every candidate
runs within the same budget of full trainings, so a candidate wins by what it does with that compute.

    OMP_NUM_THREADS=1 python studies/select_asha.py --task reward_lambda --out docs/studies/select_asha_lambda.json
    python studies/select_asha.py --render-only --out docs/studies/select_asha_lambda.json

Each candidate's harness output is kept in ``--work`` (default ``results/select_asha/<task>``); a candidate whose
results already cover every seed is read back, not run again, so a stopped study resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: (grace, η) candidates: with the quick presets' 3 Tune iterations per trial, grace 1 or 2 and η 2 or 3 are the
#: schedules that can stop a trial at all; (1, 2) is today's setting (ray_bilevel.space.Budget).
DEFAULT_CANDIDATES = "1:2,1:3,2:2,2:3"


def parse_candidates(text: str) -> list[tuple[int, float]]:
    """``"1:2,2:3"`` -> ``[(1, 2.0), (2, 3.0)]`` (grace period in Tune iterations, reduction factor)."""
    out = []
    for item in text.split(","):
        grace, sep, eta = item.strip().partition(":")
        if not sep or not grace.isdigit() or int(grace) < 1 or float(eta) <= 1:
            raise SystemExit(f"--candidates takes GRACE:ETA pairs with GRACE >= 1 and ETA > 1, got {item!r}.")
        out.append((int(grace), float(eta)))
    return out


def _label(grace: int, eta: float) -> str:
    return f"grace {grace}, η {eta:g}"


def run_candidate(task: str, preset: str, seeds: list[int], grace: int, eta: float, work: Path) -> list[dict[str, Any]]:
    """The harness's ``asha`` rows of one candidate, one per seed (run unless ``work`` already holds them)."""
    out = work / f"g{grace}_e{eta:g}"
    rows = _rows(out)
    if sorted(r["seed"] for r in rows) != sorted(seeds):
        cmd = [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--task", task, "--preset", preset,
               "--methods", "asha", "--seeds", ",".join(map(str, seeds)), "--budget-set", f"asha_grace={grace}",
               "--budget-set", f"asha_eta={eta:g}", "--validation-only", "--no-plots", "--concurrent-methods", "1",
               "--verbose", "0", "--out", str(out)]
        print("[select_asha] " + " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        rows = _rows(out)
    return [{"seed": r["seed"], "value_val": r["metric_value_val"], "cost_flops": r["cost_flops"],
             "trials": r["trials"], "lower_steps": r["lower_steps"], "best_config": r["best_config"]}
            for r in sorted(rows, key=lambda r: r["seed"])]


def _rows(out: Path) -> list[dict[str, Any]]:
    path = out / "results.json"
    if not path.is_file():
        return []
    return [r for r in json.loads(path.read_text()) if r["method"] == "asha"]


def study(args: argparse.Namespace) -> dict[str, Any]:
    """Every candidate on every seed; the summary and the winner by the rule."""
    from ray_bilevel.benchmark.outputs import git_commit
    from ray_bilevel.config import ConfigError
    from ray_bilevel.protocol import check_development
    from ray_bilevel.tasks import get_task

    try:
        check_development(args.seeds, "val", "select_asha")
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    cls = get_task(args.task)
    info = git_commit(str(ROOT))
    t0, candidates = time.time(), []
    for grace, eta in parse_candidates(args.candidates):
        rows = run_candidate(args.task, args.preset, args.seeds, grace, eta, Path(args.work))
        candidates.append({"grace": grace, "eta": eta, "seeds": rows})
    return {"task": args.task, "preset": args.preset, "seeds": args.seeds, "metric": cls.tuning_metric(),
            "mode": cls.mode, "candidates": candidates, "commit": info["sha"], "worktree_dirty": info["dirty"],
            "command": "python studies/select_asha.py " + " ".join(sys.argv[1:]), "wall_s": round(time.time() - t0)}


def render(data: dict[str, Any]) -> str:
    """A markdown table: each candidate's mean validation value, its paired difference to the first candidate, its
    compute and trials, and the winner by the rule."""
    from ray_bilevel.benchmark.stats import mean_ci

    sign = 1.0 if data["mode"] == "max" else -1.0
    ref = {r["seed"]: r["value_val"] for r in data["candidates"][0]["seeds"]}

    def fmt(values: list[float]) -> str:
        mean, low, high, _ = mean_ci(values)
        return f"{mean:.3g}" if high is None else f"{mean:.3g} ± {high - mean:.2g}"

    dirty = " (dirty tree)" if data["worktree_dirty"] else ""
    first = _label(data["candidates"][0]["grace"], data["candidates"][0]["eta"])
    lines = [f"`{data['command']}` at `{(data['commit'] or '?')[:7]}`{dirty}"
             f": task {data['task']}, preset {data['preset']}, development seeds "
             f"{', '.join(map(str, data['seeds']))}, selection metric `{data['metric']}` ({data['mode']}), "
             "validation only; " f"{data['wall_s'] / 60:.0f} min wall.", "",
             f"| candidate | {data['metric']} (mean ± 95 % t) | − {first}, paired "
             "| GFLOP | trials started | lower steps |", "|---|---|---|---|---|---|"]
    best, best_mean = None, None
    for cand in data["candidates"]:
        vals = [r["value_val"] for r in cand["seeds"]]
        diffs = [r["value_val"] - ref[r["seed"]] for r in cand["seeds"] if r["seed"] in ref]
        mean, low, high, _ = mean_ci(diffs)
        if cand is data["candidates"][0]:
            paired = "—"
        elif high is None:
            paired = f"{mean:+.3g}"
        else:
            verdict = "tie" if low <= 0 <= high else ("better" if sign * mean > 0 else "worse")
            paired = f"{mean:+.3g} [{low:.3g}, {high:.3g}] {verdict}"
        gflop = fmt([r["cost_flops"] / 1e9 for r in cand["seeds"]])
        lines.append(f"| {_label(cand['grace'], cand['eta'])} | {fmt(vals)} | {paired} | "
                     f"{gflop} | {fmt([r['trials'] for r in cand['seeds']])} | "
                     f"{fmt([r['lower_steps'] for r in cand['seeds']])} |")
        m = sum(vals) / len(vals)
        if best_mean is None or sign * m > sign * best_mean:
            best, best_mean = cand, m
    assert best is not None
    lines += ["", f"By the rule (best mean on validation): **{_label(best['grace'], best['eta'])}**."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--task", default="reward_lambda", help="a registered task (reward_lambda, noise_schedule, toy)")
    p.add_argument("--preset", default="quick")
    p.add_argument("--seeds", default="100,101,102,103,104", help="development seeds (>= 100)")
    p.add_argument("--candidates", default=DEFAULT_CANDIDATES, help="GRACE:ETA pairs, today's first")
    p.add_argument("--work", default=None, help="harness outputs per candidate (default results/select_asha/TASK)")
    p.add_argument("--out", type=Path, default=Path("docs/studies/select_asha_lambda.json"))
    p.add_argument("--render-only", action="store_true", help="print the table of --out and exit")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.work = args.work or str(ROOT / "results" / "select_asha" / args.task)
    if not args.render_only:
        data = study(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=1))
    print(render(json.loads(args.out.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
