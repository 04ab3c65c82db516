"""The bad-input catalogue (docs/bad_inputs.md, issue 6 item 5): every row is tested here.

The catalogue is the single source of the expected messages: each row names the exception (or
warning) class and one or more backticked excerpts that must appear in its message, and the
message must be one line. :data:`TRIGGERS` holds, per row id, a function that feeds the bad
input through the public API. :func:`test_catalogue_and_triggers_agree` keeps both in step;
rows tested in another file name that test in their last column.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ray_bilevel import BilevelTrainable
from ray_bilevel.config import ConfigError
from ray_bilevel.tasks import get_task
from ray_bilevel.tasks.toy import ToyTask
from ray_bilevel.tune.cluster import check_objective, check_resources_fit, parse_resources, validate_storage_path
from ray_bilevel.tune.trainable import _FORMAT, CHECKPOINT_FILE

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO / "docs" / "bad_inputs.md"


# -- helpers ------------------------------------------------------------------------------------
def task(name: str) -> type:
    """A registered task class (a broken import fails the test)."""
    return get_task(name)


def module(name: str) -> Any:
    return importlib.import_module(name)


def compare_main(argv: list[str]) -> int:
    path = REPO / "benchmarks" / "compare.py"
    spec = importlib.util.spec_from_file_location("_compare_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.main(argv)


class CLIError(Exception):
    """What compare.py printed on stderr when it exited with status 2."""


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = compare_main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err.strip()
    if code == 2:
        last = err.splitlines()[-1] if err else ""
        raise CLIError(last)
    raise AssertionError(f"compare.py exited {code}, expected 2; stderr: {err}")


def npz(tmp: Path, images: np.ndarray) -> Path:
    path = tmp / "images.npz"
    np.savez(path, images=images)
    return path


def checkpoint_dir(tmp: Path, payload: Any | None = None, raw: bytes | None = None) -> str:
    folder = tmp / "ckpt"
    folder.mkdir(exist_ok=True)
    if raw is not None:
        (folder / CHECKPOINT_FILE).write_bytes(raw)
    elif payload is not None:
        torch.save(payload, folder / CHECKPOINT_FILE)
    return str(folder)


def load_into_toy(folder: str) -> None:
    t = BilevelTrainable(config={"task": "toy", "preset": "smoke"})
    try:
        t.load_checkpoint(folder)
    finally:
        t.stop()


class _Boom:
    """A pickle payload that would run code on load (creates a marker file): weights_only refuses it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


class NaNMetricToy(ToyTask):
    """The toy whose evaluator returns NaN (as a broken FID would)."""

    def evaluate(self, final: bool = False) -> dict[str, float]:
        return {**super().evaluate(final), "upper_loss": math.nan}


def train(config: dict[str, Any], iterations: int) -> None:
    t = BilevelTrainable(config=config)
    try:
        for _ in range(iterations):
            t.train()
    finally:
        t.stop()


def ns(overrides: dict[str, Any]) -> Any:
    return task("noise_schedule")({"preset": "smoke", **overrides})


def unet(**kw: Any) -> Any:
    from ray_bilevel.diffusion import build_unet

    return build_unet(**kw)


def digit_features(images: torch.Tensor) -> torch.Tensor:
    return module("ray_bilevel.metrics.features").digit_extractor()(images)


def fid_stats(d: int, fill: float | None = None) -> Any:
    fid = module("ray_bilevel.metrics.fid")
    x = torch.randn(8, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64)
    if fill is not None:
        x[0, 0] = fill
    return fid.feature_stats(x)


def make_searcher(**kw: Any) -> Any:
    from ray_bilevel.tasks import get_task
    from ray_bilevel.tune.searchers import make_searcher as make

    return make(space=get_task("noise_schedule").search_space(), **kw)


# -- the triggers, by catalogue id -----------------------------------------------------------------
Trigger = Callable[[Path, Any], Any]
TRIGGERS: dict[str, Trigger] = {
    # configuration and tasks
    "B01": lambda tmp, cap: BilevelTrainable(config={"task": "tyo"}),
    "B02": lambda tmp, cap: BilevelTrainable(config={"seed": 0}),
    "B03": lambda tmp, cap: ToyTask({"preset": "quik"}),
    "B04": lambda tmp, cap: ToyTask({"gama": 3}),
    "B05": lambda tmp, cap: ToyTask({"seed": "zero"}),
    "B06": lambda tmp, cap: ns({"outer_steps": 0}),
    "B07": lambda tmp, cap: BilevelTrainable(config={"task": "toy", "iterations_per_step": 0}),
    "B08": lambda tmp, cap: cli(["--task", "toy", "--trials", "0", "--out", str(tmp / "o")], cap),
    "B09": lambda tmp, cap: (
        ns({"device": "cuda"}) if not torch.cuda.is_available() else pytest.skip("a GPU is visible")
    ),
    # noise schedules
    "B10": lambda tmp, cap: ns({"start": 0.9, "end": 0.4}),
    "B11": lambda tmp, cap: ns({"tau": 0.0}),
    "B12": lambda tmp, cap: __import__("ray_bilevel.schedules", fromlist=["x"]).NoiseSchedule(
        "cosine", "paper", 1000, end=0.5
    ),
    "B13": lambda tmp, cap: ns({"end": 1.5}),
    "B14": lambda tmp, cap: ns({"family": "linear"}),
    "B15": lambda tmp, cap: ns({"zo_steps": 200}),
    # data
    "B16": lambda tmp, cap: __import__("ray_bilevel.data", fromlist=["x"]).load_images(
        npz(tmp, np.zeros((0, 8, 8), np.uint8))
    ),
    "B17": lambda tmp, cap: __import__("ray_bilevel.data", fromlist=["x"]).load_images(tmp),
    "B18": lambda tmp, cap: __import__("ray_bilevel.data", fromlist=["x"]).load_images(
        npz(tmp, np.zeros((4, 2, 8, 8), np.uint8))
    ),
    "B19": lambda tmp, cap: digit_features(torch.zeros(2, 2, 16, 16)),
    "B20": lambda tmp, cap: __import__("ray_bilevel.data", fromlist=["x"]).load_images(
        npz(tmp, np.full((4, 8, 8), 255.0, np.float32))
    ),
    "B21": lambda tmp, cap: __import__("ray_bilevel.data", fromlist=["x"]).load_images(
        npz(tmp, np.full((4, 8, 8), np.nan, np.float32))
    ),
    "B22": lambda tmp, cap: __import__("ray_bilevel.data", fromlist=["x"]).load_images("mnist"),
    "B23": lambda tmp, cap: __import__("ray_bilevel.data", fromlist=["x"]).load_images(tmp / "missing.npz"),
    # models
    "B24": lambda tmp, cap: unet(image_size=28, block_out_channels=(16, 32, 32, 32)),
    "B25": lambda tmp, cap: unet(image_size=16, block_out_channels=(12, 24)),
    # estimators and objectives
    "B26": lambda tmp, cap: __import__("ray_bilevel.estimators.entropy_lambda", fromlist=["x"]).lambda_hypergradient(
        [0.1, 0.2], [0.3, 0.4], lam=0.0, gamma=1.0
    ),
    "B27": lambda tmp, cap: ToyTask({"gamma": 0}),
    "B28": lambda tmp, cap: __import__("ray_bilevel.estimators.entropy_lambda", fromlist=["x"]).lambda_hypergradient(
        [0.1, float("nan")], [0.3, 0.4], lam=1.0, gamma=1.0
    ),
    "B29": lambda tmp, cap: train({"task": "toy", "preset": "smoke", "lr_x": 1e30}, 20),
    "B30": lambda tmp, cap: train({"task": NaNMetricToy, "preset": "smoke"}, 1),
    "B31": lambda tmp, cap: fid_stats(3, fill=float("nan")),
    "B32": lambda tmp, cap: module("ray_bilevel.metrics.fid").frechet_distance(fid_stats(3), fid_stats(5)),
    "B33": lambda tmp, cap: digit_features(torch.full((2, 1, 16, 16), 3.0)),
    # weights and checkpoints
    "B34": lambda tmp, cap: module("ray_bilevel.metrics.alignment").CLIPScore.from_pretrained(
        "openai/clip-vit-base-patch16"
    ),
    "B35": lambda tmp, cap: load_into_toy(checkpoint_dir(tmp)),
    "B36": lambda tmp, cap: load_into_toy(checkpoint_dir(tmp, raw=b"\x80\x04garbage")),
    "B37": lambda tmp, cap: load_into_toy(
        checkpoint_dir(tmp, payload={"format": "something/else", "weights": torch.ones(2)})
    ),
    "B38": lambda tmp, cap: load_into_toy(
        checkpoint_dir(tmp, payload={"format": _FORMAT, "x": _Boom(str(tmp / "pwned"))})
    ),
    "B39": lambda tmp, cap: load_into_toy(
        checkpoint_dir(
            tmp,
            payload={"format": _FORMAT, "trainable": "BilevelTrainable", "task": "noise_schedule", "task_state": {}},
        )
    ),
    # search and the harness
    "B40": lambda tmp, cap: make_searcher(name="bayesian", metric="fid_domain", mode="min"),
    "B41": lambda tmp, cap: make_searcher(name="random", metric="fid_domain", mode="minimize"),
    "B42": lambda tmp, cap: check_objective("fid", "max"),
    "B43": lambda tmp, cap: cli(["--task", "toy", "--methods", "bilevel,hyperband", "--out", str(tmp / "o")], cap),
    "B44": lambda tmp, cap: cli(["--task", "tyo", "--out", str(tmp / "o")], cap),
    "B45": lambda tmp, cap: cli(["--preset", "quik"], cap),
    # cluster, resources, storage
    "B46": lambda tmp, cap: check_resources_fit({"cpu": 1.0, "gpu": 1.0}, {"CPU": 2.0, "memory": 8e9}),
    "B47": lambda tmp, cap: cli(["--task", "toy", "--resources-per-trial", "gpu=1.5", "--out", str(tmp / "o")], cap),
    "B48": lambda tmp, cap: parse_resources("cpus=two"),
    "B49": lambda tmp, cap: cli(["--task", "toy", "--storage-path", "relative/results", "--out", str(tmp / "o")], cap),
    "B50": lambda tmp, cap: validate_storage_path("/proc/ray_bilevel_results"),
    "B51": lambda tmp, cap: validate_storage_path("ftp://host/results"),
    # application 1 (reward_lambda)
    "B54": lambda tmp, cap: task("reward_lambda")({"preset": "smoke", "lam": 0.0}),
    "B55": lambda tmp, cap: task("reward_lambda")({"preset": "smoke", "model": "sd"}),
    "B56": lambda tmp, cap: task("reward_lambda")({"preset": "smoke", "prompt": "a cat"}),
    "B58": lambda tmp, cap: task("reward_lambda")({"preset": "smoke", "y_star": 50.0}),
    "B62": lambda tmp, cap: task("reward_lambda")({"preset": "smoke", "lam_search": "curve", "curve_points": 1}),
    # a diverging U-Net (NaN score-matching loss)
    "B57": lambda tmp, cap: (
        task("noise_schedule"),
        train({"task": "noise_schedule", "preset": "smoke", "lr": 1e6}, 3),
    ),
}


# -- the catalogue ---------------------------------------------------------------------------------
ROW = re.compile(r"^\|\s*(B\d\d)\s*\|(.*)\|\s*$")


def catalogue() -> dict[str, dict[str, Any]]:
    """Rows of docs/bad_inputs.md: id -> {kind, excerpts, test}."""
    rows = {}
    for line in CATALOGUE.read_text().splitlines():
        m = ROW.match(line)
        if not m:
            continue
        cells = [c.strip() for c in m.group(2).split(" | ")]
        assert len(cells) == 5, f"row {m.group(1)} must have 6 columns: {line}"
        _, _, got, _, test = cells
        kind, _, rest = got.partition(":")
        excerpts = re.findall(r"`([^`]+)`", rest)
        assert excerpts, f"row {m.group(1)} quotes no message excerpt"
        assert m.group(1) not in rows, f"duplicate row {m.group(1)}"
        rows[m.group(1)] = {"kind": kind.strip(), "excerpts": excerpts, "test": test}
    return rows


ROWS = catalogue() if CATALOGUE.exists() else {}
_CLASSES: dict[str, type[BaseException]] = {
    "ConfigError": ConfigError, "FileNotFoundError": FileNotFoundError, "FloatingPointError": FloatingPointError,
    "ValueError": ValueError, "CLIError": CLIError, "UserWarning": UserWarning, "RuntimeWarning": RuntimeWarning,
}


def test_catalogue_and_triggers_agree():
    assert len(ROWS) >= 25
    here = {k for k, r in ROWS.items() if r["test"] == "here"}
    assert here == set(TRIGGERS), (sorted(here ^ set(TRIGGERS)))
    for key, row in ROWS.items():
        assert row["kind"] in _CLASSES, (key, row["kind"])
        if row["test"] != "here":  # tested elsewhere: the named test must exist
            file, _, name = row["test"].strip("`").partition("::")
            assert re.search(rf"^def {re.escape(name)}\(", (REPO / file).read_text(), re.M), row["test"]


#: Rows whose module does not give the catalogued message yet (the fix is proposed to its owner).
PENDING = {
}


@pytest.mark.parametrize(
    "key",
    [pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=PENDING[k])) if k in PENDING else k
     for k in sorted(TRIGGERS)],
)
def test_bad_input_gives_the_catalogued_one_line_message(key, tmp_path, capsys):
    row = ROWS[key]
    expected = _CLASSES[row["kind"]]
    if issubclass(expected, Warning):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            TRIGGERS[key](tmp_path, capsys)
        messages = [str(w.message) for w in caught if issubclass(w.category, expected)]
        hits = [m for m in messages if all(e in m for e in row["excerpts"])]
        assert hits, f"{key}: no {row['kind']} with {row['excerpts']} among {messages}"
        message = hits[0]
    else:
        with pytest.raises(expected) as info:
            TRIGGERS[key](tmp_path, capsys)
        message = str(info.value)
        for excerpt in row["excerpts"]:
            assert excerpt in message, f"{key}: {excerpt!r} not in {message!r}"
    assert "\n" not in message.strip(), f"{key}: the message must be one line: {message!r}"


def test_checkpoint_carrying_code_is_refused_without_running_it(tmp_path):
    """B38's safety half: weights_only loading refuses the payload and its code never runs."""
    with pytest.raises(ConfigError, match="it is corrupt or not from ray_bilevel"):
        TRIGGERS["B38"](tmp_path, None)
    assert not (tmp_path / "pwned").exists()
    # the same payload does run when unpickled without weights_only: the test is not vacuous
    torch.load(tmp_path / "ckpt" / CHECKPOINT_FILE, weights_only=False)
    assert (tmp_path / "pwned").exists()
