"""Do this machine's cores scale? One training loop alone vs the same loop in N processes at once.

compare.py books cost in CPU-seconds (``time.process_time`` of each trial) and reports utilisation =
Σ CPU-s / (wall × cores). Both assume that a CPU-second buys the same work whether one process runs or N do.
This script measures that assumption on the noise-schedule task's hot loop (score-matching step + AdamW of the
quick U-Net, batch 64, one torch thread per process, as a Ray worker with ``num_cpus=1`` runs it):

* ``solo``: one process runs ``--steps`` steps while nothing else of ours runs;
* ``together``: ``--procs`` processes (default: the CPU count) run the same steps at the same time.

Solo and together alternate for ``--rounds`` rounds. Reported: CPU-s per step in each mode (their ratio is how
much more CPU a step costs when the cores are shared), and the throughput gain = steps per second of all
processes together ÷ steps per second of one alone (N on N independent cores: about N)::

    python studies/core_scaling.py --out docs/benchmarks/core_scaling.json
    python studies/core_scaling.py --render docs/benchmarks/core_scaling.json   # the markdown table
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _loop(steps: int, seed: int, start: Any, out: Any) -> None:
    """``steps`` training steps of the quick U-Net in this process; puts (cpu_s, wall_s) of the steps on ``out``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    from ray_bilevel.diffusion import build_unet, score_matching_loss
    from ray_bilevel.schedules import NoiseSchedule

    torch.manual_seed(seed)
    model = build_unet(16, 1, (16, 32), 1, norm_num_groups=8)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    alphas = NoiseSchedule(T=1000).alphas_cumprod().detach()
    g = torch.Generator().manual_seed(seed)
    x0, t, eps = (
        torch.rand(64, 1, 16, 16, generator=g) * 2 - 1,
        torch.randint(0, 1000, (64,), generator=g),
        torch.randn(64, 1, 16, 16, generator=g),
    )

    def step() -> None:
        loss = score_matching_loss(model, x0, alphas, t=t, noise=eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up (allocator, oneDNN kernels)
        step()
    start.wait()  # every process of a round starts its timed steps together
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    out.put((time.process_time() - c0, time.perf_counter() - w0))


def _round(n: int, steps: int) -> list[tuple[float, float]]:
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_loop, args=(steps, i, start, out)) for i in range(n)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return results


def measure(procs: int, steps: int, rounds: int, log: Any = print) -> dict[str, Any]:
    """Alternate solo and ``procs``-together rounds; returns every (cpu_s, wall_s) and the summary."""
    solo: list[tuple[float, float]] = []
    together: list[list[tuple[float, float]]] = []
    for r in range(rounds):
        solo.append(_round(1, steps)[0])
        together.append(_round(procs, steps))
        log(f"round {r + 1}/{rounds}: solo {solo[-1][1]:.1f} s wall; {procs} together "
            f"{max(w for _, w in together[-1]):.1f} s wall")
    cpu_solo = statistics.median(c for c, _ in solo) / steps
    cpu_tog = statistics.median(c for rnd in together for c, _ in rnd) / steps
    rate_solo = statistics.median(steps / w for _, w in solo)
    rate_tog = statistics.median(procs * steps / max(w for _, w in rnd) for rnd in together)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"command": "python studies/core_scaling.py " + " ".join(sys.argv[1:]), "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}; {platform.platform()}; {os.cpu_count()} CPUs",
            "loop": "score-matching step + AdamW, quick U-Net, batch 64, 1 torch thread",
            "procs": procs, "steps": steps, "rounds": rounds, "solo": solo, "together": together,
            "cpu_s_per_step_solo": cpu_solo, "cpu_s_per_step_together": cpu_tog, "cpu_ratio": cpu_tog / cpu_solo,
            "steps_per_s_solo": rate_solo, "steps_per_s_together": rate_tog, "throughput_gain": rate_tog / rate_solo}


def render(d: dict[str, Any]) -> str:
    """The markdown table of a result of :func:`measure`."""
    lines = [f"`{d['command']}` at commit `{d['commit'][:7]}`, {d['date']}; {d['machine']}; {d['loop']}; "
             f"{d['steps']} steps per process, {d['rounds']} rounds (medians).", "",
             "| mode | processes | CPU-s per step | steps per s (all processes) |", "|---|---|---|---|",
             f"| solo | 1 | {d['cpu_s_per_step_solo']:.4f} | {d['steps_per_s_solo']:.2f} |",
             f"| together | {d['procs']} | {d['cpu_s_per_step_together']:.4f} | {d['steps_per_s_together']:.2f} |", "",
             f"CPU-s per step together / solo: **{d['cpu_ratio']:.2f}**; throughput gain of {d['procs']} processes "
             f"over one: **{d['throughput_gain']:.2f}** (independent cores: {d['procs']})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", type=int, default=os.cpu_count() or 2, help="processes at once (default: the CPU count)")
    p.add_argument("--steps", type=int, default=60, help="timed steps per process and round (default 60)")
    p.add_argument("--rounds", type=int, default=3, help="solo/together rounds (default 3)")
    p.add_argument("--out", default="benchmark_results/core_scaling.json")
    p.add_argument("--render", default=None, metavar="JSON", help="print the markdown table of a saved result and exit")
    a = p.parse_args(argv)
    if a.render:
        print(render(json.loads(Path(a.render).read_text())))
        return 0
    if a.procs < 2 or a.steps < 1 or a.rounds < 1:
        p.error(f"need --procs >= 2, --steps >= 1, --rounds >= 1; got {a.procs}, {a.steps}, {a.rounds}")
    d = measure(a.procs, a.steps, a.rounds)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(d, indent=1) + "\n")
    print(render(d))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
