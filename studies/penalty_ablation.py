"""Does the penalty term of eq. (4) carry signal? Full bilevel vs upper-only vs fixed schedules (noise_schedule task).

Variants (same task, data stream, seeds and evaluation noise; in this process, without Ray):

* ``surrogate`` — the full penalty method: z steps on SM + f̃/γ (f̃ = differentiable digit-feature Fréchet distance of
  z's short-chain DDIM samples against the validation statistics), h_y at y' = y + z's SM steps, γ = ``--gamma``;
* ``cg`` — the penalty term in its γ → ∞ limit, −∇²_qy SM H⁻¹ ∇_y f̃ by truncated conjugate gradients
  (``z_solve="cg"``, ``--cg-iters``, ``--cg-damping``): its size set by the lower level's curvature, not by how far
  one z step moved;
* ``none`` — the upper-only variant (the ``quick`` preset as shipped: z = y + one SM step, so γ(h_z − h_y) ≈ 0);
* ``default`` — the DDIM-default schedule, ``lower_budget`` y steps;
* ``fixed_tau`` — a fixed tau (``--tau``), ``lower_budget`` y steps.

Each trial ends with ``evaluate_test(full=False)``: ``fid_domain`` (test split) and ``fid_domain_val``. Per bilevel
outer step the bilevel variants record ``hypergrad_upper_norm`` (‖ĝ_q‖), ``hypergrad_penalty_norm`` (‖γ(h_z − h_y)‖),
``hypergrad_cosine`` and z's surrogate before/after its steps. ``cpu_s`` is ``time.process_time()`` of the trial.
Results are merged into ``--out`` (JSON, one entry per variant and seed; reruns replace their entry) and the markdown
table of all entries is written next to it (``.md``)::

    nice -n 10 env OMP_NUM_THREADS=1 RAY_BILEVEL_CACHE=/tmp/rb python studies/penalty_ablation.py \\
        --variants surrogate none --seeds 0 --out results/penalty_ablation.json
    python studies/penalty_ablation.py --preset smoke --variants surrogate none default fixed_tau --out /tmp/pa.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = ("surrogate", "cg", "none", "default", "fixed_tau")
STEP_KEYS = (
    "hypergrad_upper_norm",
    "hypergrad_penalty_norm",
    "hypergrad_cosine",
    "hypergrad_norm",
    "z_surrogate_before",
    "z_surrogate_after",
    "ref_surrogate_after",
    "fid_domain_zo",
    "zy_distance",
    "zref_distance",
    "cg_iterations",
    "cg_residual",
    "cg_curvature_stop",
)


def variant_config(variant: str, args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """(task config, bilevel?) of a variant."""
    base: dict[str, Any] = {"task": "noise_schedule", "preset": args.preset, **json.loads(args.override)}
    if variant == "surrogate":
        return {**base, "z_fid_grad": "surrogate", "z_init": "copy_y", "gamma": args.gamma, "gamma_end": args.gamma,
                "inner_z": args.inner_z, "lr_z": args.lr_z, "surrogate_samples": args.surrogate_samples,
                "surrogate_steps": args.surrogate_steps}, True
    if variant == "cg":
        return {**base, "z_fid_grad": "surrogate", "z_solve": "cg", "cg_iters": args.cg_iters,
                "cg_damping": args.cg_damping, "surrogate_samples": args.surrogate_samples,
                "surrogate_steps": args.surrogate_steps}, True
    if variant == "none":
        return {**base, "z_fid_grad": "none", "z_init": "copy_y"}, True
    if variant == "default":
        return base, False
    if variant == "fixed_tau":
        return {**base, "tau": args.tau}, False
    raise SystemExit(f"unknown variant {variant!r}; choose from {VARIANTS}")


def run_trial(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from ray_bilevel.tasks import get_task

    config, bilevel = variant_config(variant, args)
    config["seed"] = seed
    c0 = time.process_time()
    task = get_task("noise_schedule")(config)
    steps: list[dict[str, float]] = []
    if bilevel:
        for k in range(task.outer_budget):
            r = task.hyper_step()
            if "hypergrad_upper_norm" in r:  # a bilevel outer step (not warm-up / cool-down)
                row = {
                    "outer_step": k + 1,
                    **{key: float(r[key]) for key in STEP_KEYS if key in r},
                    **task.hyperparameters(),
                }
                steps.append(row)
                print(
                    f"  {variant} s{seed} outer {k + 1:3d}: "
                    + " ".join(f"{a}={b:.4g}" for a, b in row.items() if a != "outer_step"),
                    flush=True,
                )
    else:
        for _ in range(task.lower_budget):
            task.lower_step()
    train_cpu = time.process_time() - c0
    report = {k: float(v) for k, v in task.evaluate_test(full=False).items()}
    cpu = time.process_time() - c0
    ratios = [
        s["hypergrad_penalty_norm"] / s["hypergrad_upper_norm"] for s in steps if s.get("hypergrad_upper_norm", 0) > 0
    ]
    out = {"variant": variant, "seed": seed, "commit": _commit(), "config": config, "fid_domain": report["fid_domain"],
           "fid_domain_val": report["fid_domain_val"], **task.hyperparameters(), "cpu_s": cpu, "train_cpu_s": train_cpu,
           "lower_steps": task.lower_steps, "bilevel_steps": len(steps), "steps": steps,
           "mean_penalty_ratio": sum(ratios) / len(ratios) if ratios else None,
           "mean_cosine": sum(s["hypergrad_cosine"] for s in steps) / len(steps) if steps else None}
    print(f"{variant} seed {seed}: fid_domain {out['fid_domain']:.1f} (val {out['fid_domain_val']:.1f}), tau "
          f"{out['tau']:.3f}, "
          f"penalty/upper {out['mean_penalty_ratio']}, cpu {cpu:.0f} s", flush=True)
    return out


def table(entries: list[dict[str, Any]]) -> str:
    rows = ["| variant | seed | fid_domain (test) | fid_domain_val | start | end | tau | eps | mean ‖γ(h_z−h_y)‖/‖ĝ_q‖ "
            "| mean cosine | cpu s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in sorted(entries, key=lambda e: (VARIANTS.index(e["variant"]), e["seed"])):
        r = e["mean_penalty_ratio"]
        cs = e["mean_cosine"]
        rows.append(f"| {e['variant']} | {e['seed']} | {e['fid_domain']:.1f} | {e['fid_domain_val']:.1f} | "
                    f"{e['start']:.3f} | "
                    f"{e['end']:.3f} | {e['tau']:.3f} | {e['eps']:.4f} | {'—' if r is None else f'{r:.3g}'} | "
                    f"{'—' if cs is None else f'{cs:.2f}'} | {e['cpu_s']:.0f} |")
    return "\n".join(rows) + "\n"


def _commit() -> str | None:
    from ray_bilevel.benchmark.outputs import git_commit

    info = git_commit(str(Path(__file__).resolve().parents[1]))
    return None if info["sha"] is None else info["sha"][:7] + ("+dirty" if info["dirty"] else "")


def _ci(values: list[float | None]) -> str:
    from ray_bilevel.benchmark.stats import mean_ci

    mean, low, high, n = mean_ci(values)
    if mean is None:
        return "—"
    fmt = ".2e" if 0 < abs(mean) < 0.01 else (".3f" if abs(mean) < 10 else ".1f")
    return f"{mean:{fmt}}" if low is None or high is None else f"{mean:{fmt}} ± {(high - low) / 2:{fmt}}"


def summary(entries: list[dict[str, Any]]) -> str:
    """Mean ± 95 % t interval over seeds per variant, and per-seed paired ratios against the ``default`` variant
    (its FID and its CPU-seconds: the targets "≤ 0.70 × the default's FID at ≤ 2.0 × its CPU-seconds")."""
    by = {(e["variant"], e["seed"]): e for e in entries}
    seeds = sorted({e["seed"] for e in entries})
    rows = ["| variant | seeds | fid_domain (test) | fid_domain_val | ÷ default (test, paired) | cpu s | ÷ default cpu "
            "| tau | "
            "mean ‖γ(h_z−h_y)‖/‖ĝ_q‖ | mean cosine |", "|---|---|---|---|---|---|---|---|---|---|"]
    for v in VARIANTS:
        es = [by[(v, s)] for s in seeds if (v, s) in by]
        if not es:
            continue
        ratio = [e["fid_domain"] / by[("default", e["seed"])]["fid_domain"] for e in es if ("default", e["seed"]) in by]
        cpu = [e["cpu_s"] / by[("default", e["seed"])]["cpu_s"] for e in es if ("default", e["seed"]) in by]
        rows.append(f"| {v} | {len(es)} | {_ci([e['fid_domain'] for e in es])} | "
                    f"{_ci([e['fid_domain_val'] for e in es])} | "
                    f"{_ci(ratio)} | {_ci([e['cpu_s'] for e in es])} | {_ci(cpu)} | {_ci([e['tau'] for e in es])} | "
                    f"{_ci([e['mean_penalty_ratio'] for e in es])} | {_ci([e['mean_cosine'] for e in es])} |")
    commits = sorted({str(e.get("commit")) for e in entries})
    return (
        "\n".join(rows) + f"\n\nCommit(s): {', '.join(commits)}; mean ± half-width of the 95 % t interval over seeds.\n"
    )


def _render(entries: list[dict[str, Any]]) -> str:
    """The per-seed table and the summary: the .md next to the JSON and what BENCHMARKS.md's block prints."""
    return table(entries) + "\n" + summary(entries)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--gamma", type=float, default=1e5)
    p.add_argument("--lr-z", type=float, default=2e-3)
    p.add_argument("--inner-z", type=int, default=1)
    p.add_argument("--surrogate-samples", type=int, default=32)
    p.add_argument("--surrogate-steps", type=int, default=10)
    p.add_argument("--cg-iters", type=int, default=30, help="the cg variant's conjugate-gradient products")
    p.add_argument("--cg-damping", type=float, default=1.0, help="the cg variant's damping δ of H + δI")
    p.add_argument("--tau", type=float, default=1.4, help="the fixed_tau variant's tau")
    p.add_argument("--override", default="{}", help='JSON of extra task settings for every variant, e.g. '
                                                    '\'{"outer_steps": 15}\'')
    p.add_argument("--out", type=Path, default=Path("results/penalty_ablation.json"))
    p.add_argument("--render-only", action="store_true", help="only rewrite the .md tables from --out's JSON")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="FID with")
    warnings.filterwarnings("ignore", message="noise_schedule: projected")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = json.loads(args.out.read_text()) if args.out.is_file() else []
    for seed in [] if args.render_only else args.seeds:
        for variant in args.variants:
            result = run_trial(variant, seed, args)
            entries = [e for e in entries if (e["variant"], e["seed"]) != (variant, seed)] + [result]
            args.out.write_text(json.dumps(entries, indent=1))
            args.out.with_suffix(".md").write_text(_render(entries))
    text = _render(entries)
    md = args.out.with_suffix(".md")
    if not md.is_file() or md.read_text() != text:  # --render-only on an up-to-date folder writes nothing
        md.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
