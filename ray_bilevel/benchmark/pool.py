"""Run independent jobs ``width`` at a time on the local Ray node, results in submission order.

The harness uses it for ``compare.py --concurrent-methods N``: each job is one method's ``tune.Tuner``.
Tune's controller is not thread-safe (two ``Tuner.fit`` threads in one driver failed with "dictionary changed
size during iteration"), so a concurrent job runs in a Ray task of its own, with ``num_cpus=0`` (its trials
hold the cores) and pinned to this node (the jobs write local folders).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["run_ordered"]

J = TypeVar("J")
R = TypeVar("R")


def _call(fn: Callable[[J], R], job: J) -> R:
    return fn(job)


def run_ordered(fn: Callable[[J], R], jobs: Sequence[J], width: int, log: Callable[[str], None] = print,
                describe: Callable[[J], str] = str, done_note: Callable[[R], str] = lambda r: "",
                tick: Callable[[], None] | None = None, tick_s: float = 5.0) -> list[R]:
    """``[fn(job) for job in jobs]`` with up to ``width`` jobs running at once (``width == 1``: in this process,
    in order). An error of a job is raised here, when it is collected. ``fn`` and the jobs must pickle (Ray).
    ``tick`` is called every ``tick_s`` seconds while jobs run at once (the harness echoes their progress)."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}.")
    if width == 1 or len(jobs) < 2:
        return [fn(job) for job in jobs]
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    remote: Any = ray.remote(num_cpus=0, max_retries=0)(_call).options(scheduling_strategy=here)
    done: dict[int, R] = {}
    pending: dict[Any, int] = {}
    queue = list(enumerate(jobs))
    while queue or pending:
        while queue and len(pending) < width:
            i, job = queue.pop(0)
            pending[remote.remote(fn, job)] = i
            log(f"started {describe(job)} ({len(pending)} of {width} slots busy, {len(queue)} waiting)")
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=tick_s if tick is not None else None)
        if tick is not None:
            tick()
        for ref in ready:
            i = pending.pop(ref)
            try:
                result = done[i] = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                # the job's own error (ConfigError, interruption), as width 1 raises it: a RayTaskError's text is
                # the remote traceback, which would turn a one-line ConfigError into one; chained for bugs
                if isinstance(exc.cause, BaseException):
                    raise exc.cause from exc
                raise
            log(f"finished {describe(jobs[i])}{done_note(result)}")
    return [done[i] for i in range(len(jobs))]
