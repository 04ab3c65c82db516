"""SkoptSearcher and GreedyGridSearcher behave as Ray Tune's own searchers where a Tune user meets them: a nested
``param_space``, quantized domains, TuneConfig's metric and mode (each outcome checked against Tune's
``HyperOptSearch`` in the same Tuner), and failed trials told to the GP as a penalty."""
from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher

from ray_bilevel.config import ConfigError
from ray_bilevel.tune.searchers import GreedyGridSearcher, SkoptSearcher, make_searcher

skopt = pytest.importorskip("skopt")
pytest.importorskip("hyperopt")
from ray.tune.search.hyperopt import HyperOptSearch  # noqa: E402  (needs hyperopt)

FAST = {"acq_optimizer": "sampling", "n_points": 300}
LR = tune.qloguniform(1e-4, 1e-1, 5e-5)


def _objective() -> Any:
    """loss is best at x = 0.3, acc at x = 0.7: ranking on the wrong one picks another trial. (A closure: Ray's
    workers cannot import this test module, so the function travels by value.)"""

    def objective(config: dict[str, Any]) -> None:
        x = config.get("x", 0.5)
        if config.get("fail_above") is not None and x > config["fail_above"]:
            raise ValueError(f"x={x} is in the failing region")
        tune.report({"loss": (x - 0.3) ** 2, "acc": 1.0 - (x - 0.7) ** 2})

    return objective


def _fit(searcher: Any, param_space: dict[str, Any], tmp_path: Any, num_samples: int = 3, quiet: bool = True,
         **tune_config: Any) -> Any:
    run = tune.Tuner(
        _objective(), param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=num_samples, **tune_config),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="conformance", verbose=0),
    )
    if not quiet:
        return run.fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run.fit()


def _late(kind: str, **kw: Any) -> Searcher:
    """A searcher that takes its space from the Tuner's param_space."""
    if kind == "hyperopt":
        return HyperOptSearch(random_state_seed=0, n_initial_points=2, **kw)
    return SkoptSearcher(n_calls=3, n_initial_points=2, random_state=0, **FAST, **kw)


def _own(kind: str, **kw: Any) -> Searcher:
    """A searcher built with its own space of x."""
    if kind == "hyperopt":
        return HyperOptSearch(HyperOptSearch.convert_search_space({"x": tune.uniform(0.0, 1.0)}), random_state_seed=0,
                              n_initial_points=2, **kw)
    if kind == "greedy":
        return GreedyGridSearcher({"x": [0.1, 0.5, 0.9]}, **kw)
    return SkoptSearcher({"x": tune.uniform(0.0, 1.0)}, n_calls=3, n_initial_points=2, random_state=0, **FAST, **kw)


def _multiple(value: float, q: float) -> bool:
    return math.isclose(value / q, round(value / q), abs_tol=1e-9)


# -- nested and quantized spaces ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hyperopt", "skopt"])
def test_nested_param_space_with_quantized_domains_through_tuner(ray_local, tmp_path, kind):
    space = {"opt": {"lr": LR, "momentum": 0.9}, "x": tune.uniform(0.0, 1.0), "k": tune.qrandint(0, 20, 5)}
    searcher = _late(kind)
    grid = _fit(searcher, space, tmp_path, metric="loss", mode="min")
    assert not grid.errors and len(grid) == 3
    for result in grid:
        c = result.config
        assert c["opt"]["momentum"] == 0.9  # the nested constant beside the domain is kept
        assert 1e-4 <= c["opt"]["lr"] <= 1e-1 and _multiple(c["opt"]["lr"], 5e-5)  # rounded to its q
        assert 0 <= c["k"] <= 20 and c["k"] % 5 == 0 and isinstance(c["k"], int)
        assert "opt/lr" not in c
    if kind == "skopt":
        assert all(set(conf) == {"opt", "x", "k"} and set(conf["opt"]) == {"lr"} for conf, _ in searcher.history)


def test_skopt_own_nested_space_points_to_evaluate_and_restore(tmp_path):
    s = SkoptSearcher({"opt": {"lr": LR}, "k": tune.qrandint(0, 20, 5)}, "loss", "min", n_calls=4, n_initial_points=2,
                      random_state=0, points_to_evaluate=[{"opt": {"lr": 0.001}, "k": 10}], **FAST)
    first = s.suggest("t0")
    assert first == {"opt": {"lr": 0.001}, "k": 10}
    s.on_trial_complete("t0", {"loss": 1.0})
    s.save(str(tmp_path / "s.pkl"))
    r = SkoptSearcher({"y": (0.0, 1.0)}, "loss", "min", n_calls=4, n_initial_points=2)
    r.restore(str(tmp_path / "s.pkl"))
    a, b = s.suggest("t1"), r.suggest("t1")
    assert a == b and set(a) == {"opt", "k"} and _multiple(a["opt"]["lr"], 5e-5) and a["k"] % 5 == 0
    assert s.best == ({"opt": {"lr": 0.001}, "k": 10}, 1.0)


def test_greedy_nested_grids_through_tuner(ray_local, tmp_path):
    g = GreedyGridSearcher({"opt": {"lr": [0.1, 0.01]}, "x": [0.5, 0.3]}, order=["x", "opt/lr"])
    grid = _fit(g, {"opt": {"momentum": 0.9}}, tmp_path, num_samples=g.total_trials, metric="loss", mode="min")
    configs = sorted((r.config["x"], r.config["opt"]["lr"], r.config["opt"]["momentum"]) for r in grid)
    assert configs == [(0.3, 0.01, 0.9), (0.3, 0.1, 0.9), (0.5, 0.1, 0.9)]
    assert g.best[0] == {"opt": {"lr": 0.1}, "x": 0.3}


@pytest.mark.parametrize("domain, q", [(tune.qrandn(0.0, 1.0, 0.1), 0.1), (tune.qrandint(11, 14, 5), 5)])
def test_quantized_domains_that_cannot_be_searched_are_refused_by_name(domain, q):
    with pytest.raises(ConfigError, match=rf"quantized domain space\['opt/lr'\] = tune\.qrand.*q={q}"):
        SkoptSearcher({"opt": {"lr": domain}}, "loss", "min")


def test_make_searcher_refuses_quantized_and_nested_by_name():
    with pytest.raises(ConfigError, match=r"space\['lr'\] = tune\.qloguniform\(0\.0001, 0\.1, q=5e-05\) is quantized"):
        make_searcher("bayes", {"lr": LR}, "loss", "min")
    with pytest.raises(ConfigError, match=r"space\['opt'\] is a nested dict"):
        make_searcher("random", {"opt": {"lr": tune.uniform(0, 1)}}, "loss", "min")


# -- metric and mode: as Tune's HyperOptSearch ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["hyperopt", "skopt"])
def test_metric_given_only_in_tune_config(ray_local, tmp_path, kind):
    searcher = _late(kind)
    grid = _fit(searcher, {"x": tune.uniform(0.0, 1.0)}, tmp_path, metric="acc", mode="max")
    assert not grid.errors and (searcher.metric, searcher.mode) == ("acc", "max")


@pytest.mark.parametrize("kind", ["hyperopt", "skopt"])
def test_conflicting_metric_with_the_space_in_param_space_takes_tune_configs(ray_local, tmp_path, kind):
    searcher = _late(kind, metric="loss", mode="min")
    grid = _fit(searcher, {"x": tune.uniform(0.0, 1.0)}, tmp_path, metric="acc", mode="max")
    assert not grid.errors and (searcher.metric, searcher.mode) == ("acc", "max")  # TuneConfig's pair wins
    if kind == "skopt":  # the GP was told acc, maximised (negated)
        accs = sorted(r.metrics["acc"] for r in grid)
        assert sorted(v for _, v in searcher.history) == pytest.approx(accs)


@pytest.mark.parametrize("kind", ["hyperopt", "skopt", "greedy"])
def test_conflicting_metric_with_the_searchers_own_space_keeps_its_pair(ray_local, tmp_path, kind):
    searcher = _own(kind, metric="loss", mode="min")
    if kind == "hyperopt":  # Tune's own: keeps its pair without a word
        grid = _fit(searcher, {"c": 1}, tmp_path, metric="acc", mode="max")
    else:  # the same outcome, and a warning that names both pairs
        with pytest.warns(UserWarning, match=r"keeps its own metric='loss', mode='min' while tune.TuneConfig says "
                                             r"metric='acc', mode='max'"):
            grid = _fit(searcher, {"c": 1}, tmp_path, quiet=False, metric="acc", mode="max")
    assert not grid.errors and (searcher.metric, searcher.mode) == ("loss", "min")


@pytest.mark.parametrize("kind", ["hyperopt", "skopt", "greedy"])
def test_own_space_with_an_empty_param_space_never_sees_tune_configs_metric(ray_local, tmp_path, kind):
    """Tune passes TuneConfig's pair to a searcher only with a non-empty param_space: all three fail alike."""
    with pytest.raises(RuntimeError, match=r"`metric`.*`mode`"):
        _fit(_own(kind), {}, tmp_path, num_samples=1, metric="acc", mode="max")


def test_own_space_takes_tune_configs_metric_when_it_has_none(ray_local, tmp_path):
    """Where HyperOptSearch, owning its space, ignores TuneConfig's pair and fails in suggest, ours takes it."""
    searcher = _own("skopt")
    grid = _fit(ConcurrencyLimiter(searcher, 1), {"c": 1}, tmp_path, metric="acc", mode="max")
    assert not grid.errors and (searcher.metric, searcher.mode) == ("acc", "max") and len(searcher.history) == 3


def test_domains_in_param_space_beside_an_own_space_are_refused_as_by_tune(ray_local, tmp_path):
    for searcher in (_own("hyperopt", metric="loss", mode="min"), _own("skopt", metric="loss", mode="min")):
        with pytest.raises(ValueError, match="already instantiated with a search space"):
            _fit(searcher, {"y": tune.uniform(0, 1)}, tmp_path)


# -- failed trials told to the GP ------------------------------------------------------------------------


def _failing(c: dict[str, float]) -> float:
    """The working part's optimum lies at the edge of a failing region (x > 0.5 returns NaN)."""
    return float("nan") if c["x"] > 0.5 else (c["x"] - 1.0) ** 2


def _gp_proposals_in_failing_region(penalty: Any) -> tuple[int, SkoptSearcher]:
    s = SkoptSearcher({"x": skopt.space.Real(-2.0, 2.0)}, "loss", "min", n_calls=14, n_initial_points=4,
                      random_state=0, penalty=penalty, acq_func="EI", **FAST)
    xs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(14):
            c = s.suggest(f"t{i}")
            xs.append(c["x"])
            s.on_trial_complete(f"t{i}", {"loss": _failing(c)})
    return sum(x > 0.5 for x in xs[4:]), s


def test_failure_penalty_steers_the_gp_out_of_a_failing_region():
    skipped, s_none = _gp_proposals_in_failing_region(None)
    worst, s_worst = _gp_proposals_in_failing_region("worst")
    fixed, s_fixed = _gp_proposals_in_failing_region(10.0)
    assert skipped >= 5  # never told, the GP keeps proposing the failing region
    assert worst <= 2 and fixed <= 2
    assert all(x[0] <= 0.5 for x in s_none._opt.Xi)  # only working points were told
    failed = [y for x, y in zip(s_fixed._opt.Xi, s_fixed._opt.yi) if x[0] > 0.5]
    assert failed and all(y == 10.0 for y in failed)
    worst_failed = [(i, y) for i, (x, y) in enumerate(zip(s_worst._opt.Xi, s_worst._opt.yi)) if x[0] > 0.5]
    assert worst_failed and all(y == max(s_worst._opt.yi[:i]) for i, y in worst_failed if i)


def test_worst_penalty_waits_for_a_finite_value_and_mode_max():
    s = SkoptSearcher({"x": (0.0, 1.0)}, "acc", "max", n_calls=5, n_initial_points=5, random_state=0,
                      penalty="worst")
    s.suggest("a"), s.suggest("b"), s.suggest("c")
    s.on_trial_complete("a", error=True)
    assert s._opt.yi == []  # nothing finite yet to be the worst
    s.on_trial_complete("b", {"acc": 0.8})
    s.on_trial_complete("c", {"acc": 0.5})
    assert s._opt.yi == [-0.8, -0.8, -0.5]  # the failure told at the worst value then, minimised
    assert sorted(v for _, v in s.history) == [0.5, 0.8, 0.8]
    with pytest.raises(ConfigError, match="penalty must be None, a finite number or 'worst'"):
        SkoptSearcher({"x": (0.0, 1.0)}, "acc", "max", penalty="max")


def test_errored_trials_are_told_to_the_gp_through_tuner(ray_local, tmp_path):
    searcher = SkoptSearcher({"x": tune.uniform(0.0, 1.0)}, n_calls=6, n_initial_points=6, random_state=1,
                             penalty=5.0, **FAST)
    grid = _fit(ConcurrencyLimiter(searcher, 1), {"fail_above": 0.5}, tmp_path, num_samples=6, metric="loss",
                mode="min")
    assert grid.num_errors >= 1 and len(grid) == 6
    assert len(searcher._opt.yi) == 6 and searcher._opt.yi.count(5.0) == grid.num_errors
