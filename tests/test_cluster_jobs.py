"""The cluster path end to end: a real two-node Ray cluster on this machine with ``ray job submit`` (``slow``), the toy
job example, and examples/cluster (the launcher config and the submit script).

The two-node cluster test starts a private head + worker with ``ray start`` under their own ``--temp-dir``, submits
a job with ``ray job submit`` and kills only the processes it started (never ``ray stop``, which kills every Ray
process of the user on the host). The parsing and validation tests of ``ray_bilevel.tune.cluster`` are in
test_cluster.py.
"""

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import _ray_procs  # noqa: E402 - tests/ helper

# -- a real two-node Ray cluster on this machine ----------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
#: what the job's working-dir upload leaves out on top of .gitignore (.venv, results, caches)
UPLOAD_EXCLUDES = [".git", ".venv", "results", "ray_results", ".pytest_cache", "**/__pycache__", "*.egg-info"]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def listening_hosts(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on ``port`` (IPv4, from /proc/net/tcp)."""
    hosts = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        ip_hex, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            hosts.add(socket.inet_ntoa(bytes.fromhex(ip_hex)[::-1]))
    return hosts


class TwoNodeCluster:
    """``ray start --head`` + one ``ray start --address`` worker, each under its own temp dir.

    Token authentication with a fresh random token given through ``RAY_AUTH_TOKEN`` (never the
    user's ``~/.ray/auth_token``), every port chosen free, the dashboard on 127.0.0.1.
    """

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="rbc", dir="/tmp")  # short: socket paths <= 107 bytes
        self.token = uuid.uuid4().hex
        bin_dir = str(Path(sys.executable).parent)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        self.env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            PATH=bin_dir + os.pathsep + os.environ["PATH"],
            OMP_NUM_THREADS="1",
            HF_HUB_OFFLINE="1",
            RAY_USAGE_STATS_ENABLED="0",
        )
        self.env.pop("RAY_AUTH_TOKEN_PATH", None)
        self.ray = str(Path(bin_dir) / "ray")
        (self.gcs, self.dash, self.client, self.agent1, self.agent2, self.metrics1, self.metrics2,
         self.rtenv1, self.rtenv2, self.grpc1, self.grpc2) = free_ports(11)
        self.dashboard_url = f"http://127.0.0.1:{self.dash}"

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([self.ray, *args], env=env or self.env, capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        head = self.run(
            "start", "--head", "--num-cpus=1", "--num-gpus=0", f"--port={self.gcs}", f"--temp-dir={self.root}/h",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash}",
            f"--ray-client-server-port={self.client}", f"--dashboard-agent-listen-port={self.agent1}",
            f"--dashboard-agent-grpc-port={self.grpc1}", f"--metrics-export-port={self.metrics1}",
            f"--runtime-env-agent-port={self.rtenv1}", "--disable-usage-stats",
        )
        assert head.returncode == 0, head.stdout[-3000:] + head.stderr[-3000:]
        worker = self.run(
            "start", f"--address=127.0.0.1:{self.gcs}", "--num-cpus=1", "--num-gpus=0", f"--temp-dir={self.root}/w",
            '--resources={"rb_worker": 1}', f"--dashboard-agent-listen-port={self.agent2}",
            f"--dashboard-agent-grpc-port={self.grpc2}", f"--metrics-export-port={self.metrics2}",
            f"--runtime-env-agent-port={self.rtenv2}", "--disable-usage-stats",
        )
        assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]

    def stop(self) -> list[int]:
        """Kill exactly the processes of this cluster; returns any that survived."""
        procs = _ray_procs.snapshot(self.root)
        _ray_procs.kill(procs)
        deadline = time.time() + 10
        while _ray_procs.alive(procs) and time.time() < deadline:
            time.sleep(0.2)
        left = _ray_procs.alive(procs)
        shutil.rmtree(self.root, ignore_errors=True)
        return left


@pytest.mark.slow
def test_two_node_cluster_job_submit_with_token_auth(tmp_path):
    """Head + worker via ``ray start``, a job submitted with ``ray job submit --working-dir``.

    The job (``examples/cluster/submit.sh`` running ``compare.py --preset smoke --task toy``;
    ``examples/cluster/toy_job.py`` until compare.py exists) joins with ``--address auto``, runs
    its trials on the worker node only (custom resource ``rb_worker``) and checkpoints to a
    shared ``--storage-path``. Also: the dashboard listens on 127.0.0.1 only, a client with the
    wrong token is refused, and ``init_ray`` is not captured by the running cluster.
    """
    cluster = TwoNodeCluster()
    try:
        t0 = time.time()
        cluster.start()
        started = time.time() - t0
        # the dashboard is bound to loopback only
        assert listening_hosts(cluster.dash) == {"127.0.0.1"}
        # a client without the token is refused, with the mode set as on the head (Ray's token auth)
        no_token = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN"}
        no_token["RAY_AUTH_TOKEN"] = uuid.uuid4().hex
        refused = cluster.run("job", "list", "--address", cluster.dashboard_url, env=no_token, timeout=60)
        assert refused.returncode != 0 and "token" in (refused.stdout + refused.stderr).lower(), refused.stdout

        storage = tmp_path / "shared"
        t1 = time.time()
        if (REPO / "benchmarks" / "compare.py").exists():
            # the real entry point through the real script: examples/cluster/submit.sh -> ray job submit -> compare.py
            out = tmp_path / "compare"
            env = {**cluster.env, "RAY_DASHBOARD": cluster.dashboard_url, "STORAGE": str(storage), "OUT": str(out),
                   "PRESET": "smoke", "RESOURCES": "cpu=1,rb_worker=1"}
            job = subprocess.run(
                [
                    "bash",
                    str(REPO / "examples/cluster/submit.sh"),
                    "--task",
                    "toy",
                    "--methods",
                    "default,bilevel,bayes",
                    "--trials",
                    "2",
                    "--no-plots",
                    "--verbose",
                    "0",
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=500,
            )
            assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
            rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
            assert set(rows) == {"default", "bilevel", "bayes"} and all(r["errors"] == 0 for r in rows.values())
            assert rows["bilevel"]["metric_value"] < rows["default"]["metric_value"]  # the toy's optimum moves x
            info = json.loads((out / "run_info.json").read_text())["config"]
            assert info["address"] == "auto" and info["resources"] == {"cpu": 1.0, "rb_worker": 1.0}
            assert info["preset"] == "smoke" and info["storage_path"] == str(storage)
            assert list(storage.glob("*/*/checkpoint_*")), "no checkpoint reached the shared storage path"
        else:  # until compare.py lands: the toy job
            out = tmp_path / "toy_job.json"
            job = cluster.run(
                "job",
                "submit",
                "--address",
                cluster.dashboard_url,
                "--working-dir",
                str(REPO),
                "--runtime-env-json",
                json.dumps({"excludes": UPLOAD_EXCLUDES}),
                "--",
                "python",
                "examples/cluster/toy_job.py",
                "--address",
                "auto",
                "--resources-per-trial",
                "cpu=1,rb_worker=1",
                "--storage-path",
                str(storage),
                "--iterations",
                "30",
                "--out",
                str(out),
                timeout=400,
            )
            assert job.returncode == 0 and "OK" in job.stdout, job.stdout[-4000:] + job.stderr[-4000:]
            summary = json.loads(out.read_text())
            assert summary["ok"] and summary["nodes_alive"] == 2 and summary["address"] == "auto"
            assert summary["cluster_resources"]["rb_worker"] == 1.0
            assert all(t["dist_to_opt"] < 1e-2 and t["training_iteration"] == 30 for t in summary["trials"])
            assert len(list(storage.glob("toy_job/*/checkpoint_*"))) >= 2
        submitted = time.time() - t1

        # init_ray(None/"local") is not captured by a running cluster; raw ray.init(num_cpus=...) is
        probe = textwrap.dedent(
            f"""
            import ray
            from ray_bilevel.tune.cluster import init_ray
            try:
                ray.init(num_cpus=1, _temp_dir={cluster.root + '/h'!r})
            except ValueError as exc:
                print("TRAPPED", str(exc).splitlines()[0])
            init_ray("auto", _temp_dir={cluster.root + '/h'!r})
            print("AUTO", ray.cluster_resources().get("rb_worker"))
            ray.shutdown()
            init_ray(None, num_cpus=1, _temp_dir={cluster.root + '/p'!r})
            print("LOCAL", ray.cluster_resources().get("rb_worker"), ray.cluster_resources()["CPU"])
            ray.shutdown()
            """
        )
        res = subprocess.run(
            [sys.executable, "-c", probe], env=cluster.env, capture_output=True, text=True, timeout=240
        )
        assert (
            "TRAPPED When connecting to an existing cluster, num_cpus and num_gpus must not be provided" in res.stdout
        ), res.stdout + res.stderr[-3000:]
        assert "AUTO 1.0" in res.stdout and "LOCAL None 1.0" in res.stdout, res.stdout + res.stderr[-3000:]
        print(f"cluster start {started:.1f}s, job {submitted:.1f}s")
    finally:
        left = cluster.stop()
    assert not left, f"processes of the test cluster survived: {left}"


def test_toy_job_example_reaches_the_optimum(ray_local, tmp_path):
    """examples/cluster/toy_job.py in-process on the shared local instance (the cluster test submits it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("toy_job", REPO / "examples/cluster/toy_job.py")
    toy_job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy_job)
    out = tmp_path / "toy.json"
    code = toy_job.main(
        ["--storage-path", str(tmp_path / "ray"), "--iterations", "30", "--out", str(out), "--seeds", "0", "3"]
    )
    summary = json.loads(out.read_text())
    assert code == 0 and summary["ok"] and [t["seed"] for t in summary["trials"]] == [0, 3]
    assert all(t["dist_to_opt"] < 1e-2 and t["training_iteration"] == 30 for t in summary["trials"])
    assert toy_job.main(["--resources-per-trial", "gpu=1.5"]) == 2  # one-line error, exit status 2


# -- examples/cluster: the launcher config and the submit script --------------------------------------
def test_cluster_yaml_is_a_valid_launcher_config_with_safe_defaults():
    yaml = pytest.importorskip("yaml")
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "examples/cluster/cluster.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)  # Ray's own JSON schema for `ray up`
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c and "--disable-usage-stats" in c for c in starts)
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("pip install" in c and "-e /home/ray/ray_bilevel" in c for c in config["setup_commands"])
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert workers and all(v["node_config"]["InstanceType"].startswith(("g", "p")) for v in workers.values())
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}


def _submit(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("STORAGE", "OUT", "RESOURCES", "PRESET", "RAY_AUTH_MODE")}
    env.update(DRY_RUN="1", **env_extra)
    return subprocess.run(
        ["bash", str(REPO / "examples/cluster/submit.sh"), *args], env=env, capture_output=True, text=True, timeout=30
    )


def test_submit_script_builds_the_job_command():
    out = _submit({}, "--task", "reward_lambda")
    assert out.returncode == 0, out.stderr
    argv = shlex.split(out.stdout)
    sep = argv.index("--")
    job, entry = argv[:sep], argv[sep + 1 :]
    assert job[:3] == ["ray", "job", "submit"] and job[job.index("--address") + 1] == "http://127.0.0.1:8265"
    assert job[job.index("--working-dir") + 1] == "."
    assert ".venv" in json.loads(job[job.index("--runtime-env-json") + 1])["excludes"]
    assert entry[:2] == ["python", "benchmarks/compare.py"]
    opts = dict(zip(entry[2::2], entry[3::2]))
    assert opts["--preset"] == "paper" and opts["--address"] == "auto" and opts["--task"] == "reward_lambda"
    assert opts["--resources-per-trial"] == "cpu=2,gpu=0.5" and opts["--storage-path"] == "/mnt/shared/ray_bilevel"
    assert opts["--out"] == "/mnt/shared/ray_bilevel/compare"
    # the flags compare.py actually has (its parser lives in ray_bilevel/benchmark/cli.py)
    from ray_bilevel.benchmark.cli import parse_args

    cfg = parse_args(["--preset", "paper", "--address", "auto", "--resources-per-trial", "cpu=2,gpu=0.5",
                      "--storage-path", "/mnt/shared/ray_bilevel", "--out", "/mnt/shared/ray_bilevel/compare",
                      "--resume"])
    assert (cfg.preset, cfg.address, cfg.resume) == ("paper", "auto", True)


def test_submit_script_refuses_bad_storage_and_out():
    rel = _submit({"STORAGE": "shared/results"})
    assert rel.returncode == 2 and "STORAGE must be an absolute folder or a URI" in rel.stderr
    uri = _submit({"STORAGE": "s3://bucket/rb"})
    assert uri.returncode == 2 and "set OUT to an absolute folder on the head node" in uri.stderr
    ok = _submit({"STORAGE": "s3://bucket/rb", "OUT": "/home/ray/compare", "RESOURCES": "cpu=4,gpu=1"}, "--resume")
    assert (
        ok.returncode == 0 and "--storage-path s3://bucket/rb" in ok.stdout and ok.stdout.strip().endswith("--resume")
    )
    bad_out = _submit({"OUT": "compare"})
    assert bad_out.returncode == 2 and "OUT must be an absolute folder" in bad_out.stderr
