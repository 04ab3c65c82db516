"""Learn a diffusion noise schedule with the bilevel trainable, through ``tune.run``.

Application 2 of the paper (Algorithm 6): the lower level trains a U-Net by score matching under the
schedule q = (start, end, tau, eps) (offline default: 16x16 ``mnist5k`` digits, a 160 k-parameter
``diffusers.UNet2DModel``); the upper level minimises the FID of its DDIM samples, estimated by zeroth-order
probes with common random numbers; the penalty network z gives the score-matching part of the hypergradient.
Each Tune iteration is one outer step; the last one runs the final evaluation (Inception ``fid``, classifier
``is``) and the checkpoint holds the learned schedule as a diffusers scheduler config and a sample grid::

    python examples/noise_schedule_tune_run.py --preset smoke       # under a minute, offline, CPU
    python examples/noise_schedule_tune_run.py --preset quick       # ~5-10 minutes on a 2-core CPU
    python examples/noise_schedule_tune_run.py --preset quick --family sigmoid
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ray import tune  # noqa: E402

from ray_bilevel import BilevelTrainable  # noqa: E402
from ray_bilevel.tune.cluster import init_ray  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="quick", choices=["smoke", "quick", "paper"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", default="cosine", choices=["cosine", "sigmoid"])
    p.add_argument("--parameterisation", default="chen2023", choices=["chen2023", "paper"])
    p.add_argument("--iterations-per-step", type=int, default=2,
                   help="outer steps per Tune iteration (each iteration ends with a few seconds of evaluation)")
    p.add_argument("--address", default=None, help="None: private local Ray; 'auto' or host:port: a cluster")
    p.add_argument("--storage-path", default=None, help="absolute folder or URI for results and checkpoints")
    args = p.parse_args(argv)

    config = {"task": "noise_schedule", "preset": args.preset, "seed": args.seed, "family": args.family,
              "parameterisation": args.parameterisation}
    config["iterations_per_step"] = args.iterations_per_step
    config["test_at_end"] = True  # the last report adds the test-split metrics (fid, is, fid_domain)
    init_ray(args.address, num_cpus=None)
    analysis = tune.run(
        BilevelTrainable,
        config=config,
        metric="fid_domain_val",  # select on validation; test values come with test_at_end
        mode="min",
        stop={"done": True},
        storage_path=args.storage_path,
        checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=True),
        verbose=1,
    )
    trial = analysis.trials[0]
    last = trial.last_result
    q = ", ".join(f"{k}={last[k]:.4g}" for k in ("start", "end", "tau", "eps"))
    print(f"\nlearned schedule ({args.family}, {args.parameterisation}): {q} after {last['outer_steps']} outer steps")
    for key in ("fid_domain", "fid", "is", "abar_t250", "abar_t500", "abar_t750", "lower_loss", "samples_seen"):
        if key in last:
            print(f"  {key:12s} {last[key]:.4g}")
    print(f"results: {getattr(trial, 'path', None) or trial.local_path} (checkpoint_*/scheduler/scheduler_config.json, "
          "samples.png)")


if __name__ == "__main__":
    main()
