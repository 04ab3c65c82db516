"""The seeds and splits of the evaluation protocol (docs/algorithms.md §4, "Hand-chosen settings").

Benchmark seeds (0-4) are what ``compare.py`` reports; the test split is read only by reporting. Anything a
method's authors choose by hand (β0's calibration, bilevel step sizes, a searcher's start-up design) is chosen on
**development seeds** (>= :data:`MIN_DEVELOPMENT_SEED`) and the **validation** split only, so that no setting is
shaped by the numbers it is later judged on.
"""
from __future__ import annotations

from collections.abc import Iterable

from ray_bilevel.config import ConfigError

__all__ = ["BENCHMARK_SEEDS", "DEVELOPMENT_SEEDS", "MIN_DEVELOPMENT_SEED", "TUNING_SPLIT", "check_development",
           "parse_seeds"]

#: The seeds compare.py's headline runs report (BENCHMARKS.md).
BENCHMARK_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
#: The smallest development seed: hand-chosen settings are chosen on seeds >= this.
MIN_DEVELOPMENT_SEED = 100
#: The development seeds this project's calibration and setting studies use.
DEVELOPMENT_SEEDS: tuple[int, ...] = (100, 101, 102, 103, 104)
#: The only split a hand choice may read.
TUNING_SPLIT = "val"


def parse_seeds(text: str) -> list[int]:
    """``"100-104"`` or ``"100,101,103"`` (or a mix, ``"100-102,107"``) as a sorted list of distinct seeds."""
    seeds: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            seeds.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ConfigError(f"seeds must look like '100-104' or '100,101', got {text!r}.") from None
    if not seeds:
        raise ConfigError(f"no seeds in {text!r}; give e.g. '100-104'.")
    return sorted(seeds)


def check_development(seeds: Iterable[int], split: str, what: str) -> None:
    """Raise a one-line ConfigError unless ``split`` is the validation split and every seed a development seed."""
    seeds = list(seeds)
    if split != TUNING_SPLIT:
        raise ConfigError(f"{what} must read the {TUNING_SPLIT!r} split only, got split={split!r}; the test split is "
                          "for reporting (docs/algorithms.md §4).")
    bad = [s for s in seeds if s < MIN_DEVELOPMENT_SEED]
    if not seeds or bad:
        raise ConfigError(f"{what} must use development seeds >= {MIN_DEVELOPMENT_SEED}, got {seeds}; benchmark seeds "
                          f"{BENCHMARK_SEEDS[0]}-{BENCHMARK_SEEDS[-1]} are reported, not tuned on (e.g. --seeds "
                          "100-104).")
