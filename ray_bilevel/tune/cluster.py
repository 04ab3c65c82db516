"""Running on a laptop or a Ray cluster: per-trial resources, connecting, result storage.

Three things every entry point (``benchmarks/compare.py``, the examples, a user's script) needs
before it hands trials to Tune, each checked up front with a one-line error that names the fix:

* :func:`parse_resources` — ``"cpu=1,gpu=0.5"`` (the ``--resources-per-trial`` flag), JSON or a
  dict → the dict :func:`ray.tune.with_resources` takes. Fractional GPUs share a GPU between
  trials. :func:`check_resources_fit` refuses a trial larger than the whole cluster (Tune would
  otherwise wait forever for resources that never come).
* :func:`init_ray` — ``address=None`` / ``"local"`` start a private local instance (a cluster
  started with ``ray start`` on the same machine would otherwise *capture* ``ray.init()``,
  and then refuse ``num_cpus``); ``"auto"`` or ``"host:port"`` / ``"ray://..."`` join a cluster;
  inside ``ray job submit`` (``RAY_ADDRESS`` set) ``None`` joins the job's cluster.
* :func:`validate_storage_path` — Tune's ``storage_path`` must be an absolute path or a URI
  (``s3://``, ``gs://``, ...); a local folder must be writable.
* :func:`check_objective` — ``metric``/``mode`` for ``tune.TuneConfig`` and the searchers: a
  metric whose direction is known (``fid`` is minimised, ``alignment`` maximised) must not be
  optimised the wrong way.

Nothing here listens on a network interface: a local instance has no dashboard unless asked,
and then it binds to 127.0.0.1.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ray_bilevel.config import ConfigError

__all__ = [
    "parse_resources",
    "format_resources",
    "check_resources_fit",
    "init_ray",
    "validate_storage_path",
    "is_uri",
    "check_objective",
    "URI_SCHEMES",
    "DEFAULT_RESOURCES",
]

#: What one trial gets when nothing is asked for.
DEFAULT_RESOURCES: dict[str, float] = {"cpu": 1.0}

#: URI schemes Tune's storage (pyarrow.fs) understands.
URI_SCHEMES = frozenset({"s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az", "file", "mock"})

_ALIASES = {
    "cpu": "cpu",
    "cpus": "cpu",
    "num_cpus": "cpu",
    "gpu": "gpu",
    "gpus": "gpu",
    "num_gpus": "gpu",
    "memory": "memory",
}
_RAY_NAMES = {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}
_RESOURCE_UNIT = 1e-4  # Ray's resource precision


def parse_resources(
    spec: str | Mapping[str, Any] | None, default: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Per-trial resources from ``"cpu=1,gpu=0.5"``, a JSON object or a mapping.

    Keys ``cpu``/``cpus``, ``gpu``/``gpus`` and ``memory`` (bytes) are case-insensitive; any
    other key is a custom Ray resource and keeps its case. Values are numbers >= 0; a GPU
    share above one GPU must be whole (``gpu=0.5`` shares a GPU between two trials, ``gpu=2``
    gives a trial two GPUs, ``gpu=1.5`` is refused). Empty or ``None`` gives ``default``
    (``{"cpu": 1}``).

    Returns:
        ``{"cpu": c, "gpu": g, ...}`` for :func:`ray.tune.with_resources`.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return dict(DEFAULT_RESOURCES if default is None else default)
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"resources {spec!r} are not valid JSON ({exc.msg}); write e.g. "
                                  "cpu=1,gpu=0.5.") from None
            if not isinstance(items, dict):
                raise ConfigError(f"resources {spec!r} must be a JSON object; write e.g. cpu=1,gpu=0.5.")
        else:
            items = {}
            for part in text.split(","):
                key, sep, value = part.partition("=")
                if not sep or not key.strip() or not value.strip():
                    raise ConfigError(f"cannot read {part.strip()!r} in resources {spec!r}; write key=value pairs, "
                                      "e.g. cpu=1,gpu=0.5.")
                if key.strip() in items:
                    raise ConfigError(f"resource {key.strip()!r} is given twice in {spec!r}; give each resource once.")
                items[key.strip()] = value.strip()
    elif isinstance(spec, Mapping):
        items = dict(spec)
    else:
        raise ConfigError(f"resources must be a string like 'cpu=1,gpu=0.5' or a dict, got {spec!r}.")

    out: dict[str, float] = {}
    for raw_key, raw_value in items.items():
        key = _ALIASES.get(str(raw_key).lower(), str(raw_key))
        if key in out:
            raise ConfigError(f"resource {key!r} is given twice in {spec!r}; give each resource once.")
        out[key] = _quantity(key, raw_value)
    if all(v == 0 for v in out.values()):
        raise ConfigError(f"resources {spec!r} ask for nothing; give each trial something, e.g. cpu=1 (or cpu=0.5).")
    return out


def _quantity(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"resource {key!r} must be a number, got {value!r}.")
    try:
        q = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"resource {key!r} must be a number, got {value!r}; e.g. {key}=1.") from None
    if not math.isfinite(q) or q < 0:
        raise ConfigError(f"resource {key!r} must be a finite number >= 0, got {value!r}.")
    if 0 < q < _RESOURCE_UNIT:
        raise ConfigError(f"resource {key!r}={value!r} is below Ray's precision of {_RESOURCE_UNIT}; use at least "
                          f"{_RESOURCE_UNIT}.")
    if key == "gpu" and q > 1 and not q.is_integer():
        raise ConfigError(
            f"gpu={q:g}: a trial can share one GPU (gpu < 1) or own whole GPUs; use gpu={math.floor(q)} or "
            f"gpu={math.ceil(q)}."
        )
    return q


def format_resources(resources: Mapping[str, float]) -> str:
    """Inverse of :func:`parse_resources` for logs and CLI echo: ``"cpu=1,gpu=0.5"``."""
    return ",".join(f"{k}={float(v):g}" for k, v in resources.items())


def check_resources_fit(
    resources: Mapping[str, float],
    cluster: Mapping[str, float] | None = None,
    *,
    autoscaling: bool = False,
) -> None:
    """Refuse per-trial ``resources`` that no node set of the cluster can ever provide.

    ``cluster`` is Ray's resource total (``ray.cluster_resources()``, keys ``CPU``/``GPU``/
    ``memory``/custom), read from the running instance when omitted. With ``autoscaling=True``
    (a cluster launcher config that adds nodes on demand) the check is skipped.
    """
    if autoscaling:
        return
    if cluster is None:
        import ray

        if not ray.is_initialized():
            raise ConfigError("check_resources_fit needs a running Ray instance; call init_ray() first.")
        cluster = ray.cluster_resources()
    for key, need in resources.items():
        have = float(cluster.get(_RAY_NAMES.get(key, key), 0.0))
        if need > have + 1e-9:
            fix = f"drop {key} from" if have == 0 else f"lower {key} (at most {key}={have:g}) in"
            raise ConfigError(
                f"each trial asks for {key}={need:g} but the whole Ray cluster has {key}={have:g}; "
                f"{fix} --resources-per-trial, or add nodes with that resource."
            )


def _installed() -> bool:
    try:
        metadata.distribution("ray_bilevel")
    except metadata.PackageNotFoundError:
        return False
    return True


def init_ray(
    address: str | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    *,
    include_dashboard: bool = False,
    log_to_driver: bool = False,
    runtime_env: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> str:
    """Start or join Ray; returns ``"local"`` or the address joined.

    * ``address=None``: inside a submitted job (``RAY_ADDRESS`` set) join that cluster;
      otherwise start a *private* local instance, never captured by a cluster already running
      on this machine.
    * ``"local"``: always a private local instance with ``num_cpus``/``num_gpus``.
    * ``"auto"``, ``"host:port"`` or ``"ray://host:10001"``: join an existing cluster; its
      resources count, so ``num_cpus``/``num_gpus`` are ignored with a warning.

    ``"auto"`` is Ray's: ``RAY_ADDRESS``, else the address ``ray start`` recorded in the Ray temp
    dir, else *any* Ray instance found running on this machine. On a machine shared with others,
    give ``host:port`` instead.

    A local instance has no dashboard unless ``include_dashboard=True``, and then it listens on
    127.0.0.1 only. If Ray is already initialised, nothing changes. If ``ray_bilevel`` is not
    installed (only on ``sys.path``), a local instance passes its folder to the workers through
    ``PYTHONPATH`` (Ray workers import the package; a ``sys.path`` change in the driver does not reach them).
    """
    import ray

    if ray.is_initialized():
        return "local" if address in (None, "local") else str(address)
    if address is not None and not isinstance(address, str):
        raise ConfigError(f"address must be None, 'local', 'auto', 'host:port' or 'ray://host:port', got {address!r}.")
    target = address.strip() if address else None
    if target is None and os.environ.get("RAY_ADDRESS"):
        target = os.environ["RAY_ADDRESS"]
    for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigError(f"{name} must be a number >= 0, got {value!r}.")

    if target in (None, "local"):
        env = dict(runtime_env or {})
        if not _installed() and "env_vars" not in env:
            src = str(Path(__file__).resolve().parents[2])
            pythonpath = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
            env["env_vars"] = {"PYTHONPATH": pythonpath}
        options: dict[str, Any] = {"include_dashboard": include_dashboard, "log_to_driver": log_to_driver}
        if include_dashboard:
            options["dashboard_host"] = kwargs.pop("dashboard_host", "127.0.0.1")
        # Ray annotates num_cpus/num_gpus as int; this function passes on any number >= 0 it validated above
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, runtime_env=env or None, **options, **kwargs)  # type: ignore[arg-type]
        return "local"

    ignored = [f"{n}={v}" for n, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus)) if v is not None]
    if ignored:
        warnings.warn(
            f"{', '.join(ignored)} ignored: joining the Ray cluster at {target!r} uses its resources; "
            "use address='local' for a private instance.",
            UserWarning,
            stacklevel=2,
        )
    try:
        ray.init(
            address=target,
            log_to_driver=log_to_driver,
            runtime_env=dict(runtime_env) if runtime_env else None,
            **kwargs,
        )
    except ConnectionError as exc:
        raise ConfigError(
            f"no Ray cluster found at address {target!r} ({str(exc).splitlines()[0]}); "
            "start one with `ray start --head`, or drop --address to run on a private local instance."
        ) from None
    except Exception as exc:  # noqa: BLE001 - give the auth mismatch a fix
        text = str(exc)
        if "auth" in text.lower() or "token" in text.lower():
            raise ConfigError(
                f"the Ray cluster at {target!r} refused the connection ({text.splitlines()[0]}); "
                "set RAY_AUTH_MODE (and the token, ~/.ray/auth_token or RAY_AUTH_TOKEN) as on the head node."
            ) from None
        raise
    return target


def is_uri(path: str) -> bool:
    """``True`` for ``scheme://...`` (not for a Windows drive letter)."""
    parsed = urlparse(str(path))
    return bool(parsed.scheme) and len(parsed.scheme) > 1 and "://" in str(path)


def validate_storage_path(path: str | os.PathLike[str] | None, *, create: bool = True) -> str | None:
    """Check Tune's ``storage_path``: an absolute, writable folder or a URI Tune can use.

    ``None`` stays ``None`` (Tune's default, ``~/ray_results``). ``~`` is expanded. A local
    folder is created (``create=True``) and probed with a temporary file; a URI is checked for
    its scheme only (no network access here). ``file://`` URIs are checked like folders.

    Returns:
        The path as Tune should get it (a string).
    """
    if path is None:
        return None
    text = os.fspath(path)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"storage_path must be an absolute folder or a URI, got {path!r}.")
    if is_uri(text):
        scheme = urlparse(text).scheme.lower()
        if scheme not in URI_SCHEMES:
            raise ConfigError(f"storage_path {text!r} has an unknown scheme {scheme!r}; use an absolute folder or one "
                              f"of {sorted(URI_SCHEMES)}.")
        if scheme != "file":
            return text
        local = urlparse(text).path
        _check_folder(local, text, create)
        return text
    expanded = os.path.expanduser(text)
    if not os.path.isabs(expanded):
        raise ConfigError(
            f"storage_path must be absolute (Tune's rule) or a URI, got {text!r}; use {os.path.abspath(expanded)!r}."
        )
    _check_folder(expanded, text, create)
    return expanded


def _check_folder(folder: str, shown: str, create: bool) -> None:
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"storage_path {shown!r} is a file, not a folder; pick a folder.")
    if not os.path.isdir(folder):
        if not create:
            raise ConfigError(f"storage_path {shown!r} does not exist; create it or pick an existing folder.")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create storage_path {shown!r} ({exc.strerror}); pick a writable folder or a "
                              "URI.") from None
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ray_bilevel_write_test_"):
            pass
    except OSError as exc:
        raise ConfigError(f"storage_path {shown!r} is not writable ({exc.strerror}); pick a writable folder or a "
                          "URI.") from None


def check_objective(metric: str, mode: str, task: Any = None) -> None:
    """Refuse an objective Tune would optimise the wrong way (e.g. ``metric="fid", mode="max"``).

    ``mode`` must be ``"min"`` or ``"max"``. The direction of ``metric`` is what the task declares
    (``Task.metric_mode``) when ``task`` — a name or class — is given, else what the first registered task
    that reports ``metric`` declares; an unknown metric is accepted as given.
    """
    if mode not in ("min", "max"):
        raise ConfigError(f"mode must be 'min' or 'max', got {mode!r}.")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"metric must be the name of a reported value such as 'fid_domain', got {metric!r}.")
    from ray_bilevel.tasks import get_task, registered_tasks

    classes = [get_task(task)] if task is not None else [get_task(name) for name in registered_tasks()]
    expected = next((m for m in (cls.metric_mode(metric) for cls in classes) if m is not None), None)
    if expected is not None and expected != mode:
        better = "lower" if expected == "min" else "higher"
        raise ConfigError(f"metric {metric!r} is better {better}, but mode={mode!r} would optimise it the wrong way; "
                          f"use mode={expected!r}.")
