"""The offline λ problem (docs/reward_lambda.md): the F(λ) sweep with intervals, and the "one λ" calibration.

Two tables, from one run of the default ``reward_lambda`` task (offline digits model; ``upper="stroke_target"``) on
one split and one or more seeds (the per-sample scores of all seeds pooled):

1. **F(λ) sweep.** At the task's 13 dense λ (log-spaced over [0.01, 100]; ``--lams`` for a subset) a guided
   generation on the split's noise (``--split test``, the default without ``--calibrate``:
   ``RewardLambdaTask.test_scores``, the images behind ``evaluate_test``'s un-suffixed ``alignment`` and ``reward``;
   ``--split val``: the validation generation of ``lower_step``, behind ``alignment_val``), mean ± 95 % interval
   (1.96 per-sample standard errors) of r1 (``alignment``, the upper objective) and r2 (ink, ``reward``), the class
   alignment alone, and a verdict: is the best λ interior, and are both neighbours and both
   ends worse beyond the intervals (unpaired: the intervals do not overlap; paired: the 95 % interval of the
   per-sample difference, every λ using the same noise, excludes 0)?
2. **Calibration.** Importance-weighted predictions ``E_{p*_λ}[r1]``, ``E_{p*_λ}[r2]`` (weights softmax(r2/λ) over a
   large pool of pre-trained samples, with their effective sample size) against the guided means of table 1, and
   the β0 of β = β0/λ that matches the guided mean of r2 to the prediction where the prediction is reliable
   (``ess >= --min-ess``; ray_bilevel/tasks/reward_lambda/calibration.py). ``--calibrate`` writes it next to the
   model (``guidance_calibration.json``), where tasks with ``beta0=None`` (the default) read it. β0 is a hand-chosen
   constant of every λ method, so ``--calibrate`` runs on the validation noise and development seeds only (default
   ``--split val --seeds 100-104``; it refuses the test split and seeds < 100, ray_bilevel/protocol.py) and the
   entry records the split, the seeds, the command and the commit. An entry is keyed by the prompt and the reward
   (the model by its folder), so ``--set 'prompt=a handwritten 3'`` or ``--set reward=package.module:function``
   fits its own.
3. **Stroke target.** With ``upper="stroke_target"`` and no ``ink_target`` set, ``--calibrate`` (or
   ``--stroke-target`` alone) first derives the prompt's ``ink_target`` (the 95th percentile of the pre-trained
   samples' ink, ray_bilevel/tasks/reward_lambda/stroke_target.py) from the calibration pool of the development
   seeds and records it next to the model.

Writes a JSON file and prints both markdown tables (last)::

    python tools/lambda_problem.py --preset quick --out results/lambda_problem.json   # seed 0, test noise
    python tools/lambda_problem.py --preset quick --beta0 0.01 --repeats 1 --lams 0.4642-100 --calibrate

Progress (the pool and every λ) is kept in ``<out>.partial.pt``; a run that is stopped (or ends with
``--budget-s``) resumes from it. On a free 2-core CPU the quick run takes about 10 minutes; the quick calibration
above (8 λ × 5 seeds × 32 images, a pool of 2,048) took 37 minutes on 2 cores shared with other jobs.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

Z95 = 1.959963984540054
START = time.perf_counter()


def _mean_se(x: Any) -> tuple[float, float]:
    import torch

    x = torch.as_tensor(x, dtype=torch.float64)
    return float(x.mean()), float(x.std(unbiased=True) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def _task(config: dict[str, Any]) -> Any:
    from ray_bilevel.tasks.reward_lambda import RewardLambdaTask

    return RewardLambdaTask({"task": "reward_lambda", **config})


def _split_scores(task: Any, split: str) -> dict[str, Any]:
    """Per-sample r1, r2 and class alignment of the complete guided generation at the task's λ on ``split``'s noise:
    ``"test"``: ``test_scores`` (reporting); ``"val"``: the validation generation ``lower_step`` makes (tuning)."""
    if split == "test":
        return dict(task.test_scores())
    while not task._generation_complete():
        task.lower_step()
    x, be = task._guided_images(), task.backend
    return {"r1": be.score(be.r1, x), "r2": be.score(be.r2, x), "prompt_alignment": be.score(be.alignment, x)}


def _cat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _select_lams(text: str | None) -> list[float]:
    """The task's dense λ, all (None) or those in ``"LOW-HIGH"`` (inclusive, 0.1 % slack) or a comma list."""
    from ray_bilevel.config import ConfigError
    from ray_bilevel.tasks.reward_lambda import RewardLambdaTask

    lams = [float(p["lam"]) for p in RewardLambdaTask.benchmark.oracle_points(RewardLambdaTask.search_space())]
    if not text:
        return lams
    try:
        if "-" in text.strip("-"):
            lo, hi = (float(v) for v in text.split("-", 1))
            chosen = [lam for lam in lams if lo * 0.999 <= lam <= hi * 1.001]
        else:
            want = [float(v) for v in text.split(",")]
            chosen = [lam for lam in lams if any(math.isclose(lam, w, rel_tol=1e-3) for w in want)]
    except ValueError:
        raise ConfigError(f"--lams must look like '0.4642-100' or '1,2.154,10', got {text!r}.") from None
    if len(chosen) < 2:
        raise ConfigError(f"--lams {text!r} selects {chosen} of the dense λ {[round(v, 4) for v in lams]}; "
                          "choose two or more.")
    return chosen


def run(config: dict[str, Any], pool_size: int, min_ess: float, partial: Path,
        budget_s: float | None = None, seeds: list[int] | None = None, split: str = "test",
        lams: list[float] | None = None) -> dict[str, Any]:
    """Both tables on ``split``'s noise for ``seeds`` (default ``[config["seed"]]`` or 0), per-sample scores pooled
    over the seeds; the pool of pre-trained samples is shared out over the seeds (its own noise, no split)."""
    import torch

    from ray_bilevel.tasks.reward_lambda.calibration import derived_beta0, fit_beta0, tilted_means
    from ray_bilevel.tasks.reward_lambda.generation import stable_seed as _seed

    if split not in ("val", "test"):
        raise SystemExit(f"split must be 'val' or 'test', got {split!r}.")
    seeds = list(seeds) if seeds is not None else [int(config.get("seed", 0))]
    config = {k: v for k, v in config.items() if k != "seed"}
    lams = list(lams) if lams is not None else _select_lams(None)
    state: dict[str, Any] = torch.load(partial, weights_only=False) if partial.is_file() else {}
    run_key = {"config": config, "pool_size": pool_size, "seeds": seeds, "split": split}
    if any(state.get(k) not in (None, v) for k, v in run_key.items()):
        raise SystemExit(f"{partial} belongs to another run ({ {k: state.get(k) for k in run_key} }); "
                         "delete it or choose another --out.")
    state.update(run_key)
    state.setdefault("sweep", {})
    tasks = {s: _task({**config, "seed": s}) for s in seeds}
    task = tasks[seeds[0]]
    c, be = task.cfg, task.backend
    if "pool" not in state:  # pre-trained samples for the importance-weighted predictions (own noise seeds)
        t0 = time.perf_counter()
        parts = []
        for i, s in enumerate(seeds):
            n = pool_size // len(seeds) + (i < pool_size % len(seeds))
            ref = be.reference(n, _seed(c.eval_seed, s, "calibration", "pool"), c.sample_batch)
            parts.append({"r1": ref["r1"], "r2": ref["r2"], "prompt_alignment": be.score(be.alignment, ref["images"])})
        state["pool"] = {**_cat(parts), "wall_s": time.perf_counter() - t0}
        torch.save(state, partial)
        print(f"pool of {pool_size} pre-trained samples: {state['pool']['wall_s']:.0f} s", flush=True)
    if "unguided" not in state:  # the pre-trained samples from the guided generations' own noise (round 0)
        parts = []
        for t in tasks.values():
            z = torch.cat([be.noise(c.guide_batch, t._noise_seed(split, "guide", j)) for j in range(c.repeats)])
            x = be.sample(z, c.sample_batch)
            parts.append({"r1": be.score(be.r1, x), "r2": be.score(be.r2, x),
                          "prompt_alignment": be.score(be.alignment, x)})
        state["unguided"] = _cat(parts)
        torch.save(state, partial)
    pool, unguided = state["pool"], state["unguided"]
    done_here = 0  # λ computed by this invocation (--budget-s stops only after at least one)
    for lam in lams:
        if lam in state["sweep"]:
            continue
        walls = [s["wall_s"] for s in state["sweep"].values()]
        if budget_s is not None and done_here and time.perf_counter() - START + max(walls[-3:]) > budget_s:
            print(f"stopping before λ = {lam:g} (--budget-s {budget_s:g}); run the same command again to resume",
                  flush=True)
            raise SystemExit(3)
        t0 = time.perf_counter()
        parts = []
        for t in tasks.values():
            t.set_hyperparameters({"lam": lam})
            parts.append(_split_scores(t, split))
        scores = _cat(parts)
        state["sweep"][lam] = {"beta": task.beta, **scores, "wall_s": time.perf_counter() - t0}
        torch.save(state, partial)
        done_here += 1
        print(f"lam {lam:8.4g}: r1 {float(scores['r1'].mean()):6.2f}  r2 {float(scores['r2'].mean()):6.2f}  "
              f"({state['sweep'][lam]['wall_s']:.0f} s)", flush=True)

    rows = []
    for lam in lams:
        s = state["sweep"][lam]
        pred = tilted_means(pool["r2"], lam, r1=pool["r1"], prompt_alignment=pool["prompt_alignment"])
        row = {"lam": lam, "beta": s["beta"], "n": len(s["r1"]), "pred_ess": pred["ess"],
               "pred_r1": pred["r1"], "pred_r2": pred["r2"], "pred_prompt_alignment": pred["prompt_alignment"]}
        for key in ("r1", "r2", "prompt_alignment"):
            row[f"{key}_mean"], row[f"{key}_se"] = _mean_se(s[key])
        rows.append(row)

    # the optimum and its margins
    m = [r["r1_mean"] for r in rows]
    best = max(range(len(m)), key=m.__getitem__)
    checks = []
    for j in sorted({best - 1, best + 1, 0, len(m) - 1} - {best}):
        if not 0 <= j < len(m):
            continue
        a, b = rows[best], rows[j]
        d = state["sweep"][lams[best]]["r1"] - state["sweep"][lams[j]]["r1"]
        d_mean, d_se = _mean_se(d)
        checks.append({"lam": b["lam"], "role": "neighbour" if abs(j - best) == 1 else "end",
                       "diff": a["r1_mean"] - b["r1_mean"],
                       "unpaired": a["r1_mean"] - Z95 * a["r1_se"] > b["r1_mean"] + Z95 * b["r1_se"],
                       "paired_low": d_mean - Z95 * d_se, "paired": d_mean - Z95 * d_se > 0})
    verdict = {"best_lam": rows[best]["lam"], "interior": 0 < best < len(m) - 1,
               "unpaired_all": all(ch["unpaired"] for ch in checks), "paired_all": all(ch["paired"] for ch in checks),
               "checks": checks}
    # where the closed form puts the optimum: argmax of the importance-weighted E_{p*_λ}[r1] on a fine λ grid
    fine = [math.exp(math.log(0.1) + i * (math.log(100.0) - math.log(0.1)) / 120) for i in range(121)]
    pred_f = [tilted_means(pool["r2"], lam, r1=pool["r1"]) for lam in fine]
    k = max(range(len(fine)), key=lambda i: pred_f[i]["r1"])
    verdict["closed_form_best_lam"] = fine[k]
    verdict["closed_form_best_r1"] = pred_f[k]["r1"]
    verdict["closed_form_best_ess"] = pred_f[k]["ess"]

    # calibration: β0 of β = β0/λ matching the guided mean of r2 to E_{p*_λ}[r2] where ess >= min_ess. Matched as
    # shifts from the unguided mean (guided: the same test noise unguided; predicted: the pool mean), so that the
    # two sample sets' different means do not enter the fit
    ok = [r for r in rows if r["pred_ess"] >= min_ess]
    m0, p0 = float(unguided["r2"].mean()), float(pool["r2"].mean())
    beta0_fit, per_lam = fit_beta0([r["beta"] for r in rows], [r["r2_mean"] - m0 for r in rows],
                                   [r["lam"] for r in ok], [r["pred_r2"] - p0 for r in ok])
    calibration = {"beta0_used": task.beta0, "beta0_source": task.beta0_source, "beta0_fit": beta0_fit,
                   "fit_per_lam": per_lam, "min_ess": min_ess,
                   "beta0_derived": derived_beta0(c.y_star, float(pool["r2"].mean())),
                   "pool_r2_mean": float(pool["r2"].mean()), "pool_r2_std": float(pool["r2"].std()),
                   "pool_r1_mean": float(pool["r1"].mean()),
                   "unguided_r1_mean": float(unguided["r1"].mean()), "unguided_r2_mean": m0,
                   "pool_corr_r1_r2": float(torch.corrcoef(torch.stack([pool["r1"], pool["r2"]]))[0, 1])}
    from ray_bilevel.tasks.reward_lambda.user_scores import spec_name

    return {"config": config, "settings": {**{k: getattr(c, k) for k in (
                "ink_target", "ink_scale", "alignment", "prompt", "steps", "rounds", "guide_batch",
                "repeats", "y_star", "target", "reduction", "cfg_scale", "eval_seed")},
                "upper": spec_name(c.upper), "reward": spec_name(c.reward), "ink_target_source": task.ink_target_source,
                "split": split, "seeds": seeds},
            "pool_size": pool_size, "rows": rows, "verdict": verdict, "calibration": calibration,
            "wall_s": pool["wall_s"] + sum(state["sweep"][lam]["wall_s"] for lam in lams)}


def markdown(result: dict[str, Any]) -> str:
    rows, v, cal = result["rows"], result["verdict"], result["calibration"]
    s = result["settings"]
    n = rows[0]["n"]
    lines = [f"F(λ) = −E[r1] on guided {'test' if s['split'] == 'test' else 'validation'} samples ({n} per λ from "
             f"seeds {', '.join(map(str, s['seeds']))}, same noise for every λ), r1 = {s['upper']} "
             f"(ink_target {s['ink_target']:g}, ink_scale {s['ink_scale']:g}), β = β0/λ with β0 = "
             f"{cal['beta0_used']:.4g} ({cal['beta0_source']}); mean ± 1.96 SE:", "",
             "| λ | β | r1 = `alignment` | r2 = `reward` (ink) | class alignment | predicted r1 | predicted r2 | ESS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " **best**" if r["lam"] == v["best_lam"] else ""
        lines.append(f"| {r['lam']:.4g}{mark} | {r['beta']:.3g} | {r['r1_mean']:.1f} ± {Z95 * r['r1_se']:.1f} | "
                     f"{r['r2_mean']:.1f} ± {Z95 * r['r2_se']:.1f} | {r['prompt_alignment_mean']:.1f} | "
                     f"{r['pred_r1']:.1f} | {r['pred_r2']:.1f} | {r['pred_ess']:.0f} |")
    lines += ["", f"Best λ = {v['best_lam']:.4g} (interior: {v['interior']}); closed-form optimum (argmax of the "
              f"importance-weighted E_p*λ[r1], pool of {result['pool_size']}): λ = {v['closed_form_best_lam']:.3g} "
              f"(predicted r1 {v['closed_form_best_r1']:.1f}, ESS {v['closed_form_best_ess']:.0f}).", "",
              "| compared with | λ | r1(best) − r1(λ) | intervals disjoint | paired 95 % lower bound | worse (paired) "
              "|",
              "|---|---|---|---|---|---|"]
    for ch in v["checks"]:
        lines.append(f"| {ch['role']} | {ch['lam']:.4g} | {ch['diff']:.1f} | {ch['unpaired']} | "
                     f"{ch['paired_low']:.1f} | {ch['paired']} |")
    lines += ["", f"Calibration (pool of {result['pool_size']} pre-trained samples; r1 mean {cal['pool_r1_mean']:.1f}, "
              f"r2 mean {cal['pool_r2_mean']:.2f} ± {cal['pool_r2_std']:.2f} sd, corr(r1, r2) "
              f"{cal['pool_corr_r1_r2']:.2f}; the guided samples' own noise unguided: r1 "
              f"{cal['unguided_r1_mean']:.1f}, "
              f"r2 {cal['unguided_r2_mean']:.2f}). Fit on shifts from the unguided means: β0 used "
              f"{cal['beta0_used']:.4g}, refit {cal['beta0_fit']:.4g} "
              f"(per λ: {', '.join(f'{lam:.3g}: {b:.4g}' for lam, b in cal['fit_per_lam'].items())}; ESS ≥ "
              f"{cal['min_ess']:g}), first-order derivation 1/(y* − E[r2]) = {cal['beta0_derived']:.4g}.", "",
              "Δ = measured − predicted; Δ shift = (measured − unguided on the same noise) − (predicted − pool mean), "
              "the same comparison without the difference between the two sample sets' means.", "",
              "| λ | ESS | predicted r2 | measured r2 | Δ r2 | Δ shift r2 | predicted r1 | measured r1 | Δ r1 | Δ "
              "shift r1 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["pred_ess"] < 2:
            continue
        flag = "" if r["pred_ess"] >= cal["min_ess"] else " (low ESS)"
        d2, d1 = r["r2_mean"] - r["pred_r2"], r["r1_mean"] - r["pred_r1"]
        s2 = d2 - (cal["unguided_r2_mean"] - cal["pool_r2_mean"])
        s1 = d1 - (cal["unguided_r1_mean"] - cal["pool_r1_mean"])
        lines.append(f"| {r['lam']:.4g}{flag} | {r['pred_ess']:.0f} | {r['pred_r2']:.2f} | {r['r2_mean']:.2f} ± "
                     f"{Z95 * r['r2_se']:.2f} | {d2:+.2f} | {s2:+.2f} | {r['pred_r1']:.1f} | "
                     f"{r['r1_mean']:.1f} ± {Z95 * r['r1_se']:.1f} | {d1:+.1f} | {s1:+.1f} |")
    return "\n".join(lines)


#: What a calibration entry's numbers mean (written with every entry).
NOTE = ("least-squares fit of the guided mean ink (shift from the unguided mean on the same noise) to the "
        "importance-weighted prediction over lambda with ESS >= min_ess; guided samples from the validation noise of "
        "the development seeds in fitted_on (never the test split or a benchmark seed); fit_per_lam: exact inversion "
        "per lambda; wall_s: seconds of the pool and the lambda sweep")


def _commit() -> dict[str, Any]:
    """The commit this checkout is at, and whether its work tree had changes (``commit`` None outside git)."""
    from ray_bilevel.benchmark.outputs import git_commit

    here = Path(__file__).resolve().parent
    info = git_commit(str(here), exclude=str(here.parent / "results"))
    return {"commit": info["sha"], "worktree_dirty": info["dirty"]}


def write_calibration_entry(result: dict[str, Any], command: str) -> Path:
    import torch

    from ray_bilevel.tasks.reward_lambda.calibration import calibration_path, write_calibration

    s, cal = result["settings"], result["calibration"]
    task = _task(result["config"])
    path = calibration_path(task.cfg.model_path)
    entry = {
        "conditions": {k: s[k] for k in ("prompt", "reward", "y_star", "target", "reduction", "cfg_scale", "steps")},
        "beta0": round(cal["beta0_fit"], 6),
        "provenance": {
            "fitted_on": {k: s[k] for k in ("prompt", "alignment", "upper", "steps", "rounds", "guide_batch", "repeats",
                                            "eval_seed", "split", "seeds")},
            "probe_beta0": cal["beta0_used"], "fit_per_lam": {f"{k:.6g}": v for k, v in cal["fit_per_lam"].items()},
            "min_ess": cal["min_ess"], "pool_size": result["pool_size"], "guided_per_lam": result["rows"][0]["n"],
            "beta0_derived_first_order": cal["beta0_derived"], "pool_r2_mean": cal["pool_r2_mean"],
            "command": command, **_commit(), "wall_s": round(result["wall_s"], 1),
            "date": datetime.date.today().isoformat(), "torch": torch.__version__, "note": NOTE},
    }
    write_calibration(path, entry)
    return path


def stroke_target_record(config: dict[str, Any], seeds: list[int], pool_size: int, command: str) -> dict[str, Any]:
    """The prompt's ``ink_target`` from the calibration pool of pre-trained samples of the development ``seeds`` (the
    pool :func:`run` draws: its own noise, never the test split), as a record of the model's calibration file."""
    import torch

    from ray_bilevel.metrics.rewards import InkReward
    from ray_bilevel.tasks.reward_lambda.calibration import PROBE_BETA0
    from ray_bilevel.tasks.reward_lambda.generation import stable_seed as _seed
    from ray_bilevel.tasks.reward_lambda.stroke_target import STROKE_QUANTILE, derive_ink_target

    base = {k: v for k, v in config.items() if k != "seed"}
    # unguided samples only: the upper score and β0 play no part, so neither needs a record yet
    task = _task({**base, "seed": seeds[0], "upper": "alignment", "ink_target": None,
                  "beta0": base.get("beta0") if base.get("beta0") is not None else PROBE_BETA0})
    c, be, ink = task.cfg, task.backend, InkReward()
    values = []
    for i, s in enumerate(seeds):
        n = pool_size // len(seeds) + (i < pool_size % len(seeds))
        values.append(ink(be.reference(n, _seed(c.eval_seed, s, "calibration", "pool"), c.sample_batch)["images"]))
    d = derive_ink_target(torch.cat(values))
    return {"conditions": {"prompt": c.prompt, "steps": c.steps, "cfg_scale": c.cfg_scale},
            "ink_target": d["ink_target"], "n": int(d["n"]),
            "provenance": {"fitted_on": {"seeds": seeds, "noise": "calibration_pool", "eval_seed": c.eval_seed},
                           "rule": f"round(quantile_{STROKE_QUANTILE:g}(ink of pre-trained samples))",
                           "ink_q95": d["ink_q95"], "ink_mean": d["ink_mean"], "ink_sd": d["ink_sd"],
                           "pool_size": pool_size, "command": command, **_commit(),
                           "date": datetime.date.today().isoformat(), "torch": torch.__version__}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick")
    p.add_argument("--seeds", default=None,
                   help="seeds whose noise is used, e.g. 100-104 (default: 0; with --calibrate: 100-104, development "
                        "seeds only)")
    p.add_argument("--split", choices=("val", "test"), default=None,
                   help="the guided generations' noise (default: test; with --calibrate: val, the only one allowed)")
    p.add_argument("--lams", default=None, help="a subset of the 13 dense λ: LOW-HIGH or a comma list (default: all)")
    p.add_argument("--repeats", type=int, default=None,
                   help="guided batches per λ (default: the preset's; quick: 3 batches of 32 images)")
    p.add_argument("--pool", type=int, default=2048, help="pre-trained samples for the importance-weighted predictions")
    p.add_argument("--min-ess", type=float, default=100.0, help="predictions with a smaller ESS are not fitted")
    p.add_argument("--beta0", type=float, default=None, help="probe β0 (default: the model's calibration)")
    p.add_argument("--calibrate", action="store_true", help="write the refitted β0 next to the model")
    p.add_argument("--stroke-target", action="store_true",
                   help="only derive the prompt's ink_target (upper='stroke_target') and write it next to the model")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a task setting (repeatable)")
    p.add_argument("--out", type=Path, default=Path("results/lambda_problem.json"))
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop (exit code 3) before a λ that would end after this many seconds; rerun to resume")
    args = p.parse_args(argv)
    from ray_bilevel.cli import parse_key_values
    from ray_bilevel.config import ConfigError
    from ray_bilevel.protocol import DEVELOPMENT_SEEDS, check_development, parse_seeds

    fitting = args.calibrate or args.stroke_target
    split = args.split or ("val" if fitting else "test")
    config: dict[str, Any] = {"preset": args.preset, **parse_key_values(args.set)}
    try:
        seeds = parse_seeds(args.seeds) if args.seeds else (list(DEVELOPMENT_SEEDS) if fitting else [0])
        if fitting:  # β0 and the stroke target are hand choices: development seeds and the validation split only
            check_development(seeds, split, "--calibrate" if args.calibrate else "--stroke-target")
        lams = _select_lams(args.lams)
    except ConfigError as exc:
        p.error(str(exc))
    if "seed" in config:
        p.error(f"--set seed={config['seed']}: give the seeds with --seeds instead.")
    if args.repeats is not None:
        config["repeats"] = args.repeats
    if args.beta0 is not None:
        config["beta0"] = args.beta0
    command = "python tools/lambda_problem.py " + " ".join(sys.argv[1:] if argv is None else argv)
    from ray_bilevel.config import resolve
    from ray_bilevel.tasks.reward_lambda.settings import PRESETS, RewardLambdaSettings

    settings = resolve(RewardLambdaSettings, PRESETS, config)
    if fitting and settings.upper == "stroke_target" and settings.ink_target is None:
        from ray_bilevel.tasks.reward_lambda.calibration import calibration_path
        from ray_bilevel.tasks.reward_lambda.stroke_target import write_stroke_target

        record = stroke_target_record(config, seeds, args.pool, command)
        target_path = calibration_path(settings.model_path or None)
        write_stroke_target(target_path, record)
        print(f"stroke target for {record['conditions']['prompt']!r}: ink_target = {record['ink_target']:g} "
              f"(q0.95 {record['provenance']['ink_q95']:.2f}); written to {target_path}", flush=True)
    if args.stroke_target and not args.calibrate:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial.pt")
    result = run(config, args.pool, args.min_ess, partial, args.budget_s, seeds=seeds, split=split, lams=lams)
    result["command"] = command
    if args.calibrate:
        result["calibration"]["written_to"] = str(write_calibration_entry(result, command))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nwritten {args.out}" + (f"; calibration {result['calibration']['written_to']}" if args.calibrate else ""))


if __name__ == "__main__":
    main()
