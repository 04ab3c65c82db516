"""No partial files: results.json, summary.json, a method's state file and the reporting cache are written whole or
not at all, and a truncated or corrupt one read back (``--resume``, benchmarks_md.py, variant_md.py) is a one-line
error that names the file and what to do, never a traceback or a silently smaller table."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from ray_bilevel.benchmark import evaluation, resume
from ray_bilevel.benchmark.outputs import write_summary
from ray_bilevel.benchmark.store import atomic_write_bytes, atomic_write_json, read_json
from ray_bilevel.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import benchmarks_md  # noqa: E402
import variant_md  # noqa: E402

ROW = {"task": "toy", "method": "bayes", "seed": 0, "mode": "min", "metric": "loss", "metric_value": 0.1,
       "metric_value_val": 0.2, "cpu_s": 1.0, "preset": "smoke", "best_config": {"x": 0.3}}


def _truncate(path: str | Path, keep: float) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


def _one_line_naming(exc: pytest.ExceptionInfo, path: str | Path, fix: str) -> None:
    text = str(exc.value)
    assert "\n" not in text and str(path) in text and "truncated or corrupt" in text and fix in text


# -- writing ---------------------------------------------------------------------------------------------


def test_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "results.json"
    atomic_write_json(str(path), [ROW], indent=1)
    assert json.loads(path.read_text()) == [ROW] and os.listdir(path.parent) == ["results.json"]
    with pytest.raises(ValueError):  # not serialisable: raised before a byte is written
        atomic_write_json(str(path), [{"x": float("nan")}], allow_nan=False)
    assert json.loads(path.read_text()) == [ROW]

    def killed(src: str, dst: str) -> None:  # the writer dies between writing the temporary file and the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(str(path), b"[{\"task\": ")
    assert json.loads(path.read_text()) == [ROW] and os.listdir(path.parent) == ["results.json"]


def test_summary_and_state_are_written_through_the_atomic_writer(tmp_path, monkeypatch):
    written: list[str] = []
    real = atomic_write_bytes

    def spy(path: str, data: bytes) -> None:
        written.append(os.path.basename(path))
        real(path, data)

    monkeypatch.setattr("ray_bilevel.benchmark.store.atomic_write_bytes", spy)
    write_summary([ROW], str(tmp_path))
    resume.write_state(str(tmp_path / "m"), {"trials": 3})
    evaluation._cache_write(str(tmp_path / "cache"), "k", {"metrics": {"fid": 1.0}, "seconds": 1.0, "cpu_s": 1.0,
                                                         "files": {"a.txt": b"abc"}})
    assert written == ["summary.json", resume.STATE_FILE, "k.json"]
    assert evaluation._cache_read(str(tmp_path / "cache"), "k")["files"] == {"a.txt": b"abc"}


# -- reading back: one line naming the file ----------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.95])
def test_truncated_state_file_on_resume_names_it(tmp_path, keep):
    folder = tmp_path / "toy-bayes-s0"
    resume.write_state(str(folder), {"trials": 3, "wall_time_s": 1.0, "start": 0.0, "settings": "{}"})
    assert resume.prepare_dir(str(folder), resume=True)["trials"] == 3
    state = folder / resume.STATE_FILE
    _truncate(state, keep)
    cut = state.read_bytes()
    for read in (lambda: resume.prepare_dir(str(folder), resume=True),
                 lambda: resume.method_name(str(tmp_path), "toy-bayes-s0", 3, resume=True)):
        with pytest.raises(ConfigError) as exc:
            read()
        _one_line_naming(exc, state, f"delete the folder {folder}")
    assert state.read_bytes() == cut  # nothing rewrote the file on the way
    assert resume.read_state(str(tmp_path / "absent")) == {}  # a folder without a state file: a fresh method


def test_state_file_of_another_json_type_is_corrupt(tmp_path):
    (tmp_path / resume.STATE_FILE).write_text("[1, 2]")
    with pytest.raises(ConfigError, match="holds a JSON list"):
        resume.read_state(str(tmp_path))


@pytest.mark.parametrize("how", ["truncated", "garbage", "bad base64", "no metrics"])
def test_corrupt_reporting_cache_entry_on_resume_names_it(tmp_path, how):
    cache = str(tmp_path / evaluation.CACHE_DIR)
    evaluation._cache_write(cache, "k", {"metrics": {"fid": 1.0}, "seconds": 1.0, "cpu_s": 1.0, "files": {"a": b"x"}})
    path = Path(cache) / "k.json"
    entry = json.loads(path.read_text())
    if how == "truncated":
        _truncate(path, 0.5)
    elif how == "garbage":
        path.write_bytes(b"\xff\xfe\x00")
    elif how == "bad base64":
        path.write_text(json.dumps({**entry, "files": {"a": "not base64!"}}))
    else:
        path.write_text(json.dumps({"files": {}}))
    with pytest.raises(ConfigError) as exc:
        evaluation._cache_read(cache, "k")
    _one_line_naming(exc, path, f"delete it (or the folder {cache})")
    assert evaluation._cache_read(cache, "other") is None  # a missing entry is a cache miss


@pytest.mark.parametrize("name", ["results.json", "run_info.json"])
def test_truncated_results_in_benchmarks_md_is_one_line(tmp_path, capsys, name):
    atomic_write_json(str(tmp_path / "results.json"), [ROW], indent=1)
    atomic_write_json(str(tmp_path / "run_info.json"), {"argv": ["compare.py"]}, indent=1)
    _truncate(tmp_path / name, 0.6)
    assert benchmarks_md.main([str(tmp_path), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("benchmarks_md.py: error: ") and "\n" not in err and str(tmp_path / name) in err
    assert "rerun the benchmarks/compare.py command" in err


def test_truncated_results_in_variant_md_is_one_line(tmp_path):
    atomic_write_json(str(tmp_path / "results.json"), [ROW], indent=1)
    _truncate(tmp_path / "results.json", 0.3)
    with pytest.raises(SystemExit) as exc:
        variant_md._load(str(tmp_path))
    text = str(exc.value)
    assert text.startswith("variant_md.py: ") and "\n" not in text and "results.json is truncated or corrupt" in text


def test_read_json_reports_emptiness_and_position(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("   ")
    with pytest.raises(ConfigError, match=r"\(empty\); do this"):
        read_json(str(path), "do this")
    path.write_text('{"a": ')
    with pytest.raises(ConfigError, match=r"invalid JSON at byte 6 of 6"):
        read_json(str(path), "do this")
    with pytest.raises(FileNotFoundError):
        read_json(str(tmp_path / "missing.json"), "do this")


# -- a job's ConfigError through the concurrent method pool stays one line ----------------------------------


def test_config_error_of_a_concurrent_job_is_raised_as_itself(ray_local):
    from ray_bilevel.benchmark.pool import run_ordered

    def job(name: str) -> str:
        if name == "bad":
            raise ConfigError("ray_bilevel_compare.json is truncated or corrupt (empty); delete the folder x.")
        return name

    with pytest.raises(ConfigError) as exc:
        run_ordered(job, ["ok", "bad"], 2, log=lambda msg: None)
    assert str(exc.value) == "ray_bilevel_compare.json is truncated or corrupt (empty); delete the folder x."
    assert exc.value.__cause__ is not None  # the remote traceback stays chained, for bugs
