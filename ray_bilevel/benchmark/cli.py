"""The command line of the benchmark harness: ``ray-bilevel compare``, ``python -m ray_bilevel.benchmark`` and
``python benchmarks/compare.py`` are the same command.

    ray-bilevel compare                                   # both tasks, quick preset, local CPU
    ray-bilevel compare --preset smoke --out /tmp/smoke   # seconds-scale check of the whole pipeline
    ray-bilevel compare --task reward_lambda --preset paper --address auto --resources-per-trial cpu=4,gpu=0.5

Writes results.json, results.csv, trials.csv, curves.json, table.md, run_info.json and plots/ into --out and prints
the markdown table last.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline-first: nothing downloads unless asked
# trials checkpoint every iteration; Tune's "snapshotting triggered multiple times" warning is noise here
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

from ray_bilevel.benchmark.methods import GENERIC_METHODS  # noqa: E402
from ray_bilevel.benchmark.runner import TASKS, BenchmarkConfig, IncompleteRunError, run_benchmark  # noqa: E402
from ray_bilevel.cli import parse_key_values  # noqa: E402
from ray_bilevel.config import ConfigError  # noqa: E402
from ray_bilevel.tune.cluster import parse_resources  # noqa: E402

__all__ = ["parse_args", "main", "entry", "FIRST_LOOK"]
PROG = "compare.py"
#: the command without flags: bilevel, the default and the strongest cheap peer (random search at 2 trials), both
#: tasks at the quick preset, no oracle, so that it ends within 20 minutes on 2 cores (README); --full for the rest.
#: Its "bilevel" is each task's supported variant (``BenchmarkSpec.bilevel_method``: bilevel_fork on the noise schedule)
FIRST_LOOK = ("default", "bilevel", "random")
FIRST_LOOK_TRIALS = 2


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> BenchmarkConfig:
    description = __doc__.split("\n\n")[0].replace("The command line",
                                                   "Compare every method on the same task: the command line")
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="all",
                   help="noise_schedule, reward_lambda, all (both; default), or any registered task")
    p.add_argument("--preset", default="quick", choices=("smoke", "quick", "paper"), help="task preset (default quick)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of {','.join(GENERIC_METHODS)} or a task's own baseline (e.g. "
                   "weighted_sum for reward_lambda); default: the task's baselines (quick: the paper's baselines + "
                   "default + bilevel)")
    p.add_argument("--trials", default=None, help="trials per searcher method: a number, or 'paper' for the paper's "
                   "budgets (the space's Bayesian n_calls: 15 noise schedule, 20 lambda); default: the preset's budget")
    p.add_argument("--budget", default=None, metavar="Nx",
                   help="compute budget of every search method in full trainings (one default trial's counted "
                   "compute), e.g. 4x: full-fidelity searchers run 4 trials (each costs exactly one default trial), "
                   "asha starts trials while its cost_flops stays within 4 trainings; replaces --trials")
    p.add_argument("--full", action="store_true",
                   help="the full comparison: the task's baselines (the paper's) and the dense oracle at the preset's "
                   "budgets; without it (and without --methods/--trials/--budget), the quick preset runs the first "
                   f"look: {','.join(FIRST_LOOK)} with {FIRST_LOOK_TRIALS} trials per searcher (bilevel: each task's "
                   "supported variant, bilevel_fork on the noise schedule)")
    p.add_argument("--seed", type=int, default=0, help="seed of every task and searcher (default 0)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2: every method runs once per seed "
                   "(task and searcher seed); the table shows mean ± 95%% interval and paired differences")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join ('auto', host:port, ray://...); default: a private local instance")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the local instance (default: all); ignored with --address")
    p.add_argument("--resources-per-trial", default="cpu=1", help="e.g. cpu=1,gpu=0.5 (default cpu=1)")
    p.add_argument("--storage-path", default=None,
                   help="Tune storage: absolute folder or URI (default: OUT/ray_results)")
    p.add_argument("--out", default="benchmark_results", help="results folder (default ./benchmark_results)")
    p.add_argument("--resume", action="store_true",
                   help="continue interrupted experiments in the storage path (Tuner.restore) and reuse finished "
                   "ones; add --seeds or --methods to extend a run (a search with another --trials runs afresh beside "
                   "the finished one, in NAME-tN; default, bilevel and dense are reused)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="task setting for every trial, e.g. --set eval_samples=500")
    p.add_argument("--budget-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a field of every task's benchmark budget, e.g. --budget-set asha_grace=2 --budget-set "
                   "asha_eta=3 (asha_grace, asha_eta, asha_max_trials, iterations, pbt_interval, max_concurrent; "
                   "defaults in ray_bilevel/space.py's Budget and each task's benchmark.py)")
    p.add_argument("--concurrent-methods", default="auto", metavar="N",
                   help="run up to N methods at once on the Ray instance (default auto: as many as trials fit at once, "
                   "so a single-trial method does not leave cores idle; each method's wall time then includes waiting "
                   "for cores others hold: compare cost by CPU-s; 1: one at a time, each method's wall time its own)")
    p.add_argument("--validation-only", action="store_true",
                   help="stop at the validation-chosen answers: no test-split reporting, no regret (for choosing a "
                   "setting on development seeds >= 100; rows keep their *_val metrics)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2, 3),
                   help="Tune's verbosity (default 1: status tables)")
    a = p.parse_args(argv)
    tasks = list(TASKS) if a.task == "all" else [t.strip() for t in a.task.split(",") if t.strip()]
    methods = [m.strip() for m in a.methods.split(",") if m.strip()] if a.methods else None
    trials: int | str | None = None
    if a.trials is not None:
        if a.trials == "paper":
            trials = "paper"
        elif a.trials.isdigit():
            trials = int(a.trials)
        else:
            raise ConfigError(f"--trials takes a positive integer or 'paper', got {a.trials!r}.")
    if a.budget is not None:
        text = a.budget.strip().lower().removesuffix("x")
        if a.trials is not None:
            raise ConfigError(f"--budget {a.budget} and --trials {a.trials} both set the budget; give one of them.")
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"--budget takes a positive whole number of full trainings such as 4x, got "
                              f"{a.budget!r}.")
        trials = int(text)
    first_look = a.preset == "quick" and not (a.full or methods or a.trials or a.budget)  # the README's main job
    if first_look:
        methods, trials = list(FIRST_LOOK), FIRST_LOOK_TRIALS
    seeds = None
    if a.seeds:
        try:
            seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--seeds takes comma-separated integers such as 0,1,2, got {a.seeds!r}.") from None
    concurrent: int | None = None
    if a.concurrent_methods != "auto":
        if not a.concurrent_methods.isdigit() or int(a.concurrent_methods) < 1:
            raise ConfigError(f"--concurrent-methods takes a positive integer or 'auto', got "
                              f"{a.concurrent_methods!r}.")
        concurrent = int(a.concurrent_methods)
    return BenchmarkConfig(
        tasks=tasks, preset=a.preset, methods=methods, trials=trials, seed=a.seed, seeds=seeds, address=a.address,
        num_cpus=a.num_cpus, resources=parse_resources(a.resources_per_trial), storage_path=a.storage_path,
        out=a.out, resume=a.resume, overrides=parse_key_values(a.set),
        budget_overrides=parse_key_values(a.budget_set, "--budget-set"), verbose=a.verbose, plots=not a.no_plots,
        validation_only=a.validation_only, first_look=first_look,
        concurrent_methods=concurrent,
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the comparison; returns the exit status (2: a bad input, 1: a run that lost trials, 130: interrupted)."""
    name = prog or PROG
    try:
        cfg = parse_args(argv, prog)
        run_benchmark(cfg)
        pictures = sorted(glob.glob(os.path.join(os.path.abspath(cfg.out), "plots", "*_anytime.png")))
        if pictures:  # the picture the story is told by, last, where a newcomer looks
            print("[compare] the anytime curves (test metric of each method's answer vs counted compute): "
                  + ", ".join(pictures), flush=True)
    except ConfigError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except IncompleteRunError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"{name}: interrupted: {exc or 'Ctrl-C'}; finished experiments are kept, rerun with --resume.",
              file=sys.stderr)
        return 130
    return 0




def entry(argv: list[str] | None = None) -> int:
    """The ``ray-bilevel`` console script: ``ray-bilevel compare [flags]`` (``ray-bilevel compare --help``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: ray-bilevel compare [flags]\n\n  compare   every method on the same task, one table "
              "(ray-bilevel compare --help)")
        return 0 if args else 2
    if args[0] != "compare":
        print(f"ray-bilevel: error: unknown command {args[0]!r}; the command is 'compare' (ray-bilevel compare --help)",
              file=sys.stderr)
        return 2
    return main(args[1:], prog="ray-bilevel compare")
