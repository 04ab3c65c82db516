"""Choose the λ bilevel method's hand-chosen settings (``lr_lam``, ``gamma``) on development seeds and validation only.

The bilevel λ method (Algorithm 2 + the guided generation at the learned λ, ``RewardLambdaTask``) has two settings
its authors choose by hand: the log-λ step size ``lr_lam`` (η) and the penalty constant ``gamma`` (γ). This study
evaluates a small grid of candidates fixed before the run, on development seeds (default 100-104; benchmark seeds
0-4 are refused) and the validation split only, with the quick preset's bilevel trial. The default design varies
one setting at a time around a centre (``--around``, default today's settings; the recorded run: η = 0.01,
γ = 1000, so η ∈ {0.003, 0.01, 0.03, 0.1} at γ = 1000 and γ ∈ {10, 100, 10⁴} at η = 0.01: 7 candidates;
``--design product`` takes every pair). Each candidate's trial:

1. ``outer_steps`` (10) λ iterations from λ0 = 5 on fresh pools of 128 pre-trained samples (``hyper_step``);
2. the guided generation at the learned λ on the seed's validation noise and its ``alignment_val`` (the mean upper
   score r1, what compare.py's harness selects on; ``evaluate(final=True)``).

Rule (fixed before the run): the candidate with the highest mean ``alignment_val`` over the seeds wins; the paired
difference to the current default (same seeds, same validation noise) is reported with its 95 % Student-t interval
(as BENCHMARKS.md's). The test
split is never read (tests/test_splits.py forbids it the same way for every tuning path).

Two shortcuts that do not change any number: the pools of a seed are the same for every candidate (pool k is seeded
by (seed, k) alone in the ``pool="fresh"`` mode), so they are drawn once per seed and shared; and one task per seed
serves every candidate (its settings replaced, its state reset), so the validation reference set and evaluators are
built once. ``--repeats`` (default 1) evaluates the first ``repeats`` batches of 32 of the quick trial's validation
generation (3 batches), to fit a few minutes of a 2-core CPU.

Writes a JSON file (default ``docs/studies/select_settings.json``) and prints a markdown table::

    OMP_NUM_THREADS=1 python studies/select_settings.py --around 0.01,1000   # the recorded run (7 x 5 seeds)
    python studies/select_settings.py --lr-lam 0.01,0.03 --gamma 1000 --seeds 100-101 --out /tmp/s.json

Finished seeds are kept in ``<out>.partial.json`` (removed at the end); a stopped run resumes from it. Run it with
one thread per process on a shared machine (``OMP_NUM_THREADS=1``): measured, two threads on two busy cores spent
4× the CPU-seconds for the same seed.

The noise-schedule method's settings (``lr_start`` … ``lr_eps``, ``zo_mu``, ``gamma``) are not selected here: one
bilevel noise-schedule trial costs about 400 CPU-s at the quick preset, so a grid over them on five seeds is hours;
docs/algorithms.md ("Hand-chosen settings") lists them as unvalidated.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % Student-t interval (the benchmark's, ``benchmark.stats.mean_ci``)."""
    from ray_bilevel.benchmark.stats import mean_ci

    mean, low, high, _ = mean_ci(values)
    assert mean is not None
    return mean, float("nan") if high is None else high - mean


def _commit() -> dict[str, Any]:
    from ray_bilevel.benchmark.outputs import git_commit

    info = git_commit(str(ROOT))
    return {"commit": info["sha"], "worktree_dirty": info["dirty"]}


def run_seed(seed: int, candidates: list[tuple[float, float]], preset: str, repeats: int) -> dict[str, Any]:
    """Every candidate's bilevel trial on one development seed: the learned λ and the validation metrics."""
    from ray_bilevel.tasks.reward_lambda import RewardLambdaTask

    t_seed, c_seed = time.perf_counter(), time.process_time()
    task = RewardLambdaTask({"preset": preset, "seed": seed, "repeats": repeats})
    base, fresh = task.cfg, task.state_dict()
    if base.pool != "fresh":
        raise SystemExit(f"the shared-pool shortcut needs pool='fresh', got {base.pool!r}.")
    pools: dict[int, Any] = {}
    draw = task._pool

    def pool(k: int) -> Any:  # pool k depends on (seed, k) only: drawn once, shared by every candidate
        if k not in pools:
            pools[k] = draw(k)
        return pools[k]

    task._pool = pool  # type: ignore[method-assign]
    evaluated: dict[float, dict[str, float]] = {}  # the guided generation depends on (seed, λ) only
    out = []
    for lr_lam, gamma in candidates:
        t0 = time.perf_counter()
        task.cfg = dataclasses.replace(base, lr_lam=lr_lam, gamma=gamma)
        task.load_state_dict(fresh)
        task._reset_generation()
        for _ in range(task.outer_budget):
            task.hyper_step()
        if task.lam not in evaluated:
            report = task.evaluate(final=True)
            evaluated[task.lam] = {k: report[k] for k in ("alignment_val", "reward_val", "prompt_alignment_val")}
        out.append({"lr_lam": lr_lam, "gamma": gamma, "lam": task.lam, **evaluated[task.lam],
                    "lam_path": [round(r["lam"], 4) for r in task.trajectory], "wall_s": time.perf_counter() - t0})
        print(f"seed {seed}  lr_lam {lr_lam:g}  gamma {gamma:g}: λ {task.lam:.3g}  alignment_val "
              f"{out[-1]['alignment_val']:.2f}  ({out[-1]['wall_s']:.0f} s)", flush=True)
    return {"seed": seed, "rows": out, "guided_images": base.guide_batch * repeats,
            "wall_s": round(time.perf_counter() - t_seed, 1), "cpu_s": round(time.process_time() - c_seed, 1)}


def summarise(per_seed: list[dict[str, Any]], candidates: list[tuple[float, float]],
              default: tuple[float, float]) -> dict[str, Any]:
    """Per candidate: mean ± 95 % interval of alignment_val over seeds, the learned λ, the paired difference to the
    default; the winner (highest mean)."""
    rows: list[dict[str, Any]] = []
    for i, (lr_lam, gamma) in enumerate(candidates):
        vals = [s["rows"][i]["alignment_val"] for s in per_seed]
        mean, ci = _mean_ci(vals)
        rows.append({"lr_lam": lr_lam, "gamma": gamma, "alignment_val_mean": mean, "alignment_val_ci95": ci,
                     "alignment_val": vals, "lam": [s["rows"][i]["lam"] for s in per_seed]})
    k = candidates.index(default) if default in candidates else None
    for row in rows:
        if k is not None:
            diff = [a - b for a, b in zip(row["alignment_val"], rows[k]["alignment_val"])]
            row["diff_vs_default_mean"], row["diff_vs_default_ci95"] = _mean_ci(diff)
    best = max(range(len(rows)), key=lambda i: float(rows[i]["alignment_val_mean"]))
    return {"rows": rows, "winner": {"lr_lam": rows[best]["lr_lam"], "gamma": rows[best]["gamma"]},
            "default": {"lr_lam": default[0], "gamma": default[1]},
            "winner_is_default": candidates[best] == default}


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [f"Bilevel λ settings on development seeds {', '.join(map(str, result['seeds']))} (validation split, "
             f"{result['guided_images']} guided images per seed and candidate): mean alignment_val ± 95 % interval; "
             "paired difference to the reference (the design's centre).", "",
             "| lr_lam | gamma | alignment_val | Δ vs reference | learned λ per seed |", "|---|---|---|---|---|"]
    for r in s["rows"]:
        mark = " **winner**" if (r["lr_lam"], r["gamma"]) == (s["winner"]["lr_lam"], s["winner"]["gamma"]) else ""
        dflt = " (reference)" if (r["lr_lam"], r["gamma"]) == (s["default"]["lr_lam"], s["default"]["gamma"]) else ""
        diff = (f"{r['diff_vs_default_mean']:+.2f} ± {r['diff_vs_default_ci95']:.2f}"
                if "diff_vs_default_mean" in r else "–")
        lines.append(f"| {r['lr_lam']:g}{dflt}{mark} | {r['gamma']:g} | {r['alignment_val_mean']:.2f} ± "
                     f"{r['alignment_val_ci95']:.2f} | {diff} | {', '.join(f'{v:.3g}' for v in r['lam'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lr-lam", default="0.003,0.01,0.03,0.1", help="candidate step sizes η (comma list)")
    p.add_argument("--gamma", default="10,100,1000,10000", help="candidate penalty constants γ (comma list)")
    p.add_argument("--around", default=None, metavar="LR_LAM,GAMMA",
                   help="centre of the axes design and the reference of the paired differences (default: today's "
                        "RewardLambdaSettings defaults)")
    p.add_argument("--design", choices=("axes", "product"), default="axes",
                   help="axes: each list at the other setting's default (default); product: every pair")
    p.add_argument("--seeds", default="100-104", help="development seeds (>= 100)")
    p.add_argument("--preset", default="quick")
    p.add_argument("--repeats", type=int, default=1, help="guided batches of 32 evaluated per seed and candidate")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "studies" / "select_settings.json")
    args = p.parse_args(argv)

    from ray_bilevel.config import ConfigError
    from ray_bilevel.protocol import check_development, parse_seeds
    from ray_bilevel.tasks.reward_lambda.settings import RewardLambdaSettings

    try:
        seeds = parse_seeds(args.seeds)
        check_development(seeds, "val", "select_settings.py")
    except ConfigError as exc:
        p.error(str(exc))
    default = (RewardLambdaSettings.lr_lam, RewardLambdaSettings.gamma)
    if args.around:
        centre = _floats(args.around)
        if len(centre) != 2:
            p.error(f"--around must be LR_LAM,GAMMA (two numbers), got {args.around!r}.")
        default = (centre[0], centre[1])
    if args.design == "product":
        candidates = [(lr, g) for lr in _floats(args.lr_lam) for g in _floats(args.gamma)]
    else:  # one setting at a time around the default (the default once)
        candidates = [(lr, default[1]) for lr in _floats(args.lr_lam)]
        candidates += [(default[0], g) for g in _floats(args.gamma) if (default[0], g) not in candidates]
        if default not in candidates:
            candidates.insert(0, default)
    import torch

    t0, c0 = time.perf_counter(), time.process_time()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial.json")  # finished seeds: a stopped run resumes
    done = json.loads(partial.read_text()) if partial.is_file() else {}
    key = {"candidates": [list(c) for c in candidates], "preset": args.preset, "repeats": args.repeats}
    if done.get("key") != key:
        done = {"key": key, "seeds": {}}
    for seed in seeds:
        if str(seed) not in done["seeds"]:
            done["seeds"][str(seed)] = run_seed(seed, candidates, args.preset, args.repeats)
            partial.write_text(json.dumps(done) + "\n")
    per_seed = [done["seeds"][str(seed)] for seed in seeds]
    result = {
        "about": "lr_lam and gamma of the bilevel λ method chosen on development seeds, validation split only "
                 "(studies/select_settings.py; rule: highest mean alignment_val wins)",
        "command": "python studies/select_settings.py " + " ".join(sys.argv[1:] if argv is None else argv),
        **_commit(), "preset": args.preset, "seeds": seeds, "split": "val", "metric": "alignment_val",
        "design": args.design,
        "guided_images": per_seed[0]["guided_images"], "candidates": [list(c) for c in candidates],
        "per_seed": per_seed, "summary": summarise(per_seed, candidates, default),
        "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
        "torch_threads": torch.get_num_threads(),
        "timing_note": "wall_s and cpu_s of this invocation (seeds read from a partial file cost nothing here); "
                       "per-candidate wall_s in per_seed",
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    partial.unlink()
    print(markdown(result))
    print(f"\nwinner: {result['summary']['winner']} (default {result['summary']['default']}); "
          f"{result['wall_s']:.0f} s ({result['cpu_s']:.0f} CPU-s); written {args.out}")


if __name__ == "__main__":
    main()
