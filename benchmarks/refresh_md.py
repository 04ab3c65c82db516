"""Regenerate the generated blocks of markdown files (BENCHMARKS.md, docs/studies/*.md) from the commands they name.

    python benchmarks/refresh_md.py BENCHMARKS.md docs/studies/*.md           # rewrite every generated block in place
    python benchmarks/refresh_md.py BENCHMARKS.md docs/studies/*.md --check   # exit 1 (and print a diff) when stale

A generated block is delimited by two HTML comments, invisible on GitHub::

    <!-- generated: python benchmarks/benchmarks_md.py docs/benchmarks/quick3_lambda --no-plots -->
    ... whatever the command printed ...
    <!-- end generated -->

The command runs from the repository root (``python`` is this interpreter) and must print markdown built from
committed files only (results JSON), never measure anything: refreshing is cheap and deterministic, so a test can
check that no table in BENCHMARKS.md or a study of docs/studies/ was typed or edited by hand. A command whose output
links files (benchmarks_md.py's plots) takes the markdown file's folder as its link base (``--link-base docs/studies``),
since every command runs from the repository root.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^(<!-- generated: (?P<cmd>.+?) -->\n)(?P<body>.*?)^(<!-- end generated -->)", re.S | re.M)

__all__ = ["refresh", "run_command"]


def run_command(command: str, cwd: Path = ROOT) -> str:
    """What ``command`` prints (stdout), run from ``cwd`` with ``python`` replaced by this interpreter."""
    argv = shlex.split(command)
    if not argv:
        raise ValueError("empty command in a generated block")
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"generated block command failed (exit {done.returncode}): {command}\n{done.stderr[-2000:]}")
    return done.stdout.rstrip("\n") + "\n"


def refresh(text: str, cwd: Path = ROOT) -> tuple[str, list[str]]:
    """``(new_text, commands)``: every generated block's body replaced by its command's output."""
    commands: list[str] = []

    def sub(m: re.Match[str]) -> str:
        commands.append(m["cmd"])
        return m.group(1) + run_command(m["cmd"], cwd) + m.group(4)

    return BLOCK.sub(sub, text), commands


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", type=Path, nargs="+", metavar="file",
                   help="markdown files with generated blocks (e.g. BENCHMARKS.md docs/studies/*.md)")
    p.add_argument("--check", action="store_true", help="do not write; exit 1 with a diff if any block is stale")
    a = p.parse_args(argv)
    status = 0
    for file in a.files:
        status = max(status, _one(file, a.check))
    return status


def _one(file: Path, check: bool) -> int:
    """Refresh (or ``check``) one file: 0 done or up to date, 1 stale, 2 no generated blocks."""
    old = file.read_text()
    new, commands = refresh(old, ROOT)
    if not commands:
        print(f"refresh_md.py: no generated blocks in {file}", file=sys.stderr)
        return 2
    if check:
        if new != old:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), str(file),
                                                       "regenerated"))
            return 1
        print(f"{file}: {len(commands)} generated block(s) up to date")
        return 0
    file.write_text(new)
    print(f"{file}: regenerated {len(commands)} block(s){'' if new != old else ' (no change)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
