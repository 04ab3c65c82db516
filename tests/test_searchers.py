"""Baseline searchers: gp_minimize parity, suggest/complete/save/restore, NaN results, convergence
on x^2, the greedy stage logic, make_searcher plans, the paper's spaces, one Tuner end to end."""
from __future__ import annotations

import math
import warnings

import pytest
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher

from ray_bilevel import space as spaces
from ray_bilevel.config import ConfigError
from ray_bilevel.tasks.noise_schedule import search_space as noise_schedule_space
from ray_bilevel.tasks.reward_lambda.settings import lambda_space
from ray_bilevel.tune.searchers import GreedyGridSearcher, SkoptSearcher, initial_points, make_searcher

skopt = pytest.importorskip("skopt")
Real = skopt.space.Real

# cheap acquisition optimisation keeps every GP test at a fraction of a second per call
FAST = {"acq_optimizer": "sampling", "n_points": 300}


def _quad(c: dict) -> float:
    return (c["a"] - 0.3) ** 2 + 0.5 * (c["b"] + 0.2) ** 2


def _drive(searcher: Searcher, f, n: int, metric: str = "loss", sign: float = 1.0, start: int = 0) -> list[dict]:
    """Sequential suggest -> complete, as Tune does with one trial at a time."""
    configs = []
    for i in range(start, start + n):
        c = searcher.suggest(f"t{i}")
        if c == Searcher.FINISHED:
            break
        configs.append(c)
        searcher.on_trial_complete(f"t{i}", {metric: sign * f(c)})
    return configs


def _skopt(**kw) -> SkoptSearcher:
    args = dict(n_calls=8, n_initial_points=3, acq_func="EI", random_state=7, **FAST)
    args.update(kw)
    return SkoptSearcher({"a": Real(-1.0, 1.0), "b": Real(-1.0, 1.0)}, "loss", "min", **args)


# -- SkoptSearcher ------------------------------------------------------------------------------


def test_skopt_asks_exactly_the_points_of_gp_minimize():
    ref = skopt.gp_minimize(
        lambda x: _quad({"a": x[0], "b": x[1]}), [Real(-1.0, 1.0), Real(-1.0, 1.0)],
        n_calls=6, n_initial_points=3, acq_func="EI", random_state=7, **FAST,
    )
    s = _skopt(n_calls=6)
    got = [[c["a"], c["b"]] for c in _drive(s, _quad, 20)]
    assert got == ref.x_iters  # same estimator, same random stream: bit for bit
    assert s.suggest("extra") == Searcher.FINISHED  # n_calls spent
    assert s.best[1] == pytest.approx(ref.fun)


def test_skopt_mode_max_negates_and_converges_on_x_squared():
    space = {"x": Real(-2.0, 2.0)}
    lo = SkoptSearcher(space, "loss", "min", n_calls=9, n_initial_points=3, random_state=0, **FAST)
    hi = SkoptSearcher(space, "score", "max", n_calls=9, n_initial_points=3, random_state=0, **FAST)
    a = _drive(lo, lambda c: c["x"] ** 2, 9)
    b = _drive(hi, lambda c: c["x"] ** 2, 9, metric="score", sign=-1.0)
    assert a == b
    best_random = min(c["x"] ** 2 for c in a[:3])
    assert lo.best[1] < 0.01 and lo.best[1] <= best_random
    assert hi.best[1] == pytest.approx(-lo.best[1])


def test_skopt_save_restore_round_trip_with_a_trial_in_flight(tmp_path):
    a = _skopt(n_calls=7)
    _drive(a, _quad, 3)
    pending = a.suggest("p")
    path = str(tmp_path / "skopt.pkl")
    a.save(path)
    b = _skopt(n_calls=7, random_state=123)  # different seed: restore must overwrite everything
    b.restore(path)
    for s in (a, b):
        s.on_trial_complete("p", {"loss": _quad(pending)})
    assert _drive(a, _quad, 10, start=10) == _drive(b, _quad, 10, start=10)
    assert len(b.history) == 7 and b.suggest("z") == Searcher.FINISHED


def test_skopt_nan_missing_and_errored_results_are_skipped_or_penalised():
    s = _skopt(n_calls=6)
    for i, (result, error) in enumerate([({"loss": float("nan")}, False), ({"other": 1.0}, False), (None, True),
                                         ({"loss": math.inf}, False)]):
        s.suggest(f"t{i}")
        with pytest.warns(UserWarning, match="not told"):
            s.on_trial_complete(f"t{i}", result, error=error)
    assert s._opt.Xi == [] and s.history == []
    p = _skopt(n_calls=6, penalty=50.0)
    p.suggest("t0")
    p.on_trial_complete("t0", {"loss": float("nan")})
    assert p._opt.yi == [50.0] and p.history[0][1] == 50.0
    # the skipped points still count as calls (gp_minimize semantics)
    s.suggest("t4"), s.suggest("t5")
    assert s.suggest("t6") == Searcher.FINISHED


def test_skopt_concurrent_trials_get_distinct_points():
    s = _skopt(n_calls=10)
    _drive(s, _quad, 3)  # random phase done: the GP proposes from here on
    first, second = s.suggest("x1"), s.suggest("x2")  # second asked while first is in flight
    assert first != second


def test_skopt_takes_tune_domains_and_param_space():
    s = SkoptSearcher({"lam": tune.loguniform(0.01, 100), "k": tune.randint(0, 3), "c": tune.choice(["a", "b"])},
                      "r", "max", n_calls=5, n_initial_points=5, random_state=0)
    dims = {d.name: d for d in s._opt.space.dimensions}
    assert dims["lam"].prior == "log-uniform" and dims["lam"].bounds == (0.01, 100)
    assert dims["k"].bounds == (0, 2) and dims["c"].categories == ("a", "b")
    late = SkoptSearcher(n_calls=3, n_initial_points=3, random_state=0)
    assert late.set_search_properties("loss", "min", {"x": tune.uniform(0, 1), "task": "toy"})
    c = late.suggest("t")
    assert set(c) == {"x"} and 0 <= c["x"] <= 1
    with pytest.raises(ConfigError, match="n_calls=2 must be >="):
        SkoptSearcher({"x": (0.0, 1.0)}, "loss", "min", n_calls=2, n_initial_points=3)


# -- GreedyGridSearcher -------------------------------------------------------------------------

GRIDS = {"tau": [1.0, 1.2, 0.8, 2.0], "start": [0.0, 0.1, 0.2], "end": [1.0, 0.9]}
DEFAULTS = {"tau": 1.0, "start": 0.0, "end": 1.0}


def _sep(c: dict) -> float:  # separable: coordinate-wise search finds the grid optimum
    return (c["tau"] - 1.25) ** 2 + (c["start"] - 0.12) ** 2 + (c["end"] - 0.93) ** 2


def test_greedy_order_reuse_and_convergence():
    g = GreedyGridSearcher(GRIDS, DEFAULTS, order=["tau", "start", "end"], metric="loss", mode="min")
    configs = _drive(g, _sep, 50)
    # stage 1 moves tau only, others at defaults; the incumbent is never run twice
    assert [c["tau"] for c in configs[:4]] == GRIDS["tau"]
    assert all(c["start"] == 0.0 and c["end"] == 1.0 for c in configs[:4])
    assert len(configs) == g.total_trials == 4 + 2 + 1
    assert len({tuple(sorted(c.items())) for c in configs}) == len(configs)
    # the grid optimum of the separable objective
    assert g.best[0] == {"tau": 1.2, "start": 0.1, "end": 0.9}
    assert g.suggest("done") == Searcher.FINISHED


def test_greedy_converges_on_x_squared_and_respects_mode_max():
    grids = {"x": [2.0, 1.0, 0.0, -1.0], "y": [1.0, -0.5, 0.0]}
    g = GreedyGridSearcher(grids, {"x": 2.0, "y": 1.0}, metric="score", mode="max")
    _drive(g, lambda c: c["x"] ** 2 + c["y"] ** 2, 20, metric="score", sign=-1.0)
    assert g.best == ({"x": 0.0, "y": 0.0}, -0.0)


def test_greedy_waits_for_out_of_order_completion_and_skips_nan():
    g = GreedyGridSearcher(GRIDS, DEFAULTS, metric="loss", mode="min")
    stage = [g.suggest(f"s{i}") for i in range(4)]
    assert g.suggest("s4") is None  # stage 1 not finished: wait
    for i in reversed(range(4)):  # finish in reverse order; tau=1.2 returns NaN
        y = float("nan") if stage[i]["tau"] == 1.2 else _sep(stage[i])
        if math.isnan(y):
            with pytest.warns(UserWarning, match="skipped"):
                g.on_trial_complete(f"s{i}", {"loss": y})
        else:
            g.on_trial_complete(f"s{i}", {"loss": y})
    nxt = g.suggest("s5")
    assert nxt["tau"] == 1.0 and nxt["start"] == 0.1  # NaN ruled 1.2 out; 1.0 is the next best


def test_greedy_save_restore_mid_stage(tmp_path):
    a = GreedyGridSearcher(GRIDS, DEFAULTS, metric="loss", mode="min")
    _drive(a, _sep, 3)
    inflight = a.suggest("p")
    a.save(str(tmp_path / "g.pkl"))
    b = GreedyGridSearcher({"z": [0.0]}, metric="loss", mode="min")
    b.restore(str(tmp_path / "g.pkl"))
    for s in (a, b):
        s.on_trial_complete("p", {"loss": _sep(inflight)})
    assert _drive(a, _sep, 20, start=10) == _drive(b, _sep, 20, start=10)
    assert a.best == b.best


def test_greedy_max_trials_and_errors():
    g = GreedyGridSearcher(GRIDS, DEFAULTS, metric="loss", mode="min", max_trials=5)
    assert len(_drive(g, _sep, 50)) == 5 and g.suggest("x") == Searcher.FINISHED
    with pytest.raises(ConfigError, match="exactly once"):
        GreedyGridSearcher(GRIDS, order=["tau", "start"])
    with pytest.raises(ConfigError, match="have no grid"):
        GreedyGridSearcher(GRIDS, {"eps": 0.1})


# -- spaces and make_searcher -------------------------------------------------------------------


def test_paper_spaces():
    ns = noise_schedule_space()
    assert ns.names == ["tau", "start", "end", "eps"] and ns.n_calls == 15 and ns.random_state == 42
    assert [(p.low, p.high) for p in ns.params] == [(1.0, 4.0), (0.0, 0.4), (0.8, 1.0), (0.005, 0.04)]
    assert ns.defaults() == {"tau": 1.0, "start": 0.0, "end": 1.0, "eps": 0.008}
    assert noise_schedule_space(tau_range="wide")["tau"].low == 0.5
    lam = lambda_space()
    assert lam.n_calls == 20 and lam.acq_func == "EI" and lam["lam"].log
    assert spaces.grid_values(lam["lam"]) == [0.01, 0.1, 1.0, 10.0, 100.0]
    assert spaces.grid_values(lam["lam"], 5) == [0.01, 0.1, 1.0, 10.0, 100.0]  # log-even = the released grid
    with pytest.raises(ConfigError, match="sigmoid"):
        noise_schedule_space(family="sigmoid")


@pytest.mark.parametrize("budget", [1, 2, 4, 6, 9, 15, 40])
def test_greedy_grids_fit_the_budget(budget):
    ns = noise_schedule_space()
    grids = spaces.greedy_grids(ns, budget)
    g = GreedyGridSearcher(grids, ns.defaults(), order=ns.names)
    assert g.total_trials == min(budget, 15)
    assert all(grids[n][0] == ns.defaults()[n] for n in ns.names)  # the default is the incumbent


def test_make_searcher_plans():
    ns, lam = noise_schedule_space(), lambda_space()
    grid = make_searcher("grid", lam, "alignment", "max")
    assert grid.search_alg is None and grid.param_space["lam"] == {"grid_search": [0.01, 0.1, 1.0, 10.0, 100.0]}
    assert grid.trials == 5 and grid.num_samples == 1
    rnd = make_searcher("random", ns, "fid_domain", "min", seed=3, num_samples=4)
    assert rnd.num_samples == 4 and set(rnd.param_space) == set(ns.names)
    bayes = make_searcher("bayes", ns, "fid_domain", "min", num_samples=15, **FAST)
    assert isinstance(bayes.search_alg, ConcurrencyLimiter) and bayes.param_space == {}
    assert bayes.searcher.n_calls == 15 and bayes.searcher._settings["n_initial_points"] == initial_points(15) == 10
    assert bayes.searcher._settings["random_state"] == 42 and bayes.searcher._settings["acq_func"] == "gp_hedge"
    assert make_searcher("bayes", lam, "alignment", "max").searcher._settings["acq_func"] == "EI"
    tpe = make_searcher("tpe", lam, "alignment", "max", seed=0, num_samples=6)
    c = tpe.search_alg.suggest("t0")
    assert 0.01 <= c["lam"] <= 100
    greedy = make_searcher("greedy", ns, "fid_domain", "min", num_samples=6)
    assert greedy.trials == greedy.num_samples == 6 and greedy.search_alg.suggest("t") == ns.defaults()
    with pytest.raises(ConfigError, match=r"choose one of \['grid', 'random', 'bayes', 'tpe', 'greedy', 'optuna_tpe', "
                                          r"'optuna_gp'\]"):
        make_searcher("bayesian", ns, "fid", "min")
    with pytest.raises(ConfigError, match="not supported"):
        make_searcher("bayes", {"x": tune.choice([1, 2])}, "fid", "min")


def test_tuner_end_to_end_with_skopt(ray_local, tmp_path):
    def objective(config):
        tune.report({"loss": (config["x"] - 0.5) ** 2})

    plan = make_searcher("bayes", {"x": tune.uniform(-2.0, 2.0)}, "loss", "min", seed=0, num_samples=6,
                         n_initial_points=3, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grid = tune.Tuner(
            objective, param_space=plan.param_space,
            tune_config=tune.TuneConfig(metric="loss", mode="min", search_alg=plan.search_alg, num_samples=10),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="skopt", verbose=0),
        ).fit()
    assert not grid.errors and len(grid) == 6  # FINISHED after n_calls even though num_samples allows more
    assert grid.get_best_result().metrics["loss"] < 0.1
    assert len(plan.searcher.history) == 6
