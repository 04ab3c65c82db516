"""Learn the entropy strength λ of reward-guided sampling with the bilevel trainable, through ``tune.run``.

Application 1 of the paper (Algorithms 2 and 5): the lower level tilts the pre-trained model towards a
reward r2 (offline default: stroke ink of a class-conditional MNIST U-Net shipped with the package); the upper
level maximises r1 = 100 · p_classifier(prompt digit | x) · exp(−½((ink − 18)/3)²), "a recognisable digit at
the target stroke weight" (``upper="alignment"`` keeps the paper's prompt alignment alone). Too little guidance
misses the stroke weight, too much makes the digits unrecognisable, so the best λ is interior (about 2 at the
quick preset; docs/reward_lambda.md). Each Tune iteration is one λ step from pre-trained samples (closed-form
hypergradient); the last one generates the guided images at the learned λ (guidance strength β0/λ, β0
calibrated so that the sampler draws the tilted distribution the hypergradient differentiates) and reports
``alignment`` (the mean of r1), ``prompt_alignment``, ``reward``, ``fid`` and ``fid_domain``::

    python examples/reward_lambda_tune_run.py --preset smoke           # seconds-to-a-minute, offline, CPU
    python examples/reward_lambda_tune_run.py --preset quick --lam 5   # a few minutes on a 2-core CPU
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
    p.add_argument("--prompt", default=None, help='e.g. "a handwritten seven" (offline model: any digit 0-9)')
    p.add_argument("--lam", type=float, default=None, help="initial λ (default: the preset's, 5.0)")
    p.add_argument("--address", default=None, help="None: private local Ray; 'auto' or host:port: a cluster")
    p.add_argument("--storage-path", default=None, help="absolute folder or URI for results and checkpoints")
    args = p.parse_args(argv)

    config = {"task": "reward_lambda", "preset": args.preset, "seed": args.seed, "test_at_end": True}
    if args.prompt is not None:
        config["prompt"] = args.prompt
    if args.lam is not None:
        config["lam"] = args.lam
    init_ray(args.address, num_cpus=None)
    analysis = tune.run(
        BilevelTrainable,
        config=config,
        metric="alignment_val",  # select on validation; test values come with test_at_end
        mode="max",
        storage_path=args.storage_path,
        checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=True),
        verbose=1,
    )
    trial = analysis.trials[0]
    last = trial.last_result
    print(f"\nlearned lam = {last['lam']:.4g} after {last['outer_steps']} λ steps")
    for key in ("alignment", "prompt_alignment", "reward", "fid", "fid_domain", "fid_domain_real",
                "alignment_pretrained", "reward_pretrained"):
        if key in last:
            print(f"  {key:22s} {last[key]:.4g}")
    print(f"results (progress.csv has the λ trajectory): {trial.path}")


if __name__ == "__main__":
    main()
