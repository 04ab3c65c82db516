"""Join results folders of ``benchmarks/compare.py`` that ran different seeds into one multi-seed folder.

    python benchmarks/compare.py --task noise_schedule --seeds 0 --out results/ns_seed0    # today, machine A
    python benchmarks/compare.py --task noise_schedule --seeds 1 --out results/ns_seed1    # tomorrow, machine B
    python benchmarks/merge_runs.py results/ns_seed0 results/ns_seed1 --out results/ns     # one 2-seed report

The joined folder holds what one ``compare.py --seeds 0,1`` run writes (results, summary with intervals and paired
differences over every seed, curves, trials, table.md, summary plots); its run_info.json names every part's command
and commit, which ``benchmarks/benchmarks_md.py`` prints. The parts must be one study: the same task, preset and
per-method settings, and no (task, method, seed) twice (:mod:`ray_bilevel.benchmark.merge`).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from ray_bilevel.benchmark.merge import merge_runs  # noqa: E402
from ray_bilevel.config import ConfigError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    head, body = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(description=head, epilog=body, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("parts", nargs="+", help="results folders written by benchmarks/compare.py --seeds ... --out")
    p.add_argument("--out", required=True, help="the joined folder (not one of the parts)")
    p.add_argument("--no-plots", action="store_true", help="skip the summary plots")
    a = p.parse_args(argv)
    try:
        table = merge_runs(a.parts, a.out, plots=not a.no_plots)
    except ConfigError as exc:
        print(f"merge_runs.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"[merge] joined {len(a.parts)} part(s) into {a.out}\n", flush=True)
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
