"""``python -m ray_bilevel.benchmark [flags]``: the comparison (the same command as ``ray-bilevel compare``)."""
import sys

from ray_bilevel.benchmark.cli import main

sys.exit(main(prog="python -m ray_bilevel.benchmark"))
