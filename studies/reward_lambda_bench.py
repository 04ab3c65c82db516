"""Application 1 benchmark: bilevel λ (Algorithms 2 + 5) vs the released λ grid vs the weighted-sum baseline.

Every trial runs the same task (same model, prompt, rewards, initial noise of the guided generation and
pre-trained reference set) through the Task protocol exactly as the Tune trainables do — the bilevel trial
calls ``hyper_step`` ``outer_budget`` times and then ``evaluate(final=True)`` (which generates at the learned
λ on the validation noise); a fixed trial calls ``lower_step`` ``lower_budget`` times and then ``evaluate(final=True)``;
choices use the ``_val`` values and ``evaluate_test()`` adds the test values (reporting, not timed) — but in this
process, without Ray, so the wall times measure the methods and not the scheduler. Wall time per method is
the sum over its trials. Output: a JSON file and a markdown table (printed last)::

    python studies/reward_lambda_bench.py --preset quick --out results/reward_lambda_bench.json
    python studies/reward_lambda_bench.py --preset smoke          # a plumbing check, a minute or two
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GRID = (0.01, 0.1, 1.0, 10.0, 100.0)  # the released λ grid (docs/algorithms.md §5)
W_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)  # weighted-sum weights (ours; docs/algorithms.md §5), same size as the λ grid
KEYS = ("lam", "w", "alignment", "reward", "fid", "fid_domain", "fid_domain_real", "alignment_pretrained",
        "reward_pretrained")


def run_trial(task_name: str, config: dict[str, Any], bilevel: bool) -> dict[str, Any]:
    """One trial through the Task protocol; returns the final report plus wall time and the λ trajectory."""
    from ray_bilevel.tasks import get_task

    t0 = time.perf_counter()
    task = get_task(task_name)({"task": task_name, **config})
    if bilevel:
        for _ in range(task.outer_budget):
            task.hyper_step()
    else:
        for _ in range(task.lower_budget):
            task.lower_step()
    report = dict(task.evaluate(final=True))  # completes the method's answer on the validation noise
    wall_s = time.perf_counter() - t0  # the method's time; the test evaluation below is reporting
    report.update(task.evaluate_test())
    report = {k: float(v) for k, v in report.items()}
    report.update(task.hyperparameters())
    out = {"task": task_name, "config": config, "report": report, "wall_s": wall_s}
    if bilevel:
        out["trajectory"] = [{k: v for k, v in row.items() if k in ("outer_step", "lam", "hypergrad", "ess")}
                             for row in getattr(task, "trajectory", [])]
    print(f"  {task_name:13s} {json.dumps({k: round(v, 4) for k, v in report.items() if k in KEYS})} "
          f"({out['wall_s']:.0f} s)", flush=True)
    return out


def best(trials: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return max(trials, key=lambda t: t["report"][key])


#: Bilevel variants: ours (exact ∇F_γ, γ = 1000, fresh pools, log-λ steps), the same on one fixed pool, and the
#: released estimator and step (eq. (33), γ = 1, plain λ steps; log-sum-exp so that it does not overflow).
BILEVEL_VARIANTS = {
    "bilevel": {},
    "bilevel_fixed_pool": {"pool": "fixed"},
    "bilevel_released": {"method": "paper", "gamma": 1.0, "log_space": False},
}


def warm_up(base: dict[str, Any]) -> float:
    """Build the shared evaluator once (models, pre-trained reference set, FID statistics), untimed for methods."""
    from ray_bilevel.tasks import get_task

    t0 = time.perf_counter()
    task = get_task("reward_lambda")({"task": "reward_lambda", **base})
    task._reference()
    for kind in ("domain", "domain_real") + (("inception",) if task.cfg.final_inception else ()):
        task._evaluator(kind)
    return time.perf_counter() - t0


def run(preset: str, seed: int, overrides: dict[str, Any], lam0: float | None, grid: tuple[float, ...],
        w_grid: tuple[float, ...]) -> dict[str, Any]:
    base = {"preset": preset, "seed": seed, **overrides}
    setup_s = warm_up(base)
    print(f"shared evaluator ready ({setup_s:.0f} s: models, pre-trained reference set, FID statistics)", flush=True)
    methods: dict[str, list[dict[str, Any]]] = {}
    for name, variant in BILEVEL_VARIANTS.items():
        print(f"{name} (Algorithm 2, {variant or 'defaults'}):", flush=True)
        config = {**base, **variant, **({"lam": lam0} if lam0 else {})}
        methods[name] = [run_trial("reward_lambda", config, bilevel=True)]
    print(f"lambda grid {list(grid)}:", flush=True)
    methods["lambda_grid"] = [run_trial("reward_lambda", {**base, "lam": lam}, bilevel=False) for lam in grid]
    print(f"weighted sum r2 + w r1, w in {list(w_grid)}:", flush=True)
    methods["weighted_sum"] = [run_trial("weighted_sum", {**base, "w": w}, bilevel=False) for w in w_grid]
    summary = {}
    for name, trials in methods.items():
        summary[name] = {
            "wall_s": sum(t["wall_s"] for t in trials),
            "trials": len(trials),
            # choices on validation values; the chosen trial's report carries its test values too
            "best_by_alignment": best(trials, "alignment_val")["report"],
            "best_by_alignment_plus_reward": max(
                trials, key=lambda t: t["report"]["alignment_val"] + t["report"]["reward_val"])["report"],
        }
    return {"preset": preset, "seed": seed, "overrides": overrides, "setup_s": setup_s, "methods": methods,
            "summary": summary}


def markdown(result: dict[str, Any]) -> str:
    cols = ("alignment", "reward", "fid", "fid_domain", "fid_domain_real")
    lines = ["| method | trial | " + " | ".join(cols) + " | wall s |", "|" + "---|" * (len(cols) + 3)]
    for name, trials in result["methods"].items():
        for t in trials:
            r = t["report"]
            hyper = f"w={r['w']:.3g}" if "w" in r else f"λ={r['lam']:.3g}"
            vals = " | ".join(f"{r[c]:.2f}" if c in r else "–" for c in cols)
            lines.append(f"| {name} | {hyper} | {vals} | {t['wall_s']:.0f} |")
    lines.append("")
    lines.append("| method | total wall s | pick by alignment | pick by alignment + reward |")
    lines.append("|---|---|---|---|")
    for name, s in result["summary"].items():
        def fmt(r: dict) -> str:
            hyper = f"w={r['w']:.3g}" if "w" in r else f"λ={r['lam']:.3g}"
            return (
                f"{hyper}: align {r['alignment']:.1f}, reward {r['reward']:.1f}, fid {r.get('fid', float('nan')):.1f}"
            )

        lines.append(f"| {name} | {s['wall_s']:.0f} | {fmt(s['best_by_alignment'])} | "
                     f"{fmt(s['best_by_alignment_plus_reward'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="quick", choices=["smoke", "quick", "paper"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lam0", type=float, default=None, help="initial λ of the bilevel run (default: the preset's)")
    p.add_argument("--grid", type=float, nargs="+", default=list(GRID))
    p.add_argument("--w-grid", type=float, nargs="+", default=list(W_GRID))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="task setting overrides, e.g. --set gamma=10 method=paper (JSON values)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("results/reward_lambda_bench.json"))
    args = p.parse_args(argv)
    from ray_bilevel.cli import parse_key_values
    from ray_bilevel.config import ConfigError

    try:
        overrides = parse_key_values(args.set)
    except ConfigError as exc:
        p.error(str(exc))

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = run(args.preset, args.seed, overrides, args.lam0, tuple(args.grid), tuple(args.w_grid))
    result["total_wall_s"] = time.perf_counter() - t0
    result["torch_threads"] = args.threads
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out} ({result['total_wall_s']:.0f} s)\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
