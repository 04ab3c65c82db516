"""λ from the whole closed-form curve vs Algorithm 2's gradient steps, on development seeds and validation only.

The λ task's lower level has a closed form (p*_λ ∝ p_data · e^{r2/λ}), so one set of pre-trained samples gives the
upper objective F(λ) = E_{p*_λ}[r1] for every λ by self-normalised importance weights (docs/algorithms.md §2.4,
``lam_search="curve"``). This study sets the two λ searches of the bilevel method side by side, each as the
harness runs it (one ``BilevelTrainable`` trial at the quick preset, the guided generation at its λ included):

* ``gradient``: Algorithm 2, ``outer_steps`` projected log-λ steps on fresh pools (today's default);
* ``curve``: λ* = argmax F̂(λ) on the validation reference set among the λ with ESS >= ``curve_min_ess`` · N.

Each is scored on what the harness selects on, ``alignment_val`` of the guided generation at its λ (validation
noise), and costed in counted compute (``cost_flops``). Development seeds only (default 100-104; benchmark seeds
0-4 are refused); the test split is never read. Rule fixed before the run: ``curve`` becomes the default if its
mean ``alignment_val`` is not below ``gradient``'s by more than the paired 95 % interval (a tie or better) — it
costs a fraction of the compute.

    python studies/lambda_curve.py                       # seeds 100-104, writes docs/studies/lambda_curve.json
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_trial(seed: int, search: str, preset: str) -> dict[str, float]:
    from ray_bilevel.tune.trainable import BilevelTrainable

    trainable = BilevelTrainable(config={"task": "reward_lambda", "preset": preset, "seed": seed, "lam_search": search})
    report: dict = {}
    while not report.get("done"):
        report = trainable.train()
    trainable.stop()
    return {"lam": float(report["lam"]), "alignment_val": float(report["alignment_val"]),
            "cost_flops": float(report["cost_flops"]), "cpu_s": float(report["cpu_s"])}


def main(argv: list[str] | None = None) -> int:
    from ray_bilevel.benchmark.stats import mean_ci

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="100-104", help="development seeds, e.g. 100-104 (benchmark seeds 0-4 refused)")
    p.add_argument("--preset", default="quick")
    p.add_argument("--out", default="docs/studies/lambda_curve.json")
    a = p.parse_args(argv)
    lo, _, hi = a.seeds.partition("-")
    seeds = list(range(int(lo), int(hi or lo) + 1))
    if any(s < 100 for s in seeds):
        raise SystemExit(f"lambda_curve.py: error: development seeds are >= 100, got {seeds}; seeds 0-4 are for "
                         "reporting.")
    t0 = time.time()
    rows = [{"seed": s, "search": m, **run_trial(s, m, a.preset)} for s in seeds for m in ("gradient", "curve")]
    by = {(r["seed"], r["search"]): r for r in rows}
    diff = [by[(s, "curve")]["alignment_val"] - by[(s, "gradient")]["alignment_val"] for s in seeds]
    ratio = [by[(s, "curve")]["cost_flops"] / by[(s, "gradient")]["cost_flops"] for s in seeds]
    mean, low, high, n = mean_ci(diff)
    verdict = "tie" if low is None or low <= 0 <= high else ("curve better" if mean > 0 else "gradient better")
    summary = {
        "seeds": seeds,
        "preset": a.preset,
        "curve_minus_gradient_alignment_val": {"mean": mean, "ci95": [low, high], "n": n, "verdict": verdict},
        "cost_ratio_curve_over_gradient": sum(ratio) / len(ratio),
        "wall_s": round(time.time() - t0, 1),
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(
            {"command": "python studies/lambda_curve.py " + " ".join(argv or []), "rows": rows, "summary": summary},
            fh,
            indent=1,
        )
    print("| seed | search | λ | alignment_val | GFLOP |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['search']} | {r['lam']:.3g} | {r['alignment_val']:.2f} | "
              f"{r['cost_flops'] / 1e9:.0f} |")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
