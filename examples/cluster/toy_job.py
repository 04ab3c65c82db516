"""A one-minute Ray job that checks a cluster end to end before you spend GPU hours on it.

It runs the bilevel trainable (Algorithm 1) on the analytic toy task (closed-form optimum) with the
same plumbing as ``benchmarks/compare.py``: ``--address``, ``--resources-per-trial``,
``--storage-path``, checkpoints every few iterations, retries from the last checkpoint
(``--max-failures``) and ``--resume``. It prints one line per trial and writes a JSON summary::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python examples/cluster/toy_job.py --address auto --resources-per-trial cpu=1 \\
        --storage-path /mnt/shared/ray_bilevel --out /mnt/shared/ray_bilevel/toy_job.json

Each trial must land within ``1e-2`` of the closed-form optimum x* (exit status 1 otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ray import tune

from ray_bilevel import BilevelTrainable
from ray_bilevel.config import ConfigError
from ray_bilevel.tasks.toy import ToyTask
from ray_bilevel.tune.cluster import (
    check_resources_fit,
    format_resources,
    init_ray,
    parse_resources,
    validate_storage_path,
)

NAME = "toy_job"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default=None, help="None/local: private local Ray; auto or host:port: join a cluster")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a private local instance (ignored on a "
                                                                "cluster)")
    p.add_argument("--resources-per-trial", default="cpu=1", help="e.g. cpu=1,gpu=0.5 (fractional GPUs share a GPU)")
    p.add_argument("--storage-path", default=None, help="absolute shared folder or URI (s3://...) for "
                                                        "results/checkpoints")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one trial per seed")
    p.add_argument("--iterations", type=int, default=40, help="Tune iterations per trial")
    p.add_argument("--max-failures", type=int, default=2, help="retries per trial, each from its last checkpoint")
    p.add_argument("--resume", action="store_true", help="continue the experiment found under --storage-path")
    p.add_argument("--out", default=None, help="write the JSON summary here (absolute path inside a job)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        resources = parse_resources(args.resources_per_trial)
        storage = validate_storage_path(args.storage_path)
        if args.iterations < 1:
            raise ConfigError(f"--iterations must be >= 1, got {args.iterations}.")
        joined = init_ray(args.address, num_cpus=args.num_cpus)
        check_resources_fit(resources)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import ray

    print(f"ray: {joined}; nodes alive: {sum(n['Alive'] for n in ray.nodes())}; "
          f"cluster {ray.cluster_resources()}; per trial {format_resources(resources)}", flush=True)
    trainable = tune.with_resources(BilevelTrainable, resources)
    space = {"task": "toy", "preset": "quick", "seed": tune.grid_search(args.seeds)}
    path = os.path.join(storage or os.path.expanduser("~/ray_results"), NAME)
    start = time.time()
    if args.resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(metric="upper_loss", mode="min"),
            run_config=tune.RunConfig(
                name=NAME,
                storage_path=storage,
                stop={"training_iteration": args.iterations},
                verbose=0,
                checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=5, checkpoint_at_end=True),
                failure_config=tune.FailureConfig(max_failures=args.max_failures),
            ),
        )
    grid = tuner.fit()
    trials, ok = [], not grid.errors
    for result in grid:
        seed = int(result.config["seed"])
        m = result.metrics or {}
        x_star = ToyTask({"seed": seed}).x_star().tolist()
        dist = ((m.get("x0", float("nan")) - x_star[0]) ** 2 + (m.get("x1", float("nan")) - x_star[1]) ** 2) ** 0.5
        ok = ok and dist < 1e-2
        trials.append({"seed": seed, "x0": m.get("x0"), "x1": m.get("x1"), "x_star": x_star, "dist_to_opt": dist,
                       "training_iteration": m.get("training_iteration"), "pid": m.get("pid"),
                       "hostname": m.get("hostname"), "error": None if result.error is None else str(result.error)})
        print(f"seed {seed}: x = ({m.get('x0')}, {m.get('x1')}), |x - x*| = {dist:.2e}, "
              f"iterations {m.get('training_iteration')}, pid {m.get('pid')}", flush=True)
    summary = {"ok": ok, "address": joined, "resources_per_trial": resources, "storage_path": storage,
               "experiment_path": path, "nodes_alive": sum(n["Alive"] for n in ray.nodes()),
               "cluster_resources": ray.cluster_resources(), "wall_s": time.time() - start, "trials": trials}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(summary, fh, indent=2)
    print("OK" if ok else "FAILED: a trial errored or missed x*", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
