"""BENCHMARKS.md and the studies of docs/studies/ cannot drift from their data: every table in them sits in a
generated block whose command rebuilds it from committed JSON (benchmarks/refresh_md.py), and regenerating gives back
the committed text byte for byte."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from refresh_md import BLOCK, refresh  # noqa: E402

#: The files whose tables must all be generated: the headline evidence and the lab notebook beside it.
DOCS = [ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs" / "studies").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_refresh_replaces_each_block_by_its_commands_output(tmp_path):
    (tmp_path / "data.txt").write_text("fresh\n")
    cmd = "python -c \"print(open('data.txt').read().strip().upper())\""
    doc = f"# T\n\nprose kept\n<!-- generated: {cmd} -->\nSTALE, typed by hand\n<!-- end generated -->\ntail\n"
    new, commands = refresh(doc, cwd=tmp_path)
    assert commands == [cmd]
    assert new == f"# T\n\nprose kept\n<!-- generated: {cmd} -->\nFRESH\n<!-- end generated -->\ntail\n"
    assert refresh(new, cwd=tmp_path)[0] == new  # idempotent


def test_a_failing_command_names_itself(tmp_path):
    doc = "<!-- generated: python -c \"raise SystemExit(3)\" -->\nx\n<!-- end generated -->\n"
    with pytest.raises(RuntimeError, match=r"exit 3\).*SystemExit\(3\)"):
        refresh(doc, cwd=tmp_path)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_is_generated(path):
    """A markdown table row outside a generated block would be a number typed by hand."""
    text = path.read_text()
    outside = BLOCK.sub("", text)
    typed = [line for line in outside.splitlines() if re.match(r"^\|.*\|\s*$", line)]
    assert not typed, f"table rows outside generated blocks: {typed[:3]}"
    assert BLOCK.findall(text), f"{path.name} has no generated block"


def test_benchmarks_md_is_the_headline_and_points_at_every_study():
    """BENCHMARKS.md holds the headline evidence (both tasks' main comparison) in at most 300 lines; the lab notebook
    lives in docs/studies/, and every study is linked from it."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    assert len(text.splitlines()) <= 300
    commands = [m["cmd"] for m in BLOCK.finditer(text)]
    assert any("quick_lambda_fair" in c for c in commands) and any("quick_ns_fair" in c for c in commands)
    studies = DOCS[1:]
    assert len(studies) >= 3
    for study in studies:
        assert f"(docs/studies/{study.name})" in text, f"BENCHMARKS.md does not point at {study.name}"
    # no block was lost in the moves (10), plus the first look of the README's first command (performance.md) and
    # the reward-λ run under the fair measure (BENCHMARKS.md), the ZO SNR, CG damping and CG penalty studies, the
    # noise-schedule run under the fair measure and its ablation table (BENCHMARKS.md), the sampling gradient against
    # retraining's on the EMA and the raw network (noise_schedule_variants.md), the λ ablation (BENCHMARKS.md) and
    # ASHA's settings chosen on development seeds, both tasks (peer_settings.md), which bilevel the first look runs
    # (noise_schedule_variants.md), λ at the paper's budgets under the fair measure (paper_budgets.md),
    # what it takes each method to reach the bilevel answer, three runs (anytime_goal.md), the noise schedule at the
    # paper's budgets under the fair measure and its reach table (paper_budgets.md)
    assert sum(len(BLOCK.findall(p.read_text())) for p in DOCS) == 31


@pytest.mark.parametrize("path", [*DOCS, ROOT / "README.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    """Every relative link (and image) of these files names a file that exists, from the file's own folder."""
    broken = [target for target in LINK.findall(path.read_text())
              if "://" not in target and not (path.parent / target).exists()]
    assert not broken, f"broken links in {path.name}: {broken}"


@pytest.mark.slow
def test_benchmarks_md_and_studies_are_up_to_date():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "refresh_md.py"),
                           *[str(p.relative_to(ROOT)) for p in DOCS], "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
