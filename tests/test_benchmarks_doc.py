"""BENCHMARKS.md cannot drift from its data: every table in it sits in a generated block whose command rebuilds it
from committed JSON (benchmarks/refresh_md.py), and regenerating gives back the committed text byte for byte."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from refresh_md import BLOCK, refresh  # noqa: E402


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


def test_every_table_of_benchmarks_md_is_generated():
    """A markdown table row outside a generated block would be a number typed by hand."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    outside = BLOCK.sub("", text)
    typed = [line for line in outside.splitlines() if re.match(r"^\|.*\|\s*$", line)]
    assert not typed, f"table rows outside generated blocks: {typed[:3]}"
    assert len(BLOCK.findall(text)) >= 3


@pytest.mark.slow
def test_benchmarks_md_is_up_to_date():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "refresh_md.py"), "BENCHMARKS.md", "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
