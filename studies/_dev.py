"""What the studies that set a hand choice share (docs/algorithms.md §4, "Hand-chosen settings"): development seeds
and the validation split only (:func:`ray_bilevel.protocol.check_development`), the commit they started at, and a
noise-schedule network trained on the default schedule to a fraction of its budget."""
from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def start(seed: int, what: str) -> str | None:
    """Refuse a benchmark seed (a ``SystemExit`` naming the fix), then the commit the study starts at (``+dirty`` when
    tracked files differ): what ran, not what the tree became while it ran."""
    from ray_bilevel.benchmark.outputs import git_commit
    from ray_bilevel.config import ConfigError
    from ray_bilevel.protocol import check_development

    try:
        check_development([seed], "val", what)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    info = git_commit(str(ROOT))
    return None if info["sha"] is None else info["sha"][:7] + ("+dirty" if info["dirty"] else "")


def trained_noise_schedule(preset: str, seed: int, fraction: float, **extra: Any) -> tuple[Any, int]:
    """A noise-schedule task (``extra`` settings on top of ``preset``) whose network has taken ``fraction`` of its
    lower-level budget on the default schedule; returns (task, steps taken)."""
    from ray_bilevel.tasks import get_task

    task = get_task("noise_schedule")({"task": "noise_schedule", "preset": preset, "seed": seed, **extra})
    steps = round(fraction * task.lower_budget)
    for _ in range(steps):
        task.lower_step()
    return task, steps


def run_or_render(run: Any, render: Any, out: Path, render_only: bool) -> None:
    """Run the study (``run() -> dict``) and write its JSON to ``out`` unless ``render_only``; print ``render`` of
    what ``out`` holds."""
    import json
    import warnings

    if not render_only:
        warnings.filterwarnings("ignore", message="FID with")
        result = run()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    print(render(json.loads(out.read_text())))


def parser(doc: str | None, out: str) -> Any:
    """The options every such study has: ``--preset``, ``--seed`` (a development seed), ``--out`` (its JSON,
    default ``out``) and ``--render-only``; the study adds its own."""
    import argparse

    p = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--seed", type=int, default=100, help="a development seed (>= 100)")
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--render-only", action="store_true", help="print the table of --out and exit")
    return p


def schedule_options(p: Any, move: str) -> None:
    """The options of a study that moves noise-schedule coordinates on several development seeds: ``--seeds``,
    ``--names``, ``--h`` / ``--h-per`` (``move`` says what h is), ``--base``, ``--jobs``, ``--override``."""
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="development seeds (>= 100); default --seed")
    p.add_argument("--names", nargs="+", default=["start", "end", "tau"],
                   help="coordinates to move (eps moves the cosine like start: docs/studies/zo_snr)")
    p.add_argument("--h", type=float, default=0.1, help=f"{move} of every coordinate")
    p.add_argument("--h-per", default="{}", help='JSON of per-coordinate values of h, e.g. {"tau": 0.2}')
    p.add_argument("--base", default="{}", help="JSON of the base schedule (default: the task's default)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once (one process and core each)")
    p.add_argument("--override", default="{}", help="JSON of extra task settings")


def map_seeds(fn: Any, jobs: list[tuple[Any, ...]], workers: int) -> list[Any]:
    """``fn(*job)`` for every job (one per seed), ``workers`` processes at once (1: in this process)."""
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(fn, *zip(*jobs)))
    return [fn(*job) for job in jobs]


def schedule_args(args: Any, what: str) -> tuple[str | None, dict[str, float], dict[str, Any], dict[str, Any]]:
    """Check every seed of ``args`` (options of :func:`schedule_options`) is a development seed; return the commit,
    the move h per coordinate, the base schedule and the extra task settings."""
    import json

    commit = None
    for seed in args.seeds:
        commit = start(seed, what)
    h = {name: args.h for name in args.names} | json.loads(args.h_per)
    return commit, h, json.loads(args.base), json.loads(args.override)


def schedule_maker(preset: str, seed: int, override: dict[str, Any]) -> Any:
    """``fresh(q)``: a new noise-schedule task of ``preset`` and ``seed`` (``override`` settings) at the schedule
    ``q``, in a process set to one torch thread (a study's worker owns one core)."""
    import torch

    from ray_bilevel.tasks import get_task

    torch.set_num_threads(1)
    config = {"task": "noise_schedule", "preset": preset, "seed": seed, **override}

    def fresh(q: dict[str, float]) -> Any:
        task = get_task("noise_schedule")(config)
        task.set_hyperparameters(q)
        return task

    return fresh
