"""A BENCHMARKS.md section from a results folder of ``benchmarks/compare.py``: nothing typed by hand.

    python benchmarks/benchmarks_md.py RESULTS_DIR                       # print the section
    python benchmarks/benchmarks_md.py RESULTS_DIR --title "Noise schedule, quick, 5 seeds" --out section.md

Reads RESULTS_DIR/results.json (one row per task, method and seed) and RESULTS_DIR/run_info.json (argv, commit,
date, machine, ...) and writes: the title, the exact command (run_info's argv unless --command), the commit (with a
warning when the tree was dirty), date and machine, then the multi-seed report
(:func:`ray_bilevel.benchmark.tables.markdown_report`) and links to the summary plots (drawn from results.json
when missing, unless --no-plots), relative to the output file's folder (printing: to --link-base, the folder of
the markdown file that holds the section, e.g. docs/studies; else the current folder). A folder joined by
``benchmarks/merge_runs.py`` (seeds run apart) gets one line per part (seeds, commit, date, wall time) and its
command; the machine once when every part ran on the same kind.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from ray_bilevel.benchmark.store import read_json  # noqa: E402
from ray_bilevel.benchmark.tables import markdown_report  # noqa: E402
from ray_bilevel.config import ConfigError  # noqa: E402


def _command(argv: Any) -> str | None:
    """``python benchmarks/compare.py --preset quick ...`` from a recorded ``sys.argv`` (the script path made
    relative to the repository when it lies in it)."""
    if not argv:
        return None
    if isinstance(argv, str):
        return argv
    argv = [str(a) for a in argv]
    script = argv[0]
    if script.endswith(".py"):
        path = Path(script)
        if path.is_absolute():
            parts = path.parts
            if "benchmarks" in parts:  # .../<repo>/benchmarks/compare.py -> benchmarks/compare.py
                script = str(Path(*parts[len(parts) - 1 - parts[::-1].index("benchmarks"):]))
        return shlex.join(["python", script, *argv[1:]])
    return shlex.join(argv)


def _commit(info: dict[str, Any]) -> tuple[str | None, bool | None]:
    """``(sha, dirty)`` from run_info: ``commit`` as a string or a dict (``sha``/``hash``/``commit``/``head`` and
    ``dirty``), or top-level ``dirty`` / ``git_dirty``."""
    commit, dirty = info.get("commit"), None
    if isinstance(commit, dict):
        dirty = commit.get("dirty")
        commit = next((commit[k] for k in ("sha", "hash", "commit", "head", "rev") if commit.get(k)), None)
    for key in ("dirty", "git_dirty", "commit_dirty", "dirty_tree"):
        if dirty is None and key in info:
            dirty = info[key]
    return (str(commit) if commit else None), (bool(dirty) if dirty is not None else None)


def _machine(info: dict[str, Any]) -> str:
    parts = [str(info[k]) for k in ("machine", "platform") if info.get(k)]
    if info.get("cpus"):
        parts.append(f"{info['cpus']} CPUs")
    if info.get("gpus") or info.get("gpu"):
        parts.append(f"GPU: {info.get('gpus') or info.get('gpu')}")
    for key, value in info.items():  # utilisation / load fields, whatever their names
        if any(w in key.lower() for w in ("util", "load")) and value is not None:
            parts.append(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return "; ".join(parts) or "–"


def _machine_kind(info: dict[str, Any]) -> str:
    """The kind of machine a run used (architecture, cores, GPU), without the kernel build or the run's load."""
    parts = [str(info["machine"])] if info.get("machine") else []
    if info.get("cpus"):
        parts.append(f"{info['cpus']} CPUs")
    if info.get("gpus") or info.get("gpu"):
        parts.append(f"GPU: {info.get('gpus') or info.get('gpu')}")
    return "; ".join(parts) or "not recorded"


def _efficiency(info: dict[str, Any]) -> str | None:
    """The run's own efficiency figures (run_info.json, written by the runner), or None for older runs."""
    if info.get("wall_s") is None:
        return None
    conc = (info.get("config") or {}).get("concurrent_methods") or 1
    cores = info.get("cores") or 1
    wall, startup = float(info["wall_s"]), float(info.get("startup_s") or 0.0)
    tuning = info.get("tuning_wall_s")
    return (f"Efficiency: {wall / 60:.1f} min wall after a {startup:.0f} s start-up"
            + (f" ({float(tuning) / 60:.1f} min tuning, {(wall - float(tuning)) / 60:.1f} min test-split reporting)"
               if tuning is not None else "")
            + f"; Σ trial CPU-s {float(info.get('trial_cpu_s') or 0):.0f}"
            + (f" (of which {float(info['reused_cpu_s']):.0f} reused from an earlier invocation: --resume)"
               if info.get("reused_cpu_s") else "")
            + f", Σ reporting CPU-s {float(info.get('reporting_cpu_s') or 0):.0f}; utilisation = Σ CPU-s of this "
            f"invocation / ((wall + start-up) × {cores:g} cores) = {info.get('utilisation')}; {conc} method(s) at a "
            "time.")


def _provenance(info: dict[str, Any], command: str | None) -> list[str]:
    """The command, commit, date, machine and efficiency lines of one compare.py invocation's run_info."""
    command = command or _command(info.get("argv")) or "(no argv in run_info.json)"
    sha, dirty = _commit(info)
    lines = ["```", command, "```\n"]
    commit_line = f"Commit `{sha}`" if sha else "Commit: not recorded"
    if dirty:
        commit_line += (
            " — **dirty tree**: the run used uncommitted changes, so this commit does not reproduce it exactly"
        )
    lines.append(commit_line + ".  ")
    lines.append(f"Date: {info.get('date') or '–'}.  ")
    lines.append(f"Machine: {_machine(info)}.\n")
    effort = _efficiency(info)
    if effort:
        lines.append(effort + "\n")
    return lines


def _part_line(part: dict[str, Any], with_machine: bool) -> list[str]:
    """One part of a joined folder in two lines: seeds, commit (clean or dirty), date, wall time, utilisation (and
    the machine when the parts ran on different ones), then its command."""
    seeds = ", ".join(str(s) for s in part.get("seeds") or []) or "?"
    sha, dirty = _commit(part)
    if not sha:
        commit = "commit not recorded"
    elif dirty:
        commit = f"commit `{sha[:12]}` (**dirty tree**: uncommitted changes, not exactly reproducible)"
    else:
        commit = f"commit `{sha[:12]}`" + (" (clean tree)" if dirty is False else "")
    facts = [commit, str(part.get("date") or "date not recorded")]
    if part.get("wall_s") is not None:
        reused = float(part.get("reused_cpu_s") or 0.0)
        facts.append(f"{float(part['wall_s']) / 60:.1f} min wall"
                     + (f", {reused:.0f} CPU-s reused (--resume)" if reused > 0 else "")
                     + f", utilisation {part.get('utilisation')}")
    if with_machine:
        facts.append(_machine_kind(part))
    command = _command(part.get("argv")) or "(no argv in run_info.json)"
    return [f"Seed(s) {seeds}: {'; '.join(facts)}.", "```", command, "```\n"]


def section(results_dir: str, title: str | None = None, command: str | None = None, link_base: str | None = None,
            plots: bool = True) -> str:
    """The markdown section of ``results_dir`` (see the module docstring)."""
    fix = (f"rerun the benchmarks/compare.py command that wrote {results_dir}, with --resume, to rewrite it (finished "
           "methods are reused).")
    rows = read_json(os.path.join(results_dir, "results.json"), fix, expect=list)
    try:
        info = read_json(os.path.join(results_dir, "run_info.json"), fix, expect=dict)
    except FileNotFoundError:
        info = {}
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    seeds = sorted({r.get("seed") for r in rows}, key=str)
    presets = sorted({str(r.get("preset")) for r in rows if r.get("preset") is not None})
    title = title or f"{', '.join(tasks)} ({', '.join(presets) or 'preset ?'}, {len(seeds)} seed(s))"
    lines = [f"## {title}\n"]
    if info.get("parts"):  # a folder joined by benchmarks/merge_runs.py: one block per part
        n = len(info["parts"])
        lines.append(f"Run in {n} part{'s' if n != 1 else ''}, joined by `benchmarks/merge_runs.py` "
                     f"({info.get('date') or 'date not recorded'}).  ")
        machines = {_machine_kind(part) for part in info["parts"]}
        same = len(machines) == 1
        if same:
            lines.append(f"Machine of every part: {next(iter(machines))}.\n")
        for part in info["parts"]:
            lines += _part_line(part, with_machine=not same)
    else:
        lines += _provenance(info, command)
    lines.append(markdown_report(rows))
    folder = os.path.join(results_dir, "plots")
    if plots:
        names = [f"{t}_{kind}.png" for t in tasks for kind in ("anytime", "oracle")]
        if not all(os.path.exists(os.path.join(folder, n)) for n in names):
            from ray_bilevel.benchmark.plots import make_summary_plots

            make_summary_plots(rows, results_dir)
    base = link_base or os.getcwd()
    links = []
    for task in tasks:
        for kind, what in (("anytime", "anytime: test value of the validation-selected answer vs compute spent"),
                           ("oracle", "oracle: the dense sweep against the swept hyperparameter")):
            path = os.path.join(folder, f"{task}_{kind}.png")
            if os.path.exists(path):
                rel = Path(os.path.relpath(path, base)).as_posix()
                links.append(f"![{task} {what}]({rel})")
    if links:
        lines.append("Plots:\n")
        lines += [f"{link}\n" for link in links]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("results_dir", help="folder written by benchmarks/compare.py (results.json, run_info.json)")
    p.add_argument("--title", default=None, help="section title (default: tasks, preset and number of seeds)")
    p.add_argument("--command", default=None, help="the command to show (default: run_info.json's argv)")
    p.add_argument("--out", default=None, help="write the section to this file instead of printing it")
    p.add_argument("--no-plots", action="store_true", help="do not draw missing summary plots (existing ones are "
                                                           "linked)")
    p.add_argument("--link-base", default=None, metavar="DIR",
                   help="make the plot links relative to DIR, the folder of the markdown file that holds the section "
                        "(default: --out's folder, else the current folder)")
    a = p.parse_args(argv)
    if not os.path.exists(os.path.join(a.results_dir, "results.json")):
        print(f"benchmarks_md.py: error: no results.json in {a.results_dir}", file=sys.stderr)
        return 2
    base = os.path.dirname(os.path.abspath(a.out)) if a.out else a.link_base and os.path.abspath(a.link_base)
    try:
        text = section(a.results_dir, a.title, a.command, base, plots=not a.no_plots)
    except ConfigError as exc:
        print(f"benchmarks_md.py: error: {exc}", file=sys.stderr)
        return 2
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
