"""How much damping does the γ → ∞ penalty term need? The conjugate-gradient solve of ``z_solve="cg"`` per damping δ.

At a U-Net trained on the default schedule for ``--at`` of the quick preset's lower-level budget (development seed
≥ 100, validation split only), the term −∇²_qy SM (H + δI)⁻¹ ∇_y f̃ (docs/algorithms.md §3.4,
``SurrogatePenalty.limit``) is solved for each δ in ``--dampings`` on the same minibatch, (t, ε) and surrogate draw,
with ``--iters`` products at tolerance ``--tol``. The rule that sets the task's ``cg_damping``: the smallest δ whose
solve reaches the tolerance (an undamped solve of an indefinite Hessian stops at negative curvature, or on its
budget with a residual above ‖b‖, and its term is then noise)::

    OMP_NUM_THREADS=1 python studies/cg_probe.py --seed 100 --out docs/studies/cg_probe.json
    python studies/cg_probe.py --preset smoke --seed 100 --iters 5 --out /tmp/cg_probe.json
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dev import parser, run_or_render, start, trained_noise_schedule  # noqa: E402


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ray_bilevel.schedules import NAMES

    commit = start(args.seed, "studies/cg_probe.py (it sets cg_damping)")
    task, steps = trained_noise_schedule(args.preset, args.seed, args.at, z_fid_grad="surrogate", z_solve="cg")
    s, x0 = task.schedule, task._next_batch()
    rows = []
    for damping in args.dampings:
        gen = torch.Generator().manual_seed(args.seed)
        t, noise = torch.randint(0, task.cfg.T, (x0.shape[0],), generator=gen), torch.randn(x0.shape, generator=gen)
        task.surrogate_penalty.generator.manual_seed(args.seed + 1)  # the same surrogate draw for every δ
        c0 = time.process_time()
        term, out = task.surrogate_penalty.limit(task.y, [getattr(s, n) for n in NAMES],
                                                 lambda: s.alphas_cumprod().to(task.device), x0, t, noise,
                                                 iters=args.iters, tol=args.tol, damping=damping)
        rows.append({"damping": damping, **out, "term": dict(zip(NAMES, map(float, term))),
                     "cpu_s": time.process_time() - c0})
        print(f"δ={damping:g}: {out['cg_iterations']:.0f} products, residual {out['cg_residual']:.3g}, "
              f"curvature stop {out['cg_curvature_stop']:.0f}, term {[round(float(x), 1) for x in term]}", flush=True)
    reached = [r["damping"] for r in rows if r["cg_residual"] <= args.tol]
    return {"command": "python studies/cg_probe.py " + " ".join(args.argv), "commit": commit, "seed": args.seed,
            "preset": args.preset, "lower_steps": steps, "iters": args.iters, "tol": args.tol, "rows": rows,
            "chosen_damping": min(reached) if reached else None}


def render(result: dict[str, Any]) -> str:
    lines = ["| damping δ | products | relative residual | stopped at negative curvature | term (start, end, tau, eps) "
             "| CPU s |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        term = ", ".join(f"{v:.3g}" for v in r["term"].values())
        lines.append(f"| {r['damping']:g} | {r['cg_iterations']:.0f} | {r['cg_residual']:.3g} | "
                     f"{'yes' if r['cg_curvature_stop'] else 'no'} | {term} | {r['cpu_s']:.1f} |")
    chosen = result["chosen_damping"]
    lines.append("")
    lines.append(f"Smallest δ reaching the tolerance {result['tol']:g} in {result['iters']} products: "
                 f"{'none' if chosen is None else f'{chosen:g}'} (seed {result['seed']}, {result['lower_steps']} "
                 f"lower-level steps, commit {result['commit']}).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser(__doc__, "results/cg_probe.json")
    p.add_argument("--at", type=float, default=0.5, help="fraction of the lower-level budget trained first")
    p.add_argument("--dampings", nargs="+", type=float, default=[0.0, 0.01, 0.1, 1.0, 10.0])
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--tol", type=float, default=1e-2)
    args = p.parse_args(argv)
    args.argv = argv
    run_or_render(lambda: run(args), render, args.out, args.render_only)


if __name__ == "__main__":
    main()
