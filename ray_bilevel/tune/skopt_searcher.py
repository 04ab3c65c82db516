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

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Normal
from ray.tune.search.variant_generator import parse_spec_vars

from ray_bilevel.config import ConfigError
from ray_bilevel.tune._searcher_util import (
    UNDEFINED_METRIC_MODE,
    PickledStateMixin,
    describe_domain,
    finite_objective,
    flat_domains,
    flat_space,
    nested,
    quantum,
    take_search_properties,
)

__all__ = ["SkoptSearcher"]

SKOPT_MISSING = "SkoptSearcher needs scikit-optimize: pip install scikit-optimize"
UNDEFINED_SPACE = "{cls} has no search space: pass `space=` or a param_space with tune.uniform/loguniform domains."
UNSUPPORTED_DOMAIN = (
    "SkoptSearcher cannot use space[{name!r}] = {dom}; use tune.uniform/loguniform/quniform/qloguniform/randint/"
    "lograndint/qrandint/qlograndint/choice, a skopt Dimension, a (low, high) tuple or a list of choices.")
QUANTIZED_UNSUPPORTED = (
    "SkoptSearcher cannot use the quantized domain space[{name!r}] = {dom} (q={q}): a quantized domain needs finite "
    "bounds and q > 0; use tune.quniform/qloguniform/qrandint/qlograndint with finite bounds.")
QUANTIZED_EMPTY = (
    "SkoptSearcher cannot search the quantized domain space[{name!r}] = {dom}: it has {count} multiple of q={q} within "
    "its bounds; widen the bounds or lower q (or pass the value as a constant).")
GRID_IN_PARAM_SPACE = (
    "SkoptSearcher cannot search tune.grid_search ({names}); give a domain (tune.uniform, tune.choice, ...) or run the "
    "grid with Tune's default searcher (search_alg=None).")
PENALTY_INVALID = "penalty must be None, a finite number or 'worst', got {penalty!r}."


def _skopt() -> Any:
    """Import scikit-optimize on first use (it pulls in scikit-learn, ~1 s)."""
    try:
        import skopt
    except ImportError as exc:  # pragma: no cover - only without scikit-optimize
        raise ImportError(SKOPT_MISSING) from exc
    return skopt


def _py(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _grid_index(bound: float, q: float, round_fn: Any) -> int:
    """``bound``'s index on the grid of multiples of ``q``, rounded inwards (as Tune's ``Quantized`` sampler)."""
    scaled = bound / q
    return int(round(scaled)) if math.isclose(scaled, round(scaled)) else int(round_fn(scaled))


def _quantized(name: str, dom: Any, q: float) -> Any:
    """A quantized Tune domain as a skopt ``Integer`` over the indices ``k`` of its values ``k * q``.

    Tune's ``Quantized`` sampler draws the multiples of ``q`` between the bounds rounded inwards, upper bound
    included (``qrandint(..., q=1)``: excluded, as ``randint``); so does the GP here, on the index.
    """
    from skopt.space import Integer as SkInt

    base = dom.get_sampler().get_sampler()
    bounded = isinstance(dom, (Float, Integer)) and not isinstance(base, Normal)
    if not bounded or not (q > 0 and math.isfinite(dom.lower) and math.isfinite(dom.upper)):
        raise ConfigError(QUANTIZED_UNSUPPORTED.format(name=name, dom=describe_domain(dom), q=q))
    lo, hi = _grid_index(dom.lower, q, math.ceil), _grid_index(dom.upper, q, math.floor)
    if isinstance(dom, Integer) and q == 1:
        hi -= 1
    if hi <= lo:
        raise ConfigError(QUANTIZED_EMPTY.format(name=name, dom=describe_domain(dom), q=q,
                                                 count="a single" if hi == lo else "no"))
    return SkInt(lo, hi, prior="log-uniform" if isinstance(base, LogUniform) else "uniform", name=name)


def _dimension(name: str, dom: Any) -> Any:
    """A Tune domain, a skopt Dimension, a (low, high) tuple or a list of choices -> skopt Dimension."""
    from skopt.space import Categorical as SkCat, Dimension, Integer as SkInt, Real

    if isinstance(dom, Dimension):
        dom.name = name
        return dom
    q = quantum(dom)
    if q is not None:
        return _quantized(name, dom, q)
    bounded = isinstance(dom, (Float, Integer)) and not isinstance(dom.get_sampler(), Normal)
    if bounded and math.isfinite(dom.lower) and math.isfinite(dom.upper):
        prior = "log-uniform" if isinstance(dom.get_sampler(), LogUniform) else "uniform"
        if isinstance(dom, Integer):  # tune.randint's upper is exclusive
            return SkInt(dom.lower, dom.upper - 1, prior=prior, name=name)
        return Real(dom.lower, dom.upper, prior=prior, name=name)
    if isinstance(dom, Categorical):
        return SkCat(list(dom.categories), name=name)
    if isinstance(dom, tuple) and len(dom) == 2:
        return (SkInt if all(isinstance(v, int) for v in dom) else Real)(*dom, name=name)
    if isinstance(dom, list):
        return SkCat(dom, name=name)
    raise ConfigError(UNSUPPORTED_DOMAIN.format(name=name, dom=describe_domain(dom)))


class SkoptSearcher(PickledStateMixin, Searcher):
    """Bayesian optimisation with ``skopt.Optimizer``, with ``gp_minimize`` semantics.

    Run one trial at a time and it asks exactly the points ``gp_minimize(f, space, n_calls=...,
    n_initial_points=..., acq_func=..., random_state=...)`` evaluates (same GP estimator, same
    random stream; tested). Concurrent trials get distinct points through the constant-liar
    strategy (pending points told to a copy of the optimizer at the best value seen, skopt's
    ``cl_min``). Once ``n_calls`` points were suggested, ``suggest`` returns ``Searcher.FINISHED``.

    As Tune's own searchers (HyperOptSearch, OptunaSearch): a nested space (``{"opt": {"lr":
    tune.loguniform(1e-4, 1e-1)}}``) is searched flat (``"opt/lr"``) and every config handed back
    nested; a quantized domain (``tune.quniform``, ``qloguniform``, ``qrandint``, ``qlograndint``)
    is searched on its multiples of ``q`` only (the GP sees the index ``k`` of ``k * q``), so every
    suggested value is a multiple of ``q`` within the bounds; ``TuneConfig``'s metric and mode
    are taken as HyperOptSearch takes them (see ``_searcher_util.take_search_properties``).

    Args:
        space: ``{name: tune domain | skopt Dimension | (low, high) | [choices]}``, possibly nested
            in dicts; or ``None`` to take the Tune ``param_space``'s domains in
            ``set_search_properties``.
        metric, mode: the reported metric and ``"min"``/``"max"`` (may come from ``TuneConfig``).
        n_calls: total number of suggested points (``None`` = unlimited; stop with ``num_samples``).
        n_initial_points: random points before the GP is used (gp_minimize: 10).
        acq_func: ``"gp_hedge"`` (gp_minimize's default), ``"EI"``, ``"PI"`` or ``"LCB"``.
        random_state: seed (the paper uses 42).
        points_to_evaluate: configs tried first (gp_minimize's ``x0``), nested as the space;
            they count as calls.
        penalty: what a failed trial (errored, or its metric missing, NaN or inf) tells the GP, so
            that it stops proposing the failing region. A number: that value, in the metric's own
            units (e.g. a loss no working trial reaches). ``"worst"``: the worst finite value told
            so far, at the time of the failure (failures before any finite value wait and are told
            at the first one's value). ``None`` (default): the point is not told, with a warning (it
            still counts as a call), and the GP may propose the same region again.
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
        penalty: float | str | None = None,
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
        if penalty is not None and not (penalty == "worst" or (
                isinstance(penalty, (int, float)) and not isinstance(penalty, bool) and math.isfinite(penalty))):
            raise ConfigError(PENALTY_INVALID.format(penalty=penalty))
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
        self._names: list[str] = []  # flat names ("opt/lr" for {"opt": {"lr": ...}})
        self._quanta: dict[str, tuple[float, Any]] = {}  # quantized name -> (q, Tune domain): the GP sees k of k * q
        self._opt: Any = None
        self._live: dict[str, list] = {}
        self._waiting: list[list] = []  # failed points for penalty="worst", before any finite value
        self._n_suggested = 0
        self.history: list[tuple[dict[str, Any], float]] = []  # (config, metric value) told
        if space:
            self._setup(flat_space(space))

    def _setup(self, space: Mapping[str, Any]) -> None:
        import numpy as np
        from sklearn.utils import check_random_state
        from skopt.utils import cook_estimator, normalize_dimensions

        s = self._settings
        self._names = list(space)
        self._quanta = {n: (q, space[n]) for n in self._names if (q := quantum(space[n])) is not None}
        dims = normalize_dimensions([_dimension(n, space[n]) for n in self._names])
        rng = check_random_state(s["random_state"])
        estimator = s["base_estimator"]
        if estimator == "GP":  # exactly as gp_minimize builds it (one draw from rng first)
            estimator = cook_estimator(
                "GP", space=dims, random_state=rng.randint(0, np.iinfo(np.int32).max), noise=s["noise"]
            )
        self._opt = _skopt().Optimizer(
            dims,
            estimator,
            n_initial_points=s["n_initial_points"] + len(self._points_to_evaluate),
            initial_point_generator=s["initial_point_generator"],
            acq_func=s["acq_func"],
            acq_optimizer=s["acq_optimizer"],
            random_state=rng,
            acq_optimizer_kwargs={
                "n_points": s["n_points"],
                "n_restarts_optimizer": s["n_restarts_optimizer"],
                "n_jobs": 1,
            },
            acq_func_kwargs={"xi": s["xi"], "kappa": s["kappa"]},
        )
        for p in self._points_to_evaluate:
            missing = set(self._names) - set(flat_space(p))
            if missing:
                raise ConfigError(f"points_to_evaluate entry {p} lacks {sorted(missing)}.")

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Take the ``param_space``'s domains (nested dicts allowed) unless the searcher owns its space, and
        TuneConfig's metric / mode as Tune's HyperOptSearch does (``take_search_properties``). ``False``: the
        searcher owns its space and the param_space has domains too, which Tune reports as a clash."""
        _, domains, grids = parse_spec_vars(config)
        owns_space = self._opt is not None
        take_search_properties(self, metric, mode, owns_space)
        if owns_space:
            return not (domains or grids)
        if grids:
            raise ConfigError(GRID_IN_PARAM_SPACE.format(names=", ".join("/".join(map(str, p)) for p, _ in grids)))
        if not domains:
            return False
        self._setup(flat_domains(domains))
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]  # Ray says Optional[Dict], but its Searcher.FINISHED is a str
        if self._opt is None:
            raise RuntimeError(UNDEFINED_SPACE.format(cls=type(self).__name__))
        if not self._metric or not self._mode:
            raise RuntimeError(UNDEFINED_METRIC_MODE.format(cls=type(self).__name__))
        if self.n_calls is not None and self._n_suggested >= self.n_calls:
            return Searcher.FINISHED
        if self._points_to_evaluate:
            x = self._point(self._points_to_evaluate.pop(0))
        else:
            x = self._ask()
        self._live[trial_id] = x
        self._n_suggested += 1
        return self._config(x)

    def _point(self, config: Mapping[str, Any]) -> list:
        """A (nested) config as the optimizer's point (a quantized value as its index on the grid of q)."""
        flat = flat_space(config)
        missing = set(self._names) - set(flat)
        if missing:
            raise ConfigError(f"{config} lacks {sorted(missing)} of the search space {self._names}.")
        return [round(flat[n] / self._quanta[n][0]) if n in self._quanta else flat[n] for n in self._names]

    def _config(self, x: Sequence[Any]) -> dict[str, Any]:
        """The optimizer's point as the nested config a trial gets (a quantized index k as its value k * q)."""
        flat = {}
        for n, v in zip(self._names, x):
            if n in self._quanta:
                q, dom = self._quanta[n]
                v = dom.cast(float(f"{int(v) * q:.15g}"))  # k * q without float dust (0.30000000000000004)
            flat[n] = _py(v)
        return nested(flat)

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
        self._tell(self._point(parameters), {self._metric: value}, error, f"point {parameters}")

    def _tell(self, x: list, result: Mapping | None, error: bool, who: str) -> None:
        y, why = finite_objective(self, result, error)
        if y is None:
            if self.penalty is None:
                warnings.warn(f"SkoptSearcher: {who} {why}; its point is not told to the GP (pass penalty=... to tell "
                              "a value).")
                return
            if self.penalty != "worst":
                y = float(self.penalty) if self._mode == "min" else -float(self.penalty)
            elif self._opt.yi:
                y = max(self._opt.yi)  # the worst value told so far (yi are minimised)
            else:
                self._waiting.append(x)  # told at the first finite value's
                return
        self._opt.tell(x, y)
        self.history.append((self._config(x), y if self._mode == "min" else -y))
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            worst = max(self._opt.yi)
            self._opt.tell(waiting, [worst] * len(waiting))
            self.history += [(self._config(w), worst if self._mode == "min" else -worst) for w in waiting]

    @property
    def best(self) -> tuple[dict[str, Any], float] | None:
        """The best (config, metric value) told so far."""
        if not self.history:
            return None
        pick = min if self._mode == "min" else max
        return pick(self.history, key=lambda h: h[1])
