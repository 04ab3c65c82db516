"""ray_bilevel.tune.cluster: per-trial resources, storage paths, joining/starting Ray.

These tests start no Ray cluster of their own. The two-node cluster, ``ray job submit`` and the
examples/cluster tests are in test_cluster_jobs.py.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from ray_bilevel.config import ConfigError
from ray_bilevel.tune.cluster import (
    check_resources_fit,
    format_resources,
    init_ray,
    is_uri,
    parse_resources,
    validate_storage_path,
)


# -- parse_resources --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("cpu=1,gpu=0.5", {"cpu": 1.0, "gpu": 0.5}),
        (" CPUS = 2 , GPUS=1 ", {"cpu": 2.0, "gpu": 1.0}),
        ("cpu=0.5", {"cpu": 0.5}),
        ("gpu=2,cpu=4,memory=2000000000", {"gpu": 2.0, "cpu": 4.0, "memory": 2e9}),
        ("cpu=1,accelerator_type:A100=0.1", {"cpu": 1.0, "accelerator_type:A100": 0.1}),
        ('{"cpu": 2, "gpu": 0.25}', {"cpu": 2.0, "gpu": 0.25}),
        ({"num_cpus": 1, "num_gpus": 0.5}, {"cpu": 1.0, "gpu": 0.5}),
        ("cpu=0,gpu=1", {"cpu": 0.0, "gpu": 1.0}),
    ],
)
def test_parse_resources_accepts_flag_json_and_dict(spec, expected):
    assert parse_resources(spec) == expected


def test_parse_resources_default_and_round_trip():
    assert parse_resources(None) == {"cpu": 1.0}
    assert parse_resources("  ") == {"cpu": 1.0}
    assert parse_resources(None, default={"cpu": 2, "gpu": 1}) == {"cpu": 2, "gpu": 1}
    spec = {"cpu": 1.5, "gpu": 0.25, "custom": 3.0}
    assert parse_resources(format_resources(spec)) == spec
    assert format_resources({"cpu": 1.0, "gpu": 0.5}) == "cpu=1,gpu=0.5"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cpu", "write key=value pairs"),
        ("cpu=1,,gpu=1", "write key=value pairs"),
        ("cpu=one", "must be a number, got 'one'"),
        ("cpu=-1", "finite number >= 0"),
        ("gpu=nan", "finite number >= 0"),
        ("gpu=1.5", "use gpu=1 or gpu=2"),
        ("gpu=0.00001", "below Ray's precision"),
        ("cpu=0,gpu=0", "ask for nothing"),
        ("cpu=1,cpus=2", "given twice"),
        ("cpu=1,cpu=2", "given twice"),
        ('{"cpu": 1', "not valid JSON"),
        ("[1, 2]", "write key=value pairs"),
        ({"cpu": True}, "must be a number"),
    ],
)
def test_parse_resources_rejects_with_the_fix(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_resources(spec)


def test_resources_larger_than_the_cluster_are_refused():
    cluster = {"CPU": 2.0, "memory": 8e9, "node:127.0.0.1": 1.0}
    check_resources_fit({"cpu": 2.0}, cluster)  # fits exactly
    check_resources_fit({"cpu": 0.5, "memory": 1e9}, cluster)
    with pytest.raises(ConfigError, match=r"asks for gpu=0\.5 but the whole Ray cluster has gpu=0; drop gpu from "
                                          r"--resources-per-trial"):
        check_resources_fit({"cpu": 1.0, "gpu": 0.5}, cluster)
    with pytest.raises(ConfigError, match=r"asks for cpu=4 but the whole Ray cluster has cpu=2; lower cpu \(at most "
                                          r"cpu=2\) in --resources-per-trial"):
        check_resources_fit({"cpu": 4.0}, cluster)
    check_resources_fit({"cpu": 64.0, "gpu": 8.0}, cluster, autoscaling=True)


# -- storage paths ----------------------------------------------------------------------------
def test_storage_path_absolute_folder_is_created_and_returned(tmp_path):
    target = tmp_path / "a" / "b"
    assert validate_storage_path(str(target)) == str(target)
    assert target.is_dir() and not list(target.iterdir())  # the write probe leaves nothing behind
    assert validate_storage_path(None) is None
    assert validate_storage_path(f"file://{target}") == f"file://{target}"


@pytest.mark.parametrize("uri", ["s3://bucket/experiments", "gs://b/x", "hdfs://nn:8020/x", "abfss://c@a.dfs.core.windows.net/x"])
def test_storage_path_uris_pass_without_network(uri):
    assert is_uri(uri)
    assert validate_storage_path(uri) == uri


def test_storage_path_errors_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"must be absolute.*use '{tmp_path}/results'"):
        validate_storage_path("results")
    with pytest.raises(ConfigError, match="unknown scheme 'ftp'"):
        validate_storage_path("ftp://host/x")
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        validate_storage_path(str(a_file))
    with pytest.raises(ConfigError, match="cannot create storage_path '/proc/ray_bilevel_results'"):
        validate_storage_path("/proc/ray_bilevel_results")
    with pytest.raises(ConfigError, match="does not exist"):
        validate_storage_path(str(tmp_path / "missing"), create=False)
    with pytest.raises(ConfigError, match="absolute folder or a URI"):
        validate_storage_path("  ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_storage_path_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(ConfigError, match="is not writable"):
            validate_storage_path(str(ro))
    finally:
        ro.chmod(stat.S_IRWXU)


# -- init_ray (no cluster needed for these) -----------------------------------------------------
def test_init_ray_rejects_bad_arguments_before_starting_ray():
    import ray

    if ray.is_initialized():
        pytest.skip("another test already started Ray")
    with pytest.raises(ConfigError, match="num_cpus must be a number >= 0"):
        init_ray("local", num_cpus=-1)
    with pytest.raises(ConfigError, match="address must be None"):
        init_ray(6379)  # type: ignore[arg-type]
    assert not ray.is_initialized()


def test_init_ray_without_a_cluster_names_the_fix(tmp_path):
    """``--address auto`` with no cluster: a one-line error, not Ray's multi-line traceback.

    Run in a subprocess that sees no cluster: RAY_ADDRESS unset, an empty Ray temp dir (no
    ``ray_current_cluster`` file) and Ray's scan for running GCS processes emptied (on a shared
    machine, "auto" would otherwise join anyone's instance; see init_ray's docstring).
    """
    code = (
        "import functools\nimport ray._private.services as s\n"
        "s.find_gcs_addresses = functools.lru_cache()(lambda: [])\n"
        "import ray_bilevel.tune.cluster as c\n"
        f"try:\n    c.init_ray('auto', _temp_dir={str(tmp_path)!r})\n"
        "except c.ConfigError as e:\n    print('ERR', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("ERR")]
    assert line, out.stdout + out.stderr
    assert "no Ray cluster found at address 'auto'" in line[0] and "ray start --head" in line[0]
