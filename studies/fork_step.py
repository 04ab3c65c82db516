"""One hypergradient step from forked training: a better schedule than the default at two trainings' compute?

docs/studies/noise_schedule_variants.md measured that the ZO probe's sampling gradient points against retraining's,
and that training the last quarter of the run under the moved schedule recovers 5 of 6 signs. This study runs that
estimate as a method (issue #24), on development seeds and the validation split only:

1. **trunk**: train at the base schedule q0 for ``--fork`` of the lower-level budget N;
2. **branches**: from the trunk, one branch at q0 and one per coordinate at q0 + h_i e_i (into the interior at a
   bound), each trained the remaining (1 − fork)·N steps and evaluated on validation. The q0 branch is a complete
   default training (the default's answer); the differences are a forward-difference estimate of the total
   derivative d f(y(q), q)/dq through the last (1 − fork)·N steps of the lower level's response;
3. **step**: for each ``--scales`` s, q_s = q0 + s·Σ_i h_i e_i over the coordinates whose branch beat the q0 branch,
   projected onto the bounds;
4. **finish**: from the trunk, train at q_s the remaining steps (the method's answer for scale s, validation-chosen
   against the q0 branch); with ``--retrain``, also a fresh training at q_s (what the schedule is worth to a user
   who trains with it from the start).

Counted compute (:mod:`ray_bilevel.cost`) is reported in trainings: one = the FLOPs of N lower-level steps. The
method (trunk, branches with their evaluations, one finish) costs about 1 + n·(1 − fork) + (1 − fork) trainings for
n coordinates: 2.0 at fork 0.75 and three coordinates, a two-trial searcher's budget::

    OMP_NUM_THREADS=1 python studies/fork_step.py --seeds 100 101 --jobs 2 --out docs/studies/fork_step.json
    python studies/fork_step.py --preset smoke --seeds 100 --names end tau --out /tmp/fork.json
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dev import map_seeds, parser, run_or_render, schedule_args, schedule_maker, schedule_options  # noqa: E402


def one_seed(seed: int, preset: str, base: dict[str, float], names: list[str], h: dict[str, float], fork: float,
             scales: list[float], retrain: bool, override: dict[str, Any]) -> dict[str, Any]:
    """Steps 1-4 of the module docstring at one development seed."""
    from ray_bilevel import cost
    from ray_bilevel.tune.fork import moved, stepped

    fresh = schedule_maker(preset, seed, override)

    def run_to_end(task: Any, meter: cost.FlopMeter) -> float:
        with cost.metering(meter):
            while task.lower_steps < task.lower_budget:
                task.lower_step()
            return float(task.evaluate()["fid_domain_val"])

    t0 = time.process_time()
    method = cost.FlopMeter()  # what the method spends: trunk, branches with their evaluations, one finish
    with cost.metering(method):
        trunk = fresh(base)
    q0, budget, bounds = trunk.hyperparameters(), trunk.lower_budget, trunk.schedule.bounds
    split = round(fork * budget)
    if not 0 < split < budget:
        raise SystemExit(f"--fork {fork} leaves no trunk or no branch of the {budget}-step budget: pick 0 < fork < 1.")
    steps = cost.FlopMeter()
    with cost.metering(steps):
        for _ in range(split):
            trunk.lower_step()
    method.book("unet", steps.total)
    training = steps.total / split * budget  # one training's FLOPs: the unit of `cost`
    state = copy.deepcopy(trunk.state_dict())  # a snapshot: state_dict() holds live tensors

    def branch(q: dict[str, float], meter: cost.FlopMeter) -> float:
        task = fresh(q0)
        task.load_state_dict(copy.deepcopy(state))  # branches must not share weights or optimiser tensors
        task.set_hyperparameters(q)
        return run_to_end(task, meter)

    base_value = branch(q0, method)
    branches = {}
    for name in names:
        q = moved(q0, bounds, name, h[name])
        branches[name] = {"q": q, "value": branch(q, method)}
        print(f"seed {seed}: branch {name} {q0[name]:g} -> {q[name]:g}: val {branches[name]['value']:.2f} (q0 "
              f"{base_value:.2f})", flush=True)
    probe_cost = method.total
    answers = []
    for scale in scales:
        improved = {name: b["value"] < base_value for name, b in branches.items()}
        q = stepped(q0, {name: b["q"] for name, b in branches.items()}, improved, scale, bounds)
        finish = cost.FlopMeter()
        value = base_value if q == q0 else branch(q, finish)
        row = {"scale": scale, "q": q, "finished": value, "cost": (probe_cost + finish.total) / training}
        if retrain:
            row["retrained"] = base_value if q == q0 else run_to_end(fresh(q), cost.FlopMeter())
        row["answer"] = min(value, base_value)  # the method's validation-chosen answer: the step or the default
        answers.append(row)
        print(f"seed {seed}: scale {scale:g}: q {q} finished val {value:.2f}"
              + (f", retrained {row['retrained']:.2f}" if retrain else "") + f" ({row['cost']:.2f} trainings)",
              flush=True)
    return {"seed": seed, "q0": q0, "lower_budget": budget, "fork_step": split, "default": base_value,
            "branches": branches, "answers": answers, "training_gflop": training / 1e9,
            "cpu_s": time.process_time() - t0}


def run(args: argparse.Namespace) -> dict[str, Any]:
    commit, h, base, override = schedule_args(args, "studies/fork_step.py (it informs hand choices)")
    jobs = [(s, args.preset, base, args.names, h, args.fork, args.scales, args.retrain, override) for s in args.seeds]
    seeds = map_seeds(one_seed, jobs, args.jobs)
    return {"command": "python studies/fork_step.py " + " ".join(args.argv), "commit": commit, "preset": args.preset,
            "fork": args.fork, "h": h, "scales": args.scales, "seeds": seeds}


def render(result: dict[str, Any]) -> str:
    """One row per (seed, scale): the default, the branches' verdicts, the stepped schedule and its values."""
    retrain = any("retrained" in a for s in result["seeds"] for a in s["answers"])
    lines = ["| seed | default (q0 branch) | branches: val (✓ beat q0) | scale | stepped schedule | finished | "
             + ("retrained | " if retrain else "") + "cost (trainings) |",
             "|---|---|---|---|---|---|---|" + ("---|" if retrain else "")]
    for s in result["seeds"]:
        verdicts = ", ".join(f"{n} {b['q'][n]:g}: {b['value']:.1f}{' ✓' if b['value'] < s['default'] else ''}"
                             for n, b in s["branches"].items())
        for a in s["answers"]:
            q = ", ".join(f"{k}={v:.3g}" for k, v in a["q"].items())
            lines.append(f"| {s['seed']} | {s['default']:.1f} | {verdicts} | {a['scale']:g} | {q} | "
                         f"{a['finished']:.1f} | " + (f"{a['retrained']:.1f} | " if retrain else "")
                         + f"{a['cost']:.2f} |")
    first = result["seeds"][0]
    lines += ["", f"Validation domain FID (EMA network, fixed validation noise; lower is better). Fork at "
                  f"{result['fork']:g} of {first['lower_budget']} steps, moves {result['h']}, preset "
                  f"{result['preset']}, development seeds {[s['seed'] for s in result['seeds']]}; cost: the method's "
                  f"counted compute (trunk, branches with their evaluations, the finish) in trainings of "
                  f"{first['training_gflop']:,.0f} GFLOP; commit {result['commit']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser(__doc__, "results/fork_step.json")
    schedule_options(p, "move of the branch")
    p.add_argument("--fork", type=float, default=0.75, help="fraction of the budget trained before the branches")
    p.add_argument("--scales", nargs="+", type=float, default=[1.0, 2.0],
                   help="step = scale × the improving branches' moves; one finish per scale")
    p.add_argument("--retrain", action="store_true", help="also train each stepped schedule from scratch")
    args = p.parse_args(argv)
    args.argv, args.seeds = argv, args.seeds or [args.seed]
    run_or_render(lambda: run(args), render, args.out, args.render_only)


if __name__ == "__main__":
    main()
