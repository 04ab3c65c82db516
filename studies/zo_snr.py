"""Is the schedule's zeroth-order gradient worth its steps? Signal-to-noise of eq. (14) per coordinate (issue #24).

At a U-Net trained on the default schedule (the quick preset's data, network and optimiser; ``--at`` fractions of
its lower-level budget), the coordinate estimate of ∇_q FID_domain(val) (docs/algorithms.md §3.3: central
differences of radius ``zo_mu`` inside the bounds, one-sided at an active bound) is drawn ``--repeats`` times, each
with fresh initial noise x_T, for each probe size in ``--samples``:

* ``crn``: the task's estimator as it runs — the ± probes of every coordinate share x_T, the DDIM timesteps and the
  feature network (common random numbers), so noise common to both cancels;
* ``independent`` (first probe size only): the + and − probes draw their own x_T, which is what the estimate
  would be without common random numbers.

Per coordinate it reports the mean, the standard deviation over repeats, SNR = |mean| / sd and the fraction of
repeats whose sign agrees with the mean's: an Adam step moves a coordinate by about its learning rate whatever the
gradient's size, so the sign is what an outer step uses. Networks and probes use development seeds (≥ 100: the
rules of evidence, docs/algorithms.md §4) and the validation split only::

    OMP_NUM_THREADS=1 python studies/zo_snr.py --seed 100 --at 0.5 1.0 --repeats 12 --samples 96 288 \\
        --out docs/studies/zo_snr.json
    python studies/zo_snr.py --preset smoke --seed 100 --repeats 3 --samples 12 --out /tmp/zo_snr.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dev import parser, run_or_render, start, trained_noise_schedule  # noqa: E402


def estimates(task: Any, n: int, repeats: int, crn: bool, seed: int) -> list[list[float]]:
    """``repeats`` coordinate estimates of ∇_q FID_domain(val) at the task's live network and schedule, x_T of ``n``
    samples drawn from a generator seeded by ``seed`` (shared by the ± probes when ``crn``)."""
    import torch

    from ray_bilevel.estimators.zeroth_order import coordinate_zo
    from ray_bilevel.schedules import NAMES

    s, c = task.schedule, task.cfg
    lower, upper = zip(*(s.bounds[name] for name in NAMES))
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(repeats):
        x_T = torch.randn((n, *task.shape), generator=gen)
        if crn:
            def f(qv: torch.Tensor, x_T: torch.Tensor = x_T) -> float:
                return task._fid(task.y, task._alphas_of(qv), x_T)
        else:  # every probe its own x_T: no common random numbers
            def f(qv: torch.Tensor) -> float:
                return task._fid(task.y, task._alphas_of(qv), torch.randn((n, *task.shape), generator=gen))
        out.append([float(g) for g in coordinate_zo(f, s.q.detach(), c.zo_mu, lower, upper).grad])
    return out


def stats(grads: list[list[float]]) -> dict[str, dict[str, float]]:
    """Per coordinate: mean, sd (n − 1), SNR = |mean| / sd and the share of repeats agreeing with the mean's sign."""
    from ray_bilevel.schedules import NAMES

    out = {}
    for j, name in enumerate(NAMES):
        xs = [g[j] for g in grads]
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / max(1, len(xs) - 1))
        agree = sum(1 for x in xs if x != 0 and (x > 0) == (mean > 0)) / len(xs)
        out[name] = {"mean": mean, "sd": sd, "snr": abs(mean) / sd if sd > 0 else float("inf"), "sign_agree": agree}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    commit = start(args.seed, "studies/zo_snr.py (it informs hand choices)")
    fractions = sorted(args.at)
    task, done = trained_noise_schedule(args.preset, args.seed, 0.0, **json.loads(args.override))
    budget, rows = task.lower_budget, []
    for frac in fractions:
        c0 = time.process_time()
        for _ in range(round(frac * budget) - done):
            task.lower_step()
        done = round(frac * budget)
        for k, n in enumerate(args.samples):
            for crn in (True, False) if k == 0 else (True,):
                t0 = time.process_time()
                grads = estimates(task, n, args.repeats, crn, seed=args.seed * 1_000 + 17 * k + int(crn))
                row = {"at": frac, "lower_steps": done, "samples": n, "crn": crn, "grads": grads,
                       "stats": stats(grads), "cpu_s": time.process_time() - t0}
                rows.append(row)
                print(f"at {frac:.2f} ({done} steps) n={n} {'crn' if crn else 'independent'}: " + ", ".join(
                    f"{name} snr {v['snr']:.2f} sign {v['sign_agree']:.2f}" for name, v in row["stats"].items())
                      + f" ({row['cpu_s']:.0f} CPU-s)", flush=True)
        print(f"  state at {frac:.2f}: {time.process_time() - c0:.0f} CPU-s", flush=True)
    return {"command": "python studies/zo_snr.py " + " ".join(args.argv), "commit": commit, "seed": args.seed,
            "preset": args.preset, "zo_mu": task.cfg.zo_mu, "schedule": task.hyperparameters(),
            "lrs": {n: getattr(task.cfg, f"lr_{n}") for n in ("start", "end", "tau", "eps")}, "rows": rows}


def render(result: dict[str, Any]) -> str:
    """One row per (state, probe size, CRN): SNR and sign agreement per coordinate."""
    from ray_bilevel.schedules import NAMES

    head = ("| lower steps | samples | ± probes | " + " | ".join(f"{n}: mean ± sd (SNR, sign)" for n in NAMES)
            + " | CPU s |")
    lines = [head, "|" + "---|" * (4 + len(NAMES))]
    for r in result["rows"]:
        cells = []
        for n in NAMES:
            v = r["stats"][n]
            cells.append("0 (at a bound)" if v["sd"] == 0 and v["mean"] == 0 else
                         f"{v['mean']:.3g} ± {v['sd']:.3g} ({v['snr']:.2f}, {v['sign_agree']:.2f})")
        lines.append(f"| {r['lower_steps']} | {r['samples']} | {'shared x_T' if r['crn'] else 'independent'} | "
                     + " | ".join(cells) + f" | {r['cpu_s']:.0f} |")
    lines.append("")
    lines.append(f"{len(result['rows'][0]['grads'])} repeats per row; development seed {result['seed']}, preset "
                 f"{result['preset']}, schedule {result['schedule']}, ZO radius {result['zo_mu']}; commit "
                 f"{result['commit']}. Cells: mean ± sd over repeats (SNR = |mean|/sd, share of repeats with the "
                 "mean's sign).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser(__doc__, "results/zo_snr.json")
    p.add_argument("--at", nargs="+", type=float, default=[0.5, 1.0],
                   help="fractions of the lower-level budget at which to probe")
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--samples", nargs="+", type=int, default=[96, 288],
                   help="probe sizes (x_T samples per FID); the first is also run without common random numbers")
    p.add_argument("--override", default="{}", help="JSON of extra task settings")
    args = p.parse_args(argv)
    args.argv = argv
    if args.repeats < 2:
        raise SystemExit(f"--repeats {args.repeats}: an sd needs at least 2 repeats.")
    run_or_render(lambda: run(args), render, args.out, args.render_only)


if __name__ == "__main__":
    main()
