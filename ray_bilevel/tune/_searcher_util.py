"""Shared pieces of the baseline searchers: the objective of a finished trial, pickled state, nested spaces,
readable domains and how Tune's ``metric`` / ``mode`` are taken (as Ray Tune's own searchers do)."""
from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Mapping
from typing import Any

from ray.tune.search import Searcher

from ray_bilevel.config import ConfigError

__all__ = ["finite_objective", "PickledStateMixin", "flat_space", "flat_domains", "nested", "describe_domain",
           "take_search_properties", "DELIMITER",
           "UNDEFINED_METRIC_MODE"]

#: Joins the keys of a nested space into one flat name (``{"opt": {"lr": ...}}`` -> ``"opt/lr"``), as Tune's
#: ``flatten_dict`` / ``unflatten_dict`` do for HyperOptSearch and OptunaSearch.
DELIMITER = "/"

DELIMITER_IN_KEY = ("search space key {key!r} contains {delim!r}, which joins the keys of a nested space; rename it "
                    "or nest it (e.g. {{'opt': {{'lr': ...}}}} instead of {{'opt/lr': ...}}).")
LIST_IN_SPACE = ("search space entry {path} sits in a list; the searcher takes domains in (nested) dicts only, "
                 "e.g. {{'layers': {{'0': tune.uniform(0, 1)}}}}.")
UNDEFINED_METRIC_MODE = (
    "{cls} needs `metric` and `mode`: pass them to the searcher, or to tune.TuneConfig with a non-empty param_space "
    "(Tune passes TuneConfig's pair to a searcher only then).")
METRIC_MODE_CONFLICT = (
    "{cls} keeps its own metric={own_metric!r}, mode={own_mode!r} while tune.TuneConfig says metric={metric!r}, "
    "mode={mode!r} (a searcher that owns its search space keeps its pair, as Tune's HyperOptSearch does): Tune ranks "
    "the trials on TuneConfig's pair while the searcher optimises its own. Pass the same metric and mode to both, or "
    "only to tune.TuneConfig.")


def finite_objective(searcher: Searcher, result: Mapping | None, error: bool) -> tuple[float | None, str]:
    """The metric of a finished trial as a value to *minimise*, or (None, why it is unusable)."""
    if error:
        return None, "errored"
    if not result or searcher.metric not in result:
        return None, f"reported no {searcher.metric!r}"
    try:
        value = float(result[searcher.metric])
    except (TypeError, ValueError):
        return None, f"reported a non-numeric {searcher.metric!r}={result[searcher.metric]!r}"
    if not math.isfinite(value):
        return None, f"reported {searcher.metric}={value}"
    return (value if searcher.mode == "min" else -value), ""


class PickledStateMixin:
    """``get_state`` / ``set_state`` / ``save`` / ``restore`` by pickling the searcher's ``__dict__``
    (what ``Tuner.restore`` and ``ConcurrencyLimiter`` call)."""

    def get_state(self) -> dict:
        return dict(self.__dict__)

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))


# -- nested spaces ----------------------------------------------------------------------------------


def _join(path: tuple) -> str:
    for key in path:
        if not isinstance(key, str):
            raise ConfigError(LIST_IN_SPACE.format(path="/".join(map(str, path))))
        if DELIMITER in key:
            raise ConfigError(DELIMITER_IN_KEY.format(key=key, delim=DELIMITER))
    return DELIMITER.join(path)


def flat_space(space: Mapping[str, Any], prefix: tuple = ()) -> dict[str, Any]:
    """``{"opt": {"lr": d1}, "x": d2}`` -> ``{"opt/lr": d1, "x": d2}``; a ``tune.grid_search`` dict is a leaf."""
    out: dict[str, Any] = {}
    for key, value in space.items():
        path = (*prefix, key)
        if isinstance(value, Mapping) and "grid_search" not in value:
            out.update(flat_space(value, path))
        else:
            out[_join(path)] = value
    return out


def flat_domains(domains: list[tuple[tuple, Any]]) -> dict[str, Any]:
    """The ``(path, domain)`` pairs of ``parse_spec_vars`` as ``{"opt/lr": domain}``."""
    return {_join(tuple(path)): dom for path, dom in domains}


def nested(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"opt/lr": 0.1}`` -> ``{"opt": {"lr": 0.1}}`` (Tune's ``unflatten_dict``); flat names stay as they are."""
    if not any(DELIMITER in k for k in config):
        return dict(config)
    from ray.tune.utils.util import unflatten_dict

    return unflatten_dict(dict(config), delimiter=DELIMITER)


# -- domains -----------------------------------------------------------------------------------------


def quantum(dom: Any) -> float | None:
    """The ``q`` of a quantized Tune domain (``tune.quniform``, ``qloguniform``, ``qrandint``, ...), else None."""
    from ray.tune.search.sample import Domain, Quantized

    if not isinstance(dom, Domain):
        return None
    sampler = dom.get_sampler()
    return sampler.q if isinstance(sampler, Quantized) else None


def describe_domain(dom: Any) -> str:
    """A Tune domain as the call that makes it (``tune.qloguniform(0.0001, 0.1, q=5e-05)``), else its repr."""
    from ray.tune.search.sample import Categorical, Domain, Float, Function, Integer, LogUniform, Normal, Quantized

    if isinstance(dom, Mapping) and "grid_search" in dom:
        return f"tune.grid_search({list(dom['grid_search'])!r})"
    if not isinstance(dom, Domain):
        return repr(dom)
    if isinstance(dom, Categorical):
        return f"tune.choice({list(dom.categories)!r})"
    if isinstance(dom, Function):
        return "tune.sample_from(...)"
    if not isinstance(dom, (Float, Integer)):
        return repr(dom)
    sampler = dom.get_sampler()
    q = sampler.q if isinstance(sampler, Quantized) else None
    base = sampler.get_sampler() if isinstance(sampler, Quantized) else sampler
    if isinstance(base, Normal):
        name, args = "randn", f"{base.mean}, {base.sd}"
    else:
        log = isinstance(base, LogUniform)
        name = (
            ("lograndint" if log else "randint") if isinstance(dom, Integer) else ("loguniform" if log else "uniform")
        )
        args = f"{dom.lower}, {dom.upper}"
    return f"tune.{'q' if q is not None else ''}{name}({args}{f', q={q}' if q is not None else ''})"


# -- metric and mode ---------------------------------------------------------------------------------


def take_search_properties(searcher: Searcher, metric: str | None, mode: str | None, owns_space: bool) -> None:
    """Take ``TuneConfig``'s ``metric`` / ``mode`` as Ray Tune's ``HyperOptSearch`` does (Ray 2.60).

    A searcher whose space came from the ``param_space`` takes TuneConfig's pair, replacing its own (HyperOptSearch
    sets ``_metric`` / ``_mode`` whenever Tune passes them). A searcher that owns its space keeps its own pair
    (HyperOptSearch returns ``False`` before reading them; Tune raises nothing then) and, where it has none, takes
    TuneConfig's (where HyperOptSearch stays without and fails in ``suggest``); a conflict is warned about, naming
    both pairs. Tune calls ``set_search_properties`` only with a non-empty ``param_space``: with ``{}`` a searcher
    learns nothing from TuneConfig, like HyperOptSearch.
    """
    own_metric, own_mode = searcher._metric, searcher._mode
    if not owns_space:
        searcher._metric = metric or own_metric
        searcher._mode = mode or own_mode
        return
    if (own_metric and metric and metric != own_metric) or (own_mode and mode and mode != own_mode):
        warnings.warn(METRIC_MODE_CONFLICT.format(cls=type(searcher).__name__, own_metric=own_metric,
                                                  own_mode=own_mode, metric=metric, mode=mode), stacklevel=3)
    searcher._metric = own_metric or metric
    searcher._mode = own_mode or mode
