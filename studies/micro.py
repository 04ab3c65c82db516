"""Micro-benchmarks of the hot loops, old (a git revision) vs new (the package as checked out), side by side.

Every comparison runs in ONE process, alternating old/new (ABBA order) for ``--reps`` repetitions after a
warm-up, and reports the median times, their ratio new/old and whether the values are equal (bitwise, or
the max abs / rel difference). The old side is read from git, not kept as a second copy in the tree: the
``_old_*`` functions are those of ``benchmarks/_micro_reference.py`` at commit :data:`REFERENCE_REV` (``git show
REFERENCE_REV:benchmarks/_micro_reference.py``, executed as the module ``_micro_reference``), verbatim copies of
the package's hot paths as they were before this optimisation pass (argument validation trimmed), so the
comparison stays valid after the package changed. It needs a git checkout of this repository.

Loops (the noise-schedule task's shapes, one torch thread: what a Ray worker with ``num_cpus=1`` gets,
since Ray sets ``OMP_NUM_THREADS=1`` there; measured: ``torch.get_num_threads() == 1`` in a Ray task/actor):

* ``train``     score-matching step of the U-Net (16 px, (16, 32), 1 layer/block, 8 groups, batch 64) + AdamW;
* ``ddim96``, ``ddim500`` (``ddim`` = both): ``ddim_sample``, 20 steps, 96 samples (a ZO probe) and 500 samples
  (the evaluator), and the sampler's own per-step arithmetic with a trivial epsilon-model (``ddim_overhead``);
* ``digit``     domain feature pass (``digit_extractor``), 500 images 16 px;
* ``inception`` Inception pool3 feature pass, 64 images 16 px;
* ``fid``       ``FIDEvaluator.__call__`` on fixed features (a pass-through extractor) against fixed real
  statistics: 64-d (96 and 500 fakes vs 1,000 reals) and 2048-d (500 fakes vs 1,000 reals, no shrinkage;
  96 fakes vs 192 reals, Ledoit-Wolf, as in the reward-lambda benchmark).

Candidate changes that were measured and rejected are reported as extra rows (``candidate`` column).
``torch.compile`` rows need ``--compile`` (minutes of compile time)::

    nice -n 5 python studies/micro.py                                # all loops (about 6 minutes)
    nice -n 5 python studies/micro.py --loops ddim500 --merge        # re-measure one loop into the same JSON
    nice -n 5 python studies/micro.py --loops train,ddim96 --compile --compile-only --merge  # compile rows only
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

LOOPS = ("train", "ddim96", "ddim500", "digit", "inception", "fid")


#: The commit whose ``benchmarks/_micro_reference.py`` holds the old side (the last one that has the file).
REFERENCE_REV = "651345ae17c2397cfdcce404c19b371dfba73376"
REFERENCE_PATH = "benchmarks/_micro_reference.py"


def _load_reference() -> types.ModuleType:
    """``REFERENCE_PATH`` at ``REFERENCE_REV``, read with ``git show`` and executed as ``_micro_reference``."""
    root = Path(__file__).resolve().parents[1]
    try:
        source = subprocess.run(["git", "show", f"{REFERENCE_REV}:{REFERENCE_PATH}"], cwd=root, capture_output=True,
                                text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"studies/micro.py needs the old code from git ({REFERENCE_REV}:{REFERENCE_PATH}) in a "
                         f"checkout of this repository: {exc}") from exc
    module = types.ModuleType("_micro_reference")
    module.__file__ = f"{REFERENCE_REV}:{REFERENCE_PATH}"
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


_reference = _load_reference()
_old_ddim_sample = _reference._old_ddim_sample
_old_digit_call = _reference._old_digit_call
_old_fid_call = _reference._old_fid_call
_old_inception_call = _reference._old_inception_call
_old_score_matching_loss = _reference._old_score_matching_loss

# ==========================================================================================
# Harness
# ==========================================================================================

def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[0:3])
    except OSError:
        return "n/a"


def interleave(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Times of each callable, run alternately (ABBA...) ``reps`` times after ``warmup`` untimed rounds."""
    names = list(fns)
    for _ in range(warmup):
        for k in names:
            fns[k]()
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(reps):
        for k in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def compare(a: Any, b: Any) -> dict[str, Any]:
    """Equality of two results (tensors, floats or lists of them)."""
    if isinstance(a, (list, tuple)):
        parts = [compare(x, y) for x, y in zip(a, b)]
        return {"bitwise": all(p["bitwise"] for p in parts), "max_abs": max(p["max_abs"] for p in parts),
                "max_rel": max(p["max_rel"] for p in parts)}
    if isinstance(a, Tensor):
        a64, b64 = a.detach().double(), b.detach().double()
        diff = float((a64 - b64).abs().max()) if a.numel() else 0.0
        scale = float(a64.abs().max()) if a.numel() else 0.0
        return {"bitwise": bool(torch.equal(a, b)), "max_abs": diff, "max_rel": diff / scale if scale else diff}
    diff = abs(float(a) - float(b))
    return {"bitwise": float(a) == float(b), "max_abs": diff, "max_rel": diff / abs(float(a)) if float(a) else diff}


ROWS: list[dict[str, Any]] = []
CURRENT = [""]  # the --loops entry being measured
ONLY_COMPILE = [False]  # --compile-only: measure just the torch.compile rows


def record(loop: str, times: dict[str, list[float]], old: str, new: str, equal: dict[str, Any] | None,
           candidate: str = "", note: str = "") -> dict[str, Any]:
    o, n = statistics.median(times[old]), statistics.median(times[new])
    paired = statistics.median(b / a for a, b in zip(times[old], times[new]))
    group = CURRENT[0] + (":compile" if candidate.startswith("torch.compile") else "")
    row = {
        "group": group,
        "loop": loop,
        "candidate": candidate or "applied",
        "old_ms": 1e3 * o,
        "new_ms": 1e3 * n,
        "ratio_new_old": n / o,
        "paired_ratio_median": paired,
        "speedup": o / n,
        "reps": len(times[old]),
        "equal": equal,
        "note": note,
        "load_avg": _load(),
    }
    ROWS.append(row)
    eq = "n/a" if equal is None else ("bitwise" if equal["bitwise"] else f"max abs {equal['max_abs']:.2e} (rel "
                                                                         f"{equal['max_rel']:.1e})")
    print(f"  {loop:<22} {row['candidate']:<34} old {row['old_ms']:9.1f} ms  new {row['new_ms']:9.1f} ms  "
          f"new/old {row['ratio_new_old']:.3f}  ({eq})", flush=True)
    return row


# ==========================================================================================
# Loops
# ==========================================================================================

def _unet(seed: int = 0) -> nn.Module:
    from ray_bilevel.diffusion import build_unet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_unet(16, 1, (16, 32), 1, norm_num_groups=8)


def _alphas() -> Tensor:
    from ray_bilevel.schedules import NoiseSchedule

    return NoiseSchedule(T=1000).alphas_cumprod().detach()


def bench_train(reps: int, do_compile: bool) -> None:
    """Score-matching step + AdamW (lr 2e-3, wd 0, as the task) on batch 64; same (x0, t, eps) stream."""
    from ray_bilevel.diffusion import score_matching_loss

    alphas = _alphas()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(64, 1, 16, 16, generator=g) * 2 - 1, torch.randint(0, 1000, (64,), generator=g),
                torch.randn(64, 1, 16, 16, generator=g)) for _ in range(8)]
    base = _unet()

    def make(loss_fn, cl=False, compile_model=False, **opt_kw):
        model = copy.deepcopy(base)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0, **opt_kw)
        fwd = torch.compile(model) if compile_model else model
        state = {"i": 0, "losses": []}

        def step():
            x0, t, noise = batches[state["i"] % len(batches)]
            if cl:
                x0, noise = (
                    x0.contiguous(memory_format=torch.channels_last),
                    noise.contiguous(memory_format=torch.channels_last),
                )
            loss = loss_fn(fwd, x0, alphas, t=t, noise=noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["i"] += 1
            state["losses"].append(loss.detach())
        return step, model, state

    variants = {"old": make(_old_score_matching_loss), "new": make(score_matching_loss),
                "channels_last": make(score_matching_loss, cl=True),
                "adamw_foreach": make(score_matching_loss, foreach=True),
                "adamw_fused": make(score_matching_loss, fused=True)}
    if not ONLY_COMPILE[0]:
        times = interleave({k: v[0] for k, v in variants.items()}, reps, warmup=2)

        def eq(k):  # losses of every step and the parameters after them
            ma, mb = variants["old"][1], variants[k][1]
            return compare(
                [*variants["old"][2]["losses"], *ma.parameters()], [*variants[k][2]["losses"], *mb.parameters()]
            )

        after = f"values after {reps + 2} steps"
        record("train step (b64)", times, "old", "new", eq("new"))
        record("train step (b64)", times, "old", "channels_last", eq("channels_last"), "channels_last "
                                                                                       "(model+input)", after)
        record("train step (b64)", times, "old", "adamw_foreach", eq("adamw_foreach"), "AdamW(foreach=True) "
                                                                                       "[task.py]", after)
        record("train step (b64)", times, "old", "adamw_fused", eq("adamw_fused"), "AdamW(fused=True) [task.py]", after)
    if do_compile:
        t0 = time.perf_counter()
        step_c = make(score_matching_loss, compile_model=True)[0]
        step_c()
        step_c()  # the first steps compile forward and backward
        compile_s = time.perf_counter() - t0
        t = interleave({"old": variants["old"][0], "compiled": step_c}, reps, warmup=1)
        o, n = statistics.median(t["old"]), statistics.median(t["compiled"])
        record("train step (b64)", t, "old", "compiled", None, "torch.compile (inductor)",
               f"compile {compile_s:.0f} s ({_cache()}); saves {1200 * (o - n):.0f} s over 1,200 steps")


def _cache() -> str:
    cold = os.environ.get("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "0") not in ("", "0")
    return "cold: TORCHINDUCTOR_FORCE_DISABLE_CACHES=1" if cold else "Inductor's on-disk cache as found"


class _Trivial(nn.Module):
    """eps = 0.5 x: isolates the sampler's own per-step work (indexing, allocations, arithmetic, clamps)."""

    def forward(self, x, t):
        return 0.5 * x


def bench_ddim96(reps: int, do_compile: bool) -> None:
    bench_ddim(reps, do_compile, (96,))


def bench_ddim500(reps: int, do_compile: bool) -> None:
    bench_ddim(reps, False, (500,))


def _ddim_case(n: int, model: nn.Module, model_cl: nn.Module, alphas: Tensor, reps: int) -> None:
    from ray_bilevel import diffusion
    from ray_bilevel.diffusion import ddim_sample

    x_T = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(n))
    x_cl = x_T.contiguous(memory_format=torch.channels_last)
    out: dict[str, Tensor] = {}

    def run(key, fn):
        def f():
            out[key] = fn()
        return f

    def inference_mode_new():
        with torch.inference_mode():
            return ddim_sample(model, alphas, x_T, 20, batch_size=500)

    fns = {"old": run("old", lambda: _old_ddim_sample(model, alphas, x_T, 20, batch_size=500)),
           "new": run("new", lambda: ddim_sample(model, alphas, x_T, 20, batch_size=500))}
    if n <= 128:  # layout/mode candidates (they do not depend on the batch size): on the cheap size
        fns["inference_mode"] = run("inference_mode", inference_mode_new)
        fns["channels_last"] = run("channels_last", lambda: ddim_sample(model_cl, alphas, x_cl, 20, batch_size=500))
    else:  # the chunk size
        fns["chunk_old_64"] = run("chunk_old_64", lambda: _old_ddim_sample(model, alphas, x_T, 20, batch_size=64))
        fns["chunk_old_250"] = run("chunk_old_250", lambda: _old_ddim_sample(model, alphas, x_T, 20, batch_size=250))
    times = interleave(fns, reps)
    name = f"ddim 20 steps, n={n}"
    record(name, times, "old", "new", compare(out["old"], out["new"]),
           note=f"CPU chunks of {diffusion._CPU_CHUNK}" if n > diffusion._CPU_CHUNK else "")
    vs_new = "old ms = the applied code (candidate on top of it)"
    if "inference_mode" in fns:
        record(
            name,
            times,
            "new",
            "inference_mode",
            compare(out["new"], out["inference_mode"]),
            "+ torch.inference_mode()",
            vs_new,
        )
        record(name, times, "new", "channels_last", compare(out["new"], out["channels_last"]), "+ channels_last "
                                                                                               "(model+x_T)", vs_new)
    for k in [k for k in fns if k.startswith("chunk_old")]:
        record(name, times, "old", k, compare(out["old"], out[k]), f"old code, batch_size={k.rsplit('_', 1)[1]}")


def bench_ddim(reps: int, do_compile: bool, sizes: tuple[int, ...] = (96, 500)) -> None:
    from ray_bilevel.diffusion import ddim_sample

    alphas = _alphas()
    model = _unet().eval()
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    for n in () if ONLY_COMPILE[0] else sizes:
        _ddim_case(n, model, model_cl, alphas, reps)
    if not ONLY_COMPILE[0] and 500 in sizes:  # the sampler's own work, with a trivial model
        x_T = torch.randn(500, 1, 16, 16, generator=torch.Generator().manual_seed(1))
        trivial = _Trivial()
        out = {}
        fns = {"old": lambda: out.__setitem__("old", _old_ddim_sample(trivial, alphas, x_T, 20, batch_size=500)),
               "new": lambda: out.__setitem__("new", ddim_sample(trivial, alphas, x_T, 20, batch_size=500))}
        times = interleave(fns, max(reps, 15))
        record("ddim_overhead (eps=0.5x)", times, "old", "new", compare(out["old"], out["new"]),
               note="sampler arithmetic only, n=500, 20 steps")
    if do_compile:
        x_T = torch.randn(96, 1, 16, 16, generator=torch.Generator().manual_seed(96))
        ref = _old_ddim_sample(model, alphas, x_T, 20)
        t0 = time.perf_counter()
        cm = torch.compile(model)
        got = ddim_sample(cm, alphas, x_T, 20)  # the first call compiles (one forward shape, no grad)
        compile_s = time.perf_counter() - t0
        fns = {
            "old": lambda: _old_ddim_sample(model, alphas, x_T, 20),
            "compiled": lambda: ddim_sample(cm, alphas, x_T, 20),
        }
        times = interleave(fns, max(reps, 5), warmup=0)
        o, n = statistics.median(times["old"]), statistics.median(times["compiled"])
        record("ddim 20 steps, n=96", times, "old", "compiled", compare(ref, got), "torch.compile (inductor)",
               f"compile {compile_s:.0f} s ({_cache()}); saves {40 * (o - n):.0f} s over 40 calls")


def _digits(n: int) -> Tensor:
    try:
        from ray_bilevel.data import load_images

        return load_images("mnist5k", image_size=16).images[:n].contiguous()
    except Exception:  # no data: uniform noise in [-1, 1]
        return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def bench_digit(reps: int, do_compile: bool) -> None:
    from ray_bilevel.metrics.features import digit_extractor

    ext = digit_extractor()
    images = _digits(500)
    model_cl = copy.deepcopy(ext.model).to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def all_channels_last() -> Tensor:  # the whole network in NHWC (conv algorithm changes: not bitwise)
        x = images.clamp(-1.0, 1.0)
        outs = []
        for i in range(0, len(x), 64):
            outs.append(
                model_cl.features(model_cl.prepare(x[i : i + 64]).contiguous(memory_format=torch.channels_last))
            )
        return torch.cat(outs)

    out: dict[str, Tensor] = {}
    fns = {"old": lambda: out.__setitem__("old", _old_digit_call(ext, images)),
           "new": lambda: out.__setitem__("new", ext(images)),
           "all_cl": lambda: out.__setitem__("all_cl", all_channels_last())}
    times = interleave(fns, reps)
    record("digit features n=500", times, "old", "new", compare(out["old"], out["new"]))
    record("digit features n=500", times, "old", "all_cl", compare(out["old"], out["all_cl"]),
           "channels_last convs too, chunks of 64")


def bench_inception(reps: int, do_compile: bool) -> None:
    from ray_bilevel.metrics.features import inception_extractor

    ext = inception_extractor()
    images = _digits(64)
    out: dict[str, Tensor] = {}
    ext8 = copy.copy(ext)
    ext8.batch_size = 8
    fns = {"old": lambda: out.__setitem__("old", _old_inception_call(ext, images)),
           "new": lambda: out.__setitem__("new", ext(images)),
           "old8": lambda: out.__setitem__("old8", _old_inception_call(ext8, images))}
    times = interleave(fns, reps)
    record("inception features n=64", times, "old", "new", compare(out["old"], out["new"]),
           note=f"backend {ext.backend}; frozen+BN-folded oneDNN copy, chunks of 8")
    record("inception features n=64", times, "old", "old8", compare(out["old"], out["old8"]), "old network, chunks of "
                                                                                              "8 (not 32)",
           note="the chunk alone")


class _PassThrough:
    """A 'feature extractor' returning the given (N, d, 1, 1) 'images' as (N, d) features."""

    preprocessing = "identity (benchmark)"

    def __init__(self, dim: int) -> None:
        self.name, self.dim = f"passthrough{dim}", dim
        self.weights = torch.zeros(1)

    def __call__(self, images: Tensor) -> Tensor:
        return images.flatten(1)


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> Tensor:
    """Inception-like features: non-negative, correlated (a rank-128 mixture plus noise), float32."""
    g = torch.Generator().manual_seed(seed)
    k = min(d, 128)
    basis = torch.randn(k, d, generator=torch.Generator().manual_seed(1234)) / math.sqrt(k)
    z = torch.randn(n, k, generator=g) + shift
    return (F.relu(z @ basis) + 0.05 * torch.rand(n, d, generator=g)).float()


def bench_fid(reps: int, do_compile: bool) -> None:
    from ray_bilevel.metrics.fid import FIDEvaluator

    cases = [(64, 1000, 96, 0.0), (64, 1000, 500, 0.0), (2048, 1000, 500, 0.0), (2048, 192, 96, "ledoit_wolf")]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank-deficient fake sets are the point of the 2048-d rows
        os.environ["RAY_BILEVEL_CACHE"] = tmp
        for d, n_real, n_fake, shrink in cases:
            real = _features(n_real, d, 0)[:, :, None, None]
            fake = _features(n_fake, d, 1, shift=0.2)[:, :, None, None]
            _fid_case(
                FIDEvaluator(_PassThrough(d), real, shrinkage=shrink),
                fake,
                n_real,
                reps if d == 64 else max(3, reps // 2),
            )


def _fid_case(ev: Any, fake: Tensor, n_real: int, reps: int) -> None:
    out: dict[str, float] = {}
    fns = {"old": lambda: out.__setitem__("old", _old_fid_call(ev, fake)),
           "new": lambda: out.__setitem__("new", ev(fake))}
    times = interleave(fns, reps)
    record(f"fid {ev.extractor.dim}-d n={len(fake)} vs {n_real}", times, "old", "new", compare(out["old"], out["new"]),
           note=f"shrinkage={ev.shrinkage}; FID old {out['old']:.6f} new {out['new']:.6f}")


BENCHES = {
    "train": bench_train,
    "ddim96": bench_ddim96,
    "ddim500": bench_ddim500,
    "digit": bench_digit,
    "inception": bench_inception,
    "fid": bench_fid,
}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| loop | change | old ms | new ms | new/old | equal values? (max abs diff) | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r["equal"]
        eq = "n/a" if e is None else ("bitwise" if e["bitwise"] else f"no: {e['max_abs']:.2e} (rel {e['max_rel']:.1e})")
        lines.append(f"| {r['loop']} | {r['candidate']} | {r['old_ms']:.1f} | {r['new_ms']:.1f} | "
                     f"{r['ratio_new_old']:.3f} | {eq} | {r['note']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="benchmark_results/micro.json")
    p.add_argument("--loops", default=",".join(LOOPS), help=f"comma-separated subset of {','.join(LOOPS)}")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions per variant (ABBA order); heavy loops use "
                                                       "fewer")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 = a Ray worker with num_cpus=1)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes of compile time)")
    p.add_argument("--compile-only", action="store_true", help="with --compile: only the torch.compile rows (train, "
                                                               "ddim)")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of other loops already in --out (split a long measurement over several runs)")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="measure nothing: print the markdown table of a JSON this script wrote (BENCHMARKS.md's table)")
    args = p.parse_args(argv)
    if args.render:
        print(markdown(json.loads(Path(args.render).read_text())["rows"]))
        return 0
    torch.set_num_threads(args.threads)
    ONLY_COMPILE[0] = args.compile and args.compile_only
    loops = [
        y
        for x in args.loops.split(",")
        if x.strip()
        for y in (("ddim96", "ddim500") if x.strip() == "ddim" else (x.strip(),))
    ]
    bad = [x for x in loops if x not in BENCHES]
    if bad:
        p.error(f"unknown loops {bad}; choose from {list(LOOPS)}")
    heavy = {"ddim500": max(3, args.reps // 2), "inception": max(2, args.reps // 3)}
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_avg_start": _load(),
        "uptime_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"# micro-benchmarks, {torch.get_num_threads()} thread(s), load {meta['load_avg_start']}", flush=True)
    for loop in loops:
        CURRENT[0] = loop
        t0 = time.perf_counter()
        BENCHES[loop](heavy.get(loop, args.reps), args.compile)
        print(f"  [{loop}: {time.perf_counter() - t0:.0f} s]", flush=True)
    meta["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    meta["loops"] = loops
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs, rows = [meta], list(ROWS)
    if args.merge and out.is_file():
        previous = json.loads(out.read_text())
        replaced = set() if ONLY_COMPILE[0] else set(loops)
        replaced |= {f"{x}:compile" for x in loops} if args.compile else set()
        kept = [r for r in previous.get("rows", []) if r.get("group") not in replaced]
        runs = [m for m in previous.get("runs", []) if ONLY_COMPILE[0] or set(m.get("loops", [])) - set(loops)] + runs
        rows = sorted(
            kept + rows,
            key=lambda r: (
                LOOPS.index(r["group"].split(":")[0]) if r.get("group", "").split(":")[0] in LOOPS else len(LOOPS)
            ),
        )
    out.write_text(json.dumps({"runs": runs, "rows": rows}, indent=2))
    print()
    print(markdown(rows))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
