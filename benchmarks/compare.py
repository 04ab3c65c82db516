"""Compare the bilevel method with its baselines on the paper's two applications, as Tune experiments.

    python benchmarks/compare.py                                   # both tasks, quick preset, local CPU
    python benchmarks/compare.py --preset smoke --out /tmp/smoke   # seconds-scale check of the whole pipeline
    python benchmarks/compare.py --task reward_lambda --preset paper --address auto --resources-per-trial cpu=4,gpu=0.5

Writes results.json, results.csv, trials.csv, curves.json, table.md, run_info.json and plots/ into
--out and prints the markdown table last. The same command is ``ray-bilevel compare`` and
``python -m ray_bilevel.benchmark``; the logic lives in ``ray_bilevel.benchmark`` (its ``cli`` module).
"""
from __future__ import annotations

import sys

from ray_bilevel.benchmark.cli import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
