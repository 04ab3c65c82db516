"""Does the sampling schedule's gradient predict the retrained network's? Train/sample mismatch (issue #24).

The zeroth-order probe of eq. (14) perturbs the *sampling* schedule of a network trained on the current one, so it
measures how a network trained for q0 samples under q0 ± h as much as how good q0 ± h is to train with. This study
measures, per schedule coordinate, the finite difference of the selection metric (validation domain FID of the EMA
network, the task's fixed validation noise: every evaluation shares x_T) under three ways of moving the schedule:

* ``retrain`` (branch 0): a fresh training at q0 ± h for the whole lower-level budget (the same data order, timesteps
  and noise draws: the task's seeded streams), evaluated under its own schedule: the quantity a searcher optimises;
* ``switch f`` (branch f, e.g. 0.75): train at q0 to f of the budget, then at q0 ± h for the rest: the last
  (1 − f) of training sees the perturbed schedule;
* ``sample only`` (branch 1): the network trained at q0, sampled under q0 ± h: what the ZO probe measures.

Differences are central where q0 ± h lie in the bounds and one-sided into the interior at a bound (the default
schedule sits at the bounds of start, end and tau). If ``sample only`` agrees in sign with ``retrain``, a sampling
schedule tuned on one trained network predicts the schedule to train with; if not, train/sample mismatch dominates
the probe. Development seeds (≥ 100) and the validation split only (docs/algorithms.md §4)::

    OMP_NUM_THREADS=1 python studies/train_vs_sample.py --seeds 100 101 --jobs 2 --out docs/studies/train_vs_sample.json
    python studies/train_vs_sample.py --preset smoke --seeds 100 --names end --out /tmp/tvs.json

``--reuse FILE`` takes the rows an earlier run of the same preset, base and settings computed (e.g. to add branches).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dev import map_seeds, parser, run_or_render, schedule_args, schedule_maker, schedule_options  # noqa: E402


def _probes(q0: dict[str, float], bounds: dict[str, tuple[float, float]], name: str,
            h: float) -> tuple[dict[str, float], dict[str, float]]:
    """(low, high) schedules for a difference in ``name``: q0 ∓ h inside the bounds, one-sided at a bound."""
    lo, hi = bounds[name]
    minus, plus = max(lo, q0[name] - h), min(hi, q0[name] + h)
    if plus - minus <= 0:
        raise SystemExit(f"--h {h} moves {name} nowhere inside its bounds {bounds[name]}: pick a larger --h.")
    return {**q0, name: minus}, {**q0, name: plus}


def one_seed(seed: int, preset: str, base: dict[str, float], names: list[str], h: dict[str, float],
             branches: list[float], override: dict[str, Any],
             known: dict[tuple[str, float], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The differences of every (coordinate, branch) at one development seed; see the module docstring. ``known``:
    rows of an earlier run of the same seed and settings (``--reuse``), taken as they are when their probes match."""
    fresh = schedule_maker(preset, seed, override)

    t0 = time.process_time()
    root = fresh(base)
    q0, budget = root.hyperparameters(), root.lower_budget
    stops = sorted({round(f * budget) for f in branches if 0 < f < 1})
    states: dict[int, Any] = {}
    for _ in range(budget):
        root.lower_step()
        if root.lower_steps in stops:  # a snapshot: state_dict() holds the live tensors, which training moves on
            states[root.lower_steps] = copy.deepcopy(root.state_dict())
    base_value = root.evaluate()["fid_domain_val"]
    trained = copy.deepcopy(root.state_dict())
    print(f"seed {seed}: trained at {q0} for {budget} steps, val domain FID {base_value:.2f} "
          f"({time.process_time() - t0:.0f} CPU-s)", flush=True)

    def value(q: dict[str, float], branch: float) -> float:
        if branch >= 1:  # sample only: the network trained at q0, sampled under q
            task = fresh(q0)
            task.load_state_dict(trained)
        elif branch <= 0:  # retrain at q from scratch
            task = fresh(q)
        else:  # switch: q0 until the branch point, then q (a copy: branches must not share optimiser tensors)
            task = fresh(q0)
            task.load_state_dict(copy.deepcopy(states[round(branch * budget)]))
        task.set_hyperparameters(q)
        while task.lower_steps < budget:
            task.lower_step()
        return float(task.evaluate()["fid_domain_val"])

    rows = []
    for name in names:
        low, high = _probes(q0, root.schedule.bounds, name, h[name])
        for branch in branches:
            earlier = (known or {}).get((name, branch))
            if earlier is not None and (earlier["q_low"], earlier["q_high"]) == (low[name], high[name]):
                rows.append({**earlier, "reused": True})
                print(f"seed {seed} {name} branch {branch:g}: slope {earlier['slope']:.3g} (reused)", flush=True)
                continue
            c0 = time.process_time()
            ends = {}
            for q in (low, high):
                same = q[name] == q0[name]
                ends[q[name]] = base_value if same else value(q, branch)
            (x_lo, f_lo), (x_hi, f_hi) = sorted(ends.items())
            row = {"name": name, "branch": branch, "q_low": x_lo, "q_high": x_hi, "fid_low": f_lo, "fid_high": f_hi,
                   "slope": (f_hi - f_lo) / (x_hi - x_lo), "cpu_s": time.process_time() - c0}
            rows.append(row)
            print(f"seed {seed} {name} branch {branch:g}: FID {f_lo:.2f} at {x_lo:g}, {f_hi:.2f} at {x_hi:g}, "
                  f"slope {row['slope']:.3g} ({row['cpu_s']:.0f} CPU-s)", flush=True)
    return {"seed": seed, "q0": q0, "lower_budget": budget, "fid_q0": base_value, "rows": rows,
            "cpu_s": time.process_time() - t0}


def run(args: argparse.Namespace) -> dict[str, Any]:
    commit, h, base, override = schedule_args(args, "studies/train_vs_sample.py (it informs hand choices)")
    known = _reusable(args.reuse, args.preset, base, override) if args.reuse else {}
    jobs = [(s, args.preset, base, args.names, h, args.branches, override, known.get(s)) for s in args.seeds]
    seeds = map_seeds(one_seed, jobs, args.jobs)
    return {"command": "python studies/train_vs_sample.py " + " ".join(args.argv), "commit": commit,
            "preset": args.preset, "base": base, "override": override, "h": h, "branches": args.branches,
            "seeds": seeds, "reused_from": None if not args.reuse else {"file": str(args.reuse), "commit": known_commit(
                args.reuse)}}


def _reusable(path: Path, preset: str, base: dict[str, Any],
              override: dict[str, Any]) -> dict[int, dict[tuple[str, float], dict[str, Any]]]:
    """The rows of an earlier run (``--reuse``) by seed and (coordinate, branch); refused unless it ran the same
    preset, base schedule and settings (the training streams are seeded: its rows are what this run would compute)."""
    earlier = json.loads(Path(path).read_text())
    ran = (earlier.get("preset"), earlier.get("base", {}), earlier.get("override", {}))
    if ran != (preset, base, override):
        raise SystemExit(f"--reuse {path} ran preset/base/override {ran}, this run asks for "
                         f"{(preset, base, override)}: its rows are not this run's; drop --reuse.")
    return {s["seed"]: {(r["name"], float(r["branch"])): r for r in s["rows"]} for s in earlier["seeds"]}


def known_commit(path: Path) -> str | None:
    return json.loads(Path(path).read_text()).get("commit")


def _label(branch: float) -> str:
    return "retrain" if branch <= 0 else "sample only" if branch >= 1 else f"switch at {branch:g}"


def render(result: dict[str, Any]) -> str:
    """One row per (coordinate, seed): the slope of each branch and whether its sign matches ``retrain``'s."""
    branches = result["branches"]
    head = "| coordinate | seed | " + " | ".join(_label(b) for b in branches) + " |"
    lines = [head, "|" + "---|" * (2 + len(branches))]
    agree: dict[float, list[bool]] = {b: [] for b in branches}
    for s in result["seeds"]:
        by = {(r["name"], r["branch"]): r for r in s["rows"]}
        for name in dict.fromkeys(r["name"] for r in s["rows"]):
            ref = by.get((name, 0.0)) or by.get((name, 0))
            cells = []
            for b in branches:
                r = by[(name, b)]
                same = ref is not None and (r["slope"] > 0) == (ref["slope"] > 0)
                if ref is not None and b > 0:
                    agree[b].append(same)
                mark = "" if ref is None or b <= 0 else (" ✓" if same else " ✗")
                cells.append(f"{r['slope']:+.3g}{mark}")
            lo, hi = by[(name, branches[0])]["q_low"], by[(name, branches[0])]["q_high"]
            lines.append(f"| {name} ({lo:g} → {hi:g}) | {s['seed']} | " + " | ".join(cells) + " |")
    lines.append("")
    counts = ", ".join(f"{_label(b)} {sum(v)}/{len(v)}" for b, v in agree.items() if v)
    base = result["seeds"][0]
    raw = (result.get("override") or {}).get("ema_decay") == 0
    network = "the raw network: ema_decay = 0" if raw else "EMA network"
    lines.append(f"Cells: slope of validation domain FID ({network}, fixed validation noise) per unit of the "
                 f"coordinate between the two schedules named in the first column (lower is better: a negative "
                 f"slope says move up); ✓/✗: same sign as retraining. Sign agreement with retraining: {counts}. "
                 f"Base schedule {base['q0']}, {base['lower_budget']} lower steps, preset {result['preset']}, "
                 f"development seeds {[s['seed'] for s in result['seeds']]}, val FID at the base "
                 f"{[round(s['fid_q0'], 1) for s in result['seeds']]}; commit {result['commit']}.")
    if result.get("note"):
        lines.append(f"Note: {result['note']}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser(__doc__, "results/train_vs_sample.json")
    schedule_options(p, "step")
    p.add_argument("--branches", nargs="+", type=float, default=[0.0, 0.75, 1.0],
                   help="fractions of training at the base before the switch (0: retrain, 1: sample only)")
    p.add_argument("--reuse", type=Path, default=None,
                   help="an earlier JSON of the same preset, base and settings: its matching rows are not recomputed")
    args = p.parse_args(argv)
    args.argv, args.seeds = argv, args.seeds or [args.seed]
    if 0.0 not in args.branches:
        raise SystemExit(f"--branches {args.branches}: include 0 (retrain), the reference of every sign.")
    run_or_render(lambda: run(args), render, args.out, args.render_only)


if __name__ == "__main__":
    main()
