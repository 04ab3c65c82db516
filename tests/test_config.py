"""ray_bilevel.config.resolve checks every setting against its annotation; ray_bilevel.cli.parse_key_values."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pytest

from ray_bilevel.cli import parse_key_values
from ray_bilevel.config import RESERVED_KEYS, ConfigError, resolve
from ray_bilevel.tasks import get_task


@dataclasses.dataclass
class Kinds:
    """One field of each annotation kind resolve checks."""

    n: int = 1
    x: float = 1.0
    flag: bool = False
    name: str = "a"
    maybe: float | None = None
    old_optional: Optional[int] = None  # noqa: UP045 (the typing spelling must work too)
    widths: tuple = (8, 16)
    ints: tuple[int, ...] = (1, 2)
    floats: tuple[float, ...] = (0.5,)
    pair: tuple[int, str] = (1, "a")
    items: list[str] = dataclasses.field(default_factory=list)
    extra: dict = dataclasses.field(default_factory=dict)
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    mode: Literal["fresh", "fixed"] = "fresh"
    shrinkage: float | Literal["ledoit_wolf"] = 0.0
    anything: Any = None


PRESETS = {"smoke": {"n": 2}, "quick": {}, "paper": {"widths": [32, 64]}}


def make(**overrides: Any) -> Kinds:
    return resolve(Kinds, PRESETS, overrides)


def one_line_error(key: str, **overrides: Any) -> str:
    with pytest.raises(ConfigError) as info:
        make(**overrides)
    message = str(info.value)
    assert "\n" not in message and repr(key) in message, message
    return message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("n", "3", "must be an integer, got '3'."),
        ("n", True, "must be an integer, got True."),
        ("n", 2.5, "must be an integer, got 2.5."),
        ("n", float("inf"), "must be an integer"),
        ("n", None, "must be an integer, got None."),
        ("x", "abc", "must be a number, got 'abc'."),
        ("x", False, "must be a number, got False."),
        ("x", [1.0], "must be a number"),
        ("flag", 1, "must be true or false, got 1."),
        ("flag", "true", "must be true or false, got 'true'."),
        ("name", 7, "must be a string, got 7."),
        ("name", None, "must be a string, got None."),
        ("maybe", "abc", "config key 'maybe' must be a number or None, got 'abc'."),
        ("old_optional", 1.5, "must be an integer or None, got 1.5."),
        ("widths", 8, "must be a list or tuple, got 8."),
        ("widths", "8,16", "must be a list or tuple, got '8,16'."),
        ("ints", [1, "2"], "must be a list or tuple of integers, got [1, '2']."),
        ("ints", [1, 2.5], "must be a list or tuple of integers"),
        ("floats", [0.5, None], "must be a list or tuple of numbers"),
        ("floats", {"a": 1.0}, "must be a list or tuple of numbers"),
        ("pair", [1, "a", 2], "must be a list or tuple of 2 items (an integer, a string)"),
        ("pair", ["a", 1], "must be a list or tuple of 2 items"),
        ("items", ["a", 3], "must be a list of strings, got ['a', 3]."),
        ("items", "abc", "must be a list of strings"),
        ("extra", [1, 2], "must be a mapping, got [1, 2]."),
        ("weights", {"a": "heavy"}, "must be a mapping of strings to numbers"),
        ("weights", {1: 1.0}, "must be a mapping of strings to numbers"),
        ("mode", "fixd", "must be one of ['fresh', 'fixed'], got 'fixd'. Did you mean 'fixed'?"),
        ("mode", 1, "must be one of ['fresh', 'fixed'], got 1."),
        ("shrinkage", "ledoit", "must be a number or one of ['ledoit_wolf'], got 'ledoit'. Did you mean "
                                "'ledoit_wolf'?"),
        ("shrinkage", None, "must be a number or one of ['ledoit_wolf'], got None."),
        ("shrinkage", True, "must be a number or one of ['ledoit_wolf'], got True."),
    ],
)
def test_wrong_types_are_refused_with_one_line(key: str, value: Any, expected: str) -> None:
    message = one_line_error(key, **{key: value})
    assert message.startswith(f"config key {key!r} must be "), message
    assert expected in message, message


def test_valid_values_pass_and_are_converted() -> None:
    cfg = make(
        n=3.0, x=2, flag=True, name=Path("/tmp/data"), maybe=1, old_optional=4, widths=[8, 16, 32], ints=[3, 4.0],
        floats=[1, 2.5], pair=[2, "b"], items=("a", "b"), extra={"note": [1, {"a": None}]}, weights={"a": 1},
        mode="fixed", shrinkage=1, anything=object,
    )
    assert cfg.n == 3 and type(cfg.n) is int
    assert cfg.x == 2.0 and type(cfg.x) is float
    assert cfg.flag is True and cfg.name == "/tmp/data"
    assert cfg.maybe == 1.0 and type(cfg.maybe) is float and cfg.old_optional == 4
    assert cfg.widths == (8, 16, 32) and cfg.ints == (3, 4) and type(cfg.ints[1]) is int
    assert cfg.floats == (1.0, 2.5) and type(cfg.floats[0]) is float
    assert cfg.pair == (2, "b") and cfg.items == ["a", "b"]
    assert cfg.extra == {"note": [1, {"a": None}]} and cfg.weights == {"a": 1.0} and type(cfg.weights["a"]) is float
    assert cfg.mode == "fixed" and cfg.shrinkage == 1.0 and type(cfg.shrinkage) is float and cfg.anything is object
    assert make(shrinkage="ledoit_wolf").shrinkage == "ledoit_wolf"
    assert make(maybe=None).maybe is None and make(anything="whatever").anything == "whatever"


def test_defaults_and_presets_are_checked_and_converted() -> None:
    assert make() == Kinds()
    assert resolve(Kinds, PRESETS, {"preset": "paper"}).widths == (32, 64)  # a preset's list becomes a tuple
    assert resolve(Kinds, PRESETS, {"preset": "smoke", "task": "x"}).n == 2  # RESERVED_KEYS are skipped
    assert {"task", "preset"} <= RESERVED_KEYS
    with pytest.raises(ConfigError, match=r"^config key 'n' must be an integer, got 'two'\.$"):
        resolve(Kinds, {"quick": {"n": "two"}}, {})


def test_numpy_scalars_become_python_values() -> None:
    cfg = make(n=np.int64(5), x=np.float32(0.5), flag=np.bool_(True), maybe=np.float64(2.0), anything=np.int32(3),
               ints=[np.int64(1), np.int64(2)], floats=np.array([1.0, 2.0]), shrinkage=np.float64(0.25))
    assert cfg.n == 5 and type(cfg.n) is int
    assert cfg.x == 0.5 and type(cfg.x) is float
    assert cfg.flag is True and type(cfg.maybe) is float and type(cfg.anything) is int
    assert cfg.ints == (1, 2) and all(type(i) is int for i in cfg.ints)
    assert cfg.floats == (1.0, 2.0) and all(type(f) is float for f in cfg.floats)
    assert cfg.shrinkage == 0.25 and type(cfg.shrinkage) is float
    assert make(n=np.float64(3.0)).n == 3
    message = one_line_error("n", n=np.float64(2.5))
    assert "got 2.5." in message  # the Python value, not np.float64(2.5)


def test_unknown_preset_and_key_still_suggest_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'quik'; choose one of \['paper', 'quick', 'smoke'\]\. Did "
                                          r"you mean 'quick'\?"):
        resolve(Kinds, PRESETS, {"preset": "quik"})
    with pytest.raises(ConfigError, match=r"unknown config key 'mdoe' for Kinds; valid keys: .* Did you mean 'mode'\?"):
        make(mdoe="fixed")


# -- the real tasks: resolve runs before anything is loaded --------------------------------------
@pytest.mark.parametrize(
    ("task", "key", "value", "expected"),
    [
        ("noise_schedule", "tau", "abc", "config key 'tau' must be a number or None, got 'abc'."),
        ("noise_schedule", "eval_samples", "many", "config key 'eval_samples' must be an integer, got 'many'."),
        ("noise_schedule", "block_out_channels", 16, "config key 'block_out_channels' must be a list or tuple"),
        ("reward_lambda", "lam", "x", "config key 'lam' must be a number, got 'x'."),
        ("reward_lambda", "log_space", "yes", "config key 'log_space' must be true or false, got 'yes'."),
        ("weighted_sum", "w", [1.0], "config key 'w' must be a number, got [1.0]."),
        ("toy", "seed", "zero", "config key 'seed' must be an integer, got 'zero'."),
    ],
)
def test_real_tasks_refuse_wrong_types_before_loading_anything(task: str, key: str, value: Any, expected: str) -> None:
    cls = get_task(task)  # imported here, so the timing below measures construction only
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        cls({"task": task, "preset": "smoke", key: value})
    assert time.perf_counter() - t0 < 5.0  # no data, model or metric was loaded
    assert "\n" not in str(info.value) and expected in str(info.value)


def test_resolve_runs_before_data_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong type stops noise_schedule before ray_bilevel.data.load_images is ever called."""
    import ray_bilevel.data

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("load_images called before the config was checked")

    monkeypatch.setattr(ray_bilevel.data, "load_images", refuse)
    with pytest.raises(ConfigError, match="'tau'"):
        get_task("noise_schedule")({"preset": "smoke", "tau": "abc"})
    with pytest.raises(ConfigError, match="'lam'"):
        get_task("reward_lambda")({"preset": "smoke", "lam": "x"})


# -- parse_key_values ---------------------------------------------------------------------------
def test_parse_key_values_reads_json_and_keeps_raw_strings() -> None:
    pairs = ["eval_samples=500", "lr=1e-3", "download=true", "tau=null", "block_out_channels=[8, 16]",
             'prompt="a handwritten 7"', "family=sigmoid", "bounds={\"tau\": [0.5, 2]}", "data_root=/data/mnist",
             "empty=", "expr=a=b", "seed=1", "seed=2"]
    assert parse_key_values(pairs) == {
        "eval_samples": 500, "lr": 1e-3, "download": True, "tau": None, "block_out_channels": [8, 16],
        "prompt": "a handwritten 7", "family": "sigmoid", "bounds": {"tau": [0.5, 2]}, "data_root": "/data/mnist",
        "empty": "", "expr": "a=b", "seed": 2,
    }
    assert parse_key_values([]) == {}


@pytest.mark.parametrize("pair", ["eval_samples", "=5", "1x=2", "a-b=1", "a.b=1", "", " =1"])
def test_parse_key_values_refuses_bad_pairs(pair: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_key_values(["ok=1", pair])
    assert str(info.value) == f"--set takes KEY=VALUE, got {pair!r}."


def test_parse_key_values_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--override takes KEY=VALUE, got 'eval_samples'\.$"):
        parse_key_values(["eval_samples"], flag="--override")


def test_parsed_values_flow_into_resolve() -> None:
    cfg = resolve(
        Kinds, PRESETS, parse_key_values(["n=3", "x=2", "widths=[4, 8]", "mode=fixed", "shrinkage=ledoit_wolf"])
    )
    assert (cfg.n, cfg.x, cfg.widths, cfg.mode, cfg.shrinkage) == (3, 2.0, (4, 8), "fixed", "ledoit_wolf")
    message = one_line_error("n", **parse_key_values(["n=three"]))
    assert message == "config key 'n' must be an integer, got 'three'."
