"""Application 2 benchmark: bilevel noise-schedule learning (Algorithm 6) vs the DDIM-default schedule.

Both runs use the same task (data, U-Net, seeds, y's data/t/eps stream, evaluation noise and evaluator)
through the Task protocol exactly as the Tune trainables do, in this process and without Ray, so the wall
times measure the methods and not the scheduler:

* ``default`` — ``lower_step`` ``lower_budget`` times at the DDIM-default cosine (0, 1, 1, 0.008);
* ``bilevel`` — ``hyper_step`` ``outer_budget`` times (the same number of lower-level steps, plus the penalty
  network, the zeroth-order FID probes and the schedule steps).

Each then runs ``evaluate_test()`` (test split; ``_val`` twins on validation): ``fid_domain`` (digit-classifier
features, ``eval_samples`` samples),
Inception ``fid`` and classifier ``is`` (``final_samples`` samples). ``train_s`` is the method's wall time
(what the 2x target is about); ``eval_s`` the final evaluation. Output: a JSON file and a markdown table::

    OMP_NUM_THREADS=1 python studies/noise_schedule_bench.py --preset quick --out results/noise_schedule_bench.json
    python studies/noise_schedule_bench.py --preset smoke --out /tmp/ns_smoke.json      # plumbing, a minute
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPORT_KEYS = ("fid_domain", "fid", "is", "start", "end", "tau", "eps")


def run_trial(config: dict[str, Any], bilevel: bool, export_dir: Path | None = None) -> dict[str, Any]:
    """One trial: train (bilevel or fixed schedule), then the final evaluation; wall times of both."""
    from ray_bilevel.tasks.noise_schedule import NoiseScheduleTask

    task = NoiseScheduleTask({"task": "noise_schedule", **config})
    steps: list[dict[str, float]] = []
    t0 = time.perf_counter()
    if bilevel:
        for k in range(task.outer_budget):
            r = task.hyper_step()
            steps.append({"outer_step": k + 1, **{a: float(b) for a, b in r.items()}, **task.hyperparameters()})
            if r.get("warmup", 0.0) == 0.0:
                print(f"    outer {k + 1:3d}/{task.outer_budget}  q={_fmt(task.hyperparameters())}  "
                      f"|g|={r['hypergrad_norm']:.3g}  fid_zo={r.get('fid_domain_zo', float('nan')):.1f}  "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    else:
        for _ in range(task.lower_budget):
            task.lower_step()
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    # the validation evaluation, then the reporting protocol: test values (un-suffixed) and their _val twins
    report = {k: float(v) for k, v in {**task.evaluate(final=True), **task.evaluate_test()}.items()}
    eval_s = time.perf_counter() - t1
    report.update(task.hyperparameters())
    if export_dir is not None:
        task.export(str(export_dir))
        import torch

        torch.save(task.state_dict(), export_dir / "task_state.pt")  # reload with NoiseScheduleTask.load_state_dict
    out = {"config": config, "report": report, "train_s": train_s, "eval_s": eval_s,
           "lower_steps": task.lower_steps, "outer_steps": task.outer_done, "steps": steps}
    print(f"  {'bilevel' if bilevel else 'default':8s} "
          f"{json.dumps({k: round(report[k], 4) for k in REPORT_KEYS if k in report})} "
          f"(train {train_s:.0f} s, eval {eval_s:.0f} s)", flush=True)
    return out


def _fmt(q: dict[str, float]) -> str:
    return "(" + ", ".join(f"{q[k]:.4g}" for k in ("start", "end", "tau", "eps")) + ")"


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        info["loadavg_1m"] = os.getloadavg()[0]
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    return info


def markdown(result: dict[str, Any]) -> str:
    cols = ("fid_domain", "fid", "is")
    lines = ["| method | schedule (start, end, tau, eps) | " + " | ".join(cols) + " | train s | eval s |",
             "|" + "---|" * (len(cols) + 4)]
    for name in ("default", "bilevel"):
        t = result["runs"].get(name)
        if t is None:
            continue
        r = t["report"]
        vals = " | ".join(f"{r[c]:.2f}" if c in r else "–" for c in cols)
        lines.append(f"| {name} | {_fmt(r)} | {vals} | {t['train_s']:.0f} | {t['eval_s']:.0f} |")
    if "ratios" in result:
        x = result["ratios"]
        lines.append("")
        lines.append(f"bilevel / default: fid_domain x{x['fid_domain']:.3f}, fid x{x['fid']:.3f}, "
                     f"train wall time x{x['train_s']:.2f} (target: fid <= 0.7x at <= 2x time)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="quick", choices=["smoke", "quick", "paper"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["default", "bilevel"], default=None, help="run one method only")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="task setting overrides for both runs, e.g. --set zo_directions=2 (JSON values)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--export", type=Path, default=None,
                   help="folder for each run's schedule JSON, sample grid and task state (task_state.pt)")
    p.add_argument("--out", type=Path, default=Path("results/noise_schedule_bench.json"))
    args = p.parse_args(argv)
    from ray_bilevel.cli import parse_key_values
    from ray_bilevel.config import ConfigError

    try:
        overrides = parse_key_values(args.set)
    except ConfigError as exc:
        p.error(str(exc))

    import torch

    torch.set_num_threads(args.threads)
    base = {"preset": args.preset, "seed": args.seed, **overrides}
    result: dict[str, Any] = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "machine": machine(),
                              "preset": args.preset, "seed": args.seed, "overrides": overrides, "runs": {}}
    t0 = time.perf_counter()
    for name in ("default", "bilevel"):
        if args.only not in (None, name):
            continue
        print(f"{name}:", flush=True)
        export = args.export / name if args.export is not None else None
        result["runs"][name] = run_trial(base, bilevel=name == "bilevel", export_dir=export)
    runs = result["runs"]
    if len(runs) == 2:
        d, b = runs["default"], runs["bilevel"]
        result["ratios"] = {"fid_domain": b["report"]["fid_domain"] / d["report"]["fid_domain"],
                            "fid": b["report"]["fid"] / d["report"]["fid"],
                            "train_s": b["train_s"] / d["train_s"]}
    result["total_wall_s"] = time.perf_counter() - t0
    result["machine"]["loadavg_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out} ({result['total_wall_s']:.0f} s)\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
