"""benchmarks/merge_runs.py: seeds run apart and joined report exactly what one all-seed run reports.

The golden value is a real run: docs/benchmarks/quick_lambda_fair (5 seeds in one compare.py invocation) is split
into per-seed parts, joined again, and the joined summary.json and table must equal the original's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_bilevel.benchmark.merge import merge_runs
from ray_bilevel.benchmark.outputs import write_summary
from ray_bilevel.benchmark.tables import markdown_report
from ray_bilevel.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "docs" / "benchmarks" / "quick_lambda_fair"


def _split(tmp_path: Path, groups: list[list[int]]) -> list[str]:
    rows = json.loads((RUN / "results.json").read_text())
    curves = json.loads((RUN / "curves.json").read_text())
    info = json.loads((RUN / "run_info.json").read_text())
    folders = []
    for i, seeds in enumerate(groups):
        folder = tmp_path / f"part{i}"
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps([r for r in rows if r["seed"] in seeds]))
        part_curves = {t: {m: {s: c for s, c in by_seed.items() if int(s) in seeds} for m, by_seed in ms.items()}
                       for t, ms in curves.items()}
        (folder / "curves.json").write_text(json.dumps(part_curves))
        (folder / "run_info.json").write_text(json.dumps({**info, "argv": [*info["argv"][:-2], "--out", str(folder)],
                                                          "commit": f"{i}" * 40}))
        trial = f"reward_lambda,bilevel,{seeds[0]},{{}},x"
        (folder / "trials.csv").write_text(f"task,method,seed,config,part{i}\n{trial}\n")
        folders.append(str(folder))
    return folders


def test_split_and_joined_equals_the_all_seed_run(tmp_path):
    parts = _split(tmp_path, [[3, 0], [1], [2, 4]])
    out = tmp_path / "joined"
    table = merge_runs(parts, str(out), plots=False)
    original = json.loads((RUN / "summary.json").read_text())
    joined = json.loads((out / "summary.json").read_text())
    assert joined == original
    rows = json.loads((RUN / "results.json").read_text())
    assert table == markdown_report(rows)
    assert json.loads((out / "curves.json").read_text()) == json.loads((RUN / "curves.json").read_text())
    info = json.loads((out / "run_info.json").read_text())
    assert [p["seeds"] for p in info["parts"]] == [[0, 3], [1], [2, 4]]
    assert info["commit"] is None  # three commits: none stands for the whole
    assert (out / "results.csv").read_text().count("\n") == len(rows) + 1
    header = (out / "trials.csv").read_text().splitlines()[0]
    assert header.split(",") == ["task", "method", "seed", "config", "part0", "part1", "part2"]


def test_a_joined_folder_joins_again_and_keeps_every_part(tmp_path):
    p0, p1, p2 = _split(tmp_path, [[0, 1], [2], [3, 4]])
    merge_runs([p0, p1], str(tmp_path / "first"), plots=False)
    merge_runs([str(tmp_path / "first"), p2], str(tmp_path / "all"), plots=False)
    info = json.loads((tmp_path / "all" / "run_info.json").read_text())
    assert [p["folder"] for p in info["parts"]] == [p0, p1, p2]
    rows = json.loads((tmp_path / "all" / "results.json").read_text())
    write_summary(rows, str(tmp_path))
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads((RUN / "summary.json").read_text())


def test_a_part_that_adds_a_method_gets_its_regret_from_the_other_parts_oracle(tmp_path):
    """``compare.py --methods NEW --seeds ...`` beside a run of the others: the new method's rows have no oracle in
    their own part (regret None there); joined, they get the regret an all-method run computes."""
    rows = json.loads((RUN / "results.json").read_text())
    curves = json.loads((RUN / "curves.json").read_text())
    folders = []
    for name, keep in (("others", lambda r: r["method"] != "bilevel"), ("new", lambda r: r["method"] == "bilevel")):
        folder = tmp_path / name
        folder.mkdir()
        part = [dict(r, regret=None) if name == "new" else r for r in rows if keep(r)]
        (folder / "results.json").write_text(json.dumps(part))
        (folder / "curves.json").write_text(json.dumps(
            {t: {m: c for m, c in ms.items() if keep({"method": m})} for t, ms in curves.items()}))
        folders.append(str(folder))
    merge_runs(folders, str(tmp_path / "joined"), plots=False)
    def unordered(summary):  # the new method's rows come last: compare the entries, not their order
        return {k: sorted(json.dumps(e, sort_keys=True) for e in v) if isinstance(v, list) else v
                for k, v in summary.items()}

    joined = json.loads((tmp_path / "joined" / "summary.json").read_text())
    assert unordered(joined) == unordered(json.loads((RUN / "summary.json").read_text()))
    regrets = {(r["method"], r["seed"]): r["regret"] for r in json.loads((tmp_path / "joined" / "results.json")
                                                                       .read_text())}
    assert all(regrets[("bilevel", r["seed"])] == pytest.approx(r["regret"]) for r in rows if r["method"] == "bilevel")


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows, "is in both"),
    (lambda rows: [{**r, "preset": "smoke"} for r in rows], "preset"),
    (lambda rows: [{**r, "settings": {**(r.get("settings") or {}), "eval_samples": 7}} for r in rows],
     "different methods"),
    (lambda rows: [{**r, "seed": None} for r in rows], "without a seed"),
])
def test_parts_of_different_studies_are_refused(tmp_path, edit, message):
    p0, p1 = _split(tmp_path, [[0], [1]])
    rows = json.loads(Path(p1, "results.json").read_text())
    if message == "is in both":
        rows = json.loads(Path(p0, "results.json").read_text())
    Path(p1, "results.json").write_text(json.dumps(edit(rows)))
    with pytest.raises(ConfigError, match=message):
        merge_runs([p0, p1], str(tmp_path / "out"), plots=False)


def test_out_may_not_be_a_part_and_a_part_needs_results(tmp_path):
    (p0,) = _split(tmp_path, [[0]])
    with pytest.raises(ConfigError, match="is one of the parts"):
        merge_runs([p0], p0, plots=False)
    with pytest.raises(ConfigError, match="holds no results.json"):
        merge_runs([str(tmp_path)], str(tmp_path / "out"), plots=False)


def test_the_script_and_the_section_name_every_part(tmp_path):
    parts = _split(tmp_path, [[0, 1, 2], [3, 4]])
    out = tmp_path / "joined"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "merge_runs.py"), *parts, "--out", str(out),
                           "--no-plots"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "joined 2 part(s)" in proc.stdout
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import benchmarks_md
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    text = benchmarks_md.section(str(out), plots=False)
    assert "Run in 2 parts" in text
    assert text.count("python benchmarks/compare.py") == 2
    assert f"--out {parts[0]}" in text and f"--out {parts[1]}" in text
    assert "Seed(s) 0, 1, 2:" in text and "Seed(s) 3, 4:" in text
    assert "Seed(s) 0, 1, 2: commit `000000000000`" in text and "Seed(s) 3, 4: commit `111111111111`" in text
    assert text.count("Machine of every part: ") == 1  # said once: both parts ran on the same kind of machine
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "merge_runs.py"), parts[0], parts[0], "--out",
                          str(tmp_path / "x"), "--no-plots"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "is in both" in bad.stderr
    assert os.path.exists(out / "table.md")


def test_the_joined_folder_gets_the_summary_plots(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "joined"
    merge_runs(_split(tmp_path, [[0], [1]]), str(out))
    assert sorted(os.listdir(out / "plots")) == ["reward_lambda_anytime.png", "reward_lambda_oracle.png"]
