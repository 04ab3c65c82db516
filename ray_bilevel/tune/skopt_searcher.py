"""Bayesian optimisation with scikit-optimize as a Ray Tune ``Searcher`` (``gp_minimize`` semantics).

The paper's Bayesian baselines call ``skopt.gp_minimize`` (docs/algorithms.md §5: lambda, n_calls 20;
schedule, n_calls 15). Ray removed its own skopt searcher in 2.11 (ray-project/ray PR #43969);
:class:`SkoptSearcher` fills the gap and asks the same points as ``gp_minimize`` when trials run one
at a time.

Searcher life cycle (``ray.tune.search.Searcher``): Tune calls ``set_search_properties(metric,
mode, param_space)`` once, then ``suggest(trial_id)`` whenever it can start a trial (a dict, ``None``
= "not now", or ``Searcher.FINISHED``), ``on_trial_result`` per report and
``on_trial_complete(trial_id, result, error)`` once per trial with its last result; ``save`` /
``restore`` pickle the state for ``Tuner.restore``.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform
from ray.tune.search.variant_generator import parse_spec_vars

from ray_bilevel.config import ConfigError
from ray_bilevel.tune._searcher_util import PickledStateMixin, finite_objective

__all__ = ["SkoptSearcher"]

SKOPT_MISSING = "SkoptSearcher needs scikit-optimize: pip install scikit-optimize"
UNDEFINED_SPACE = "{cls} has no search space: pass `space=` or a param_space with tune.uniform/loguniform domains."
UNDEFINED_METRIC_MODE = "{cls} needs `metric` and `mode`: pass them to the searcher or to tune.TuneConfig."


def _skopt() -> Any:
    """Import scikit-optimize on first use (it pulls in scikit-learn, ~1 s)."""
    try:
        import skopt
    except ImportError as exc:  # pragma: no cover - only without scikit-optimize
        raise ImportError(SKOPT_MISSING) from exc
    return skopt


def _py(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _dimension(name: str, dom: Any) -> Any:
    """A Tune domain, a skopt Dimension, a (low, high) tuple or a list of choices -> skopt Dimension."""
    from skopt.space import Categorical as SkCat, Dimension, Integer as SkInt, Real

    if isinstance(dom, Dimension):
        dom.name = name
        return dom
    if isinstance(dom, Float) and not hasattr(dom.get_sampler(), "q"):
        prior = "log-uniform" if isinstance(dom.get_sampler(), LogUniform) else "uniform"
        return Real(dom.lower, dom.upper, prior=prior, name=name)
    if isinstance(dom, Integer) and not hasattr(dom.get_sampler(), "q"):  # tune.randint's upper is exclusive
        prior = "log-uniform" if isinstance(dom.get_sampler(), LogUniform) else "uniform"
        return SkInt(dom.lower, dom.upper - 1, prior=prior, name=name)
    if isinstance(dom, Categorical):
        return SkCat(list(dom.categories), name=name)
    if isinstance(dom, tuple) and len(dom) == 2:
        return (SkInt if all(isinstance(v, int) for v in dom) else Real)(*dom, name=name)
    if isinstance(dom, list):
        return SkCat(dom, name=name)
    raise ConfigError(
        f"SkoptSearcher cannot use space[{name!r}] = {dom!r}; use tune.uniform/loguniform/randint/choice, "
        "a skopt Dimension, a (low, high) tuple or a list of choices."
    )


class SkoptSearcher(PickledStateMixin, Searcher):
    """Bayesian optimisation with ``skopt.Optimizer``, with ``gp_minimize`` semantics.

    Run one trial at a time and it asks exactly the points ``gp_minimize(f, space, n_calls=...,
    n_initial_points=..., acq_func=..., random_state=...)`` evaluates (same GP estimator, same
    random stream; tested). Concurrent trials get distinct points through the constant-liar
    strategy (pending points told to a copy of the optimizer at the best value seen, skopt's
    ``cl_min``). Once ``n_calls`` points were suggested, ``suggest`` returns ``Searcher.FINISHED``.

    Args:
        space: ``{name: tune domain | skopt Dimension | (low, high) | [choices]}``; or ``None`` to
            take the Tune ``param_space``'s domains in ``set_search_properties``.
        metric, mode: the reported metric and ``"min"``/``"max"`` (may come from ``TuneConfig``).
        n_calls: total number of suggested points (``None`` = unlimited; stop with ``num_samples``).
        n_initial_points: random points before the GP is used (gp_minimize: 10).
        acq_func: ``"gp_hedge"`` (gp_minimize's default), ``"EI"``, ``"PI"`` or ``"LCB"``.
        random_state: seed (the paper uses 42).
        points_to_evaluate: configs tried first (gp_minimize's ``x0``); they count as calls.
        penalty: what a failed trial, or one whose metric is missing, NaN or inf, tells the
            optimizer, in the metric's own units. ``None`` (default): the point is skipped with a
            warning (it still counts as a call).
        base_estimator, noise, acq_optimizer, initial_point_generator, n_points,
            n_restarts_optimizer, xi, kappa: as in ``gp_minimize``.
    """

    def __init__(
        self,
        space: Mapping[str, Any] | None = None,
        metric: str | None = None,
        mode: str | None = None,
        *,
        n_calls: int | None = None,
        n_initial_points: int = 10,
        acq_func: str = "gp_hedge",
        random_state: int | None = None,
        points_to_evaluate: Sequence[Mapping[str, Any]] | None = None,
        penalty: float | None = None,
        base_estimator: Any = "GP",
        noise: Any = "gaussian",
        acq_optimizer: str = "auto",
        initial_point_generator: str = "random",
        n_points: int = 10000,
        n_restarts_optimizer: int = 5,
        xi: float = 0.01,
        kappa: float = 1.96,
    ) -> None:
        _skopt()
        if mode is not None and mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'min' or 'max', got {mode!r}.")
        if acq_func.endswith("ps"):
            raise ConfigError(f"acq_func={acq_func!r} needs evaluation times; use 'gp_hedge', 'EI', 'PI' or 'LCB'.")
        if n_calls is not None and n_calls < n_initial_points + len(points_to_evaluate or []):
            raise ConfigError(
                f"n_calls={n_calls} must be >= n_initial_points + len(points_to_evaluate) = "
                f"{n_initial_points + len(points_to_evaluate or [])} (as in gp_minimize); lower n_initial_points."
            )
        super().__init__(metric=metric, mode=mode)
        self._settings = dict(
            n_initial_points=n_initial_points, acq_func=acq_func, random_state=random_state,
            base_estimator=base_estimator, noise=noise, acq_optimizer=acq_optimizer,
            initial_point_generator=initial_point_generator, n_points=n_points,
            n_restarts_optimizer=n_restarts_optimizer, xi=xi, kappa=kappa,
        )
        self.n_calls = n_calls
        self.penalty = penalty
        self._points_to_evaluate = [dict(p) for p in points_to_evaluate or []]
        self._names: list[str] = []
        self._opt: Any = None
        self._live: dict[str, list] = {}
        self._n_suggested = 0
        self.history: list[tuple[dict[str, Any], float]] = []  # (config, metric value) told
        if space:
            self._setup(space)

    def _setup(self, space: Mapping[str, Any]) -> None:
        import numpy as np
        from sklearn.utils import check_random_state
        from skopt.utils import cook_estimator, normalize_dimensions

        s = self._settings
        self._names = list(space)
        dims = normalize_dimensions([_dimension(n, space[n]) for n in self._names])
        rng = check_random_state(s["random_state"])
        estimator = s["base_estimator"]
        if estimator == "GP":  # exactly as gp_minimize builds it (one draw from rng first)
            estimator = cook_estimator("GP", space=dims, random_state=rng.randint(0, np.iinfo(np.int32).max), noise=s["noise"])
        self._opt = _skopt().Optimizer(
            dims, estimator,
            n_initial_points=s["n_initial_points"] + len(self._points_to_evaluate),
            initial_point_generator=s["initial_point_generator"], acq_func=s["acq_func"],
            acq_optimizer=s["acq_optimizer"], random_state=rng,
            acq_optimizer_kwargs={"n_points": s["n_points"], "n_restarts_optimizer": s["n_restarts_optimizer"], "n_jobs": 1},
            acq_func_kwargs={"xi": s["xi"], "kappa": s["kappa"]},
        )
        for p in self._points_to_evaluate:
            missing = set(self._names) - set(p)
            if missing:
                raise ConfigError(f"points_to_evaluate entry {p} lacks {sorted(missing)}.")

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        _, domains, grids = parse_spec_vars(config)
        if self._opt is not None and (domains or grids):
            return False  # our own space is set; Tune then reports the clash
        if self._opt is None:
            if grids or not domains:
                return False
            if any(len(path) != 1 for path, _ in domains):
                raise ConfigError("SkoptSearcher takes a flat param_space; nested domains are not supported.")
            self._setup({path[0]: dom for path, dom in domains})
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]  # Ray says Optional[Dict], but its Searcher.FINISHED is a str
        if self._opt is None:
            raise RuntimeError(UNDEFINED_SPACE.format(cls=type(self).__name__))
        if not self._metric or not self._mode:
            raise RuntimeError(UNDEFINED_METRIC_MODE.format(cls=type(self).__name__))
        if self.n_calls is not None and self._n_suggested >= self.n_calls:
            return Searcher.FINISHED
        if self._points_to_evaluate:
            p = self._points_to_evaluate.pop(0)
            x = [p[n] for n in self._names]
        else:
            x = self._ask()
        self._live[trial_id] = x
        self._n_suggested += 1
        return {n: _py(v) for n, v in zip(self._names, x)}

    def _ask(self) -> list:
        """``ask()``; with trials in flight after the random phase, ask a copy told the lie ``min(y)``."""
        import numpy as np

        pending = list(self._live.values())
        if not pending or self._opt._n_initial_points > 0:  # random phase: every ask draws anew
            return self._opt.ask()
        opt = self._opt.copy(random_state=self._opt.rng.randint(0, np.iinfo(np.int32).max))
        opt.tell(pending, [min(opt.yi) if opt.yi else 0.0] * len(pending))
        return opt.ask()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        x = self._live.pop(trial_id, None)
        if x is not None:
            self._tell(x, result, error, f"trial {trial_id}")

    def add_evaluated_point(
        self, parameters: dict, value: float, error: bool = False, pruned: bool = False,
        intermediate_values: list | None = None,
    ) -> None:
        """Tell an already evaluated point (gp_minimize's ``x0``/``y0``); it is not counted as a call."""
        self._tell([parameters[n] for n in self._names], {self._metric: value}, error, f"point {parameters}")

    def _tell(self, x: list, result: Mapping | None, error: bool, who: str) -> None:
        y, why = finite_objective(self, result, error)
        if y is None:
            if self.penalty is None:
                warnings.warn(f"SkoptSearcher: {who} {why}; its point is not told to the GP (pass penalty=... to tell a value).")
                return
            y = self.penalty if self._mode == "min" else -self.penalty
        self._opt.tell(x, y)
        self.history.append(({n: _py(v) for n, v in zip(self._names, x)}, y if self._mode == "min" else -y))

    @property
    def best(self) -> tuple[dict[str, Any], float] | None:
        """The best (config, metric value) told so far."""
        if not self.history:
            return None
        pick = min if self._mode == "min" else max
        return pick(self.history, key=lambda h: h[1])
