"""Learnable 4-parameter noise schedules q = (start, end, tau, eps): cosine (16) and sigmoid (34).

Two parameterisations (docs/algorithms.md §3.2; the default is discussed in §6.26):

* ``"chen2023"`` (default): endpoint-normalised form of Chen 2023 (arXiv 2301.10972, Alg. 1) with the
  eps offset, evaluated at t = i/T, i = 0..T::

      cosine:  v(t) = cos(((t(e - s) + s + eps) / (1 + eps)) * pi/2) ** (2 tau)
               abar(t) = clip((v(t) - v(1)) / (v(0) - v(1)), clip_min, 1)
      sigmoid: v(t) = sigmoid((t(e - s) + s) / tau + eps)
               abar(t) = clip((v(1) - v(t)) / (v(1) - v(0)), clip_min, 1)

  so abar(0) = 1 and abar(1) = clip_min for every admissible q (docs/algorithms.md §3.2).
* ``"paper"``: the released form of (16)/(34) (docs/algorithms.md §3.2), start/end in timestep units, no end
  normalisation (abar_T can stay far from 0; a warning says so)::

      s_i = i (e - s) + s
      cosine:  f_i = clamp(cos(((s_i/T + eps) / (1 + eps)) * pi/2), 0, 1) ** (2 tau)
      sigmoid: f_i = sigmoid(((T - s_i)/T) / tau + eps)

Both then use the index convention of docs/algorithms.md §3.2: ``beta[i-1] = clip(1 - f_i/f_{i-1}, 0, 0.999)`` for
i = 1..T and ``alphas_cumprod[t] = prod_{s<=t} (1 - beta[s])`` for t = 0..T-1. Everything is
computed in float64; ``v ** (2 tau)`` has its gradient guarded at v = 0 (``d/dtau = 2 v^{2tau} log v``).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ray_bilevel.config import ConfigError

__all__ = [
    "FAMILIES",
    "PARAMETERISATIONS",
    "NAMES",
    "DDIM_DEFAULT",
    "SIGMOID_DEFAULT",
    "RELEASED_BOUNDS",
    "alphas_cumprod_from",
    "betas_from",
    "NoiseSchedule",
]

FAMILIES = ("cosine", "sigmoid")
PARAMETERISATIONS = ("chen2023", "paper")
#: Order of the entries of the 4-vector q.
NAMES = ("start", "end", "tau", "eps")
#: The DDIM default cosine schedule (Nichol & Dhariwal); identical in both parameterisations (docs/algorithms.md §3.2).
DDIM_DEFAULT: dict[str, float] = dict(start=0.0, end=1.0, tau=1.0, eps=0.008)
#: Chen 2023's sigmoid default (start -3, end 3, tau 1; no eps).
SIGMOID_DEFAULT: dict[str, float] = dict(start=-3.0, end=3.0, tau=1.0, eps=0.0)
_FAMILY_DEFAULT = {"cosine": DDIM_DEFAULT, "sigmoid": SIGMOID_DEFAULT}
#: Released projection bounds per family (docs/algorithms.md §3.2); ``end`` is additionally kept >= start + 1e-10.
RELEASED_BOUNDS: dict[str, dict[str, tuple[float, float]]] = {
    "cosine": {"start": (0.0, 1.0), "end": (0.0, 1.0), "tau": (1.0, 1e6), "eps": (0.0, 1.0)},
    "sigmoid": {
        "start": (-math.inf, math.inf),
        "end": (-math.inf, math.inf),
        "tau": (0.1, 1.0),
        "eps": (-math.inf, math.inf),
    },
}
_END_GAP = 1e-10
_BETA_MAX = 0.999
#: abar_T above this is "not noise": an error for chen2023, a warning for the paper form.
_ABAR_T_MAX = 1e-2
#: alphas_cumprod[0] below this means the schedule destroys the data in its first step: an error.
_ABAR_0_MIN = 0.5


def _check_kind(family: str, parameterisation: str) -> None:
    if family not in FAMILIES:
        raise ConfigError(f"unknown schedule family {family!r}; choose one of {list(FAMILIES)}.")
    if parameterisation not in PARAMETERISATIONS:
        raise ConfigError(f"unknown parameterisation {parameterisation!r}; choose one of {list(PARAMETERISATIONS)}.")


def _safe_pow(base: Tensor, exponent: Tensor) -> Tensor:
    """``base ** exponent`` for base >= 0 with zero value and zero gradient where base == 0."""
    positive = base > 0
    safe = torch.where(positive, base, torch.ones_like(base))
    return torch.where(positive, safe**exponent, torch.zeros_like(base))


def _signal_curve(q: Tensor, family: str, parameterisation: str, T: int, clip_min: float) -> Tensor:
    """f_i for i = 0..T (length T+1); the cumulative product of ratios gives alphas_cumprod."""
    start, end, tau, eps = q.unbind()
    i = torch.arange(T + 1, dtype=torch.float64, device=q.device)
    if parameterisation == "chen2023":
        t = i / T
        if family == "cosine":
            angle = (t * (end - start) + start + eps) / (1 + eps) * (math.pi / 2)
            v = _safe_pow(torch.cos(angle).clamp(0.0, 1.0), 2 * tau)
            abar = (v - v[-1]) / (v[0] - v[-1])
        else:
            v = torch.sigmoid((t * (end - start) + start) / tau + eps)
            abar = (v[-1] - v) / (v[-1] - v[0])
        return abar.clamp(clip_min, 1.0)
    s_i = i * (end - start) + start
    if family == "cosine":
        angle = (s_i / T + eps) / (1 + eps) * (math.pi / 2)
        return _safe_pow(torch.cos(angle).clamp(0.0, 1.0), 2 * tau)
    return torch.sigmoid(((T - s_i) / T) / tau + eps)


def betas_from(
    q: Tensor, family: str = "cosine", parameterisation: str = "chen2023", T: int = 1000, clip_min: float = 1e-9
) -> Tensor:
    """beta_1..beta_T (length T, float64) of schedule ``q`` = (start, end, tau, eps); differentiable in q.

    ``beta[i-1] = clip(1 - f_i / f_{i-1}, 0, 0.999)`` (docs/algorithms.md §3.2, index convention).
    """
    _check_kind(family, parameterisation)
    if T < 2:
        raise ConfigError(f"T (number of diffusion steps) must be >= 2, got {T}.")
    q = torch.as_tensor(q, dtype=torch.float64)
    if q.shape != (4,):
        raise ConfigError(f"q must be the 4-vector (start, end, tau, eps), got shape {tuple(q.shape)}.")
    f = _signal_curve(q, family, parameterisation, T, clip_min)
    prev = f[:-1]
    positive = prev > 0
    ratio = torch.where(positive, f[1:] / torch.where(positive, prev, torch.ones_like(prev)), torch.zeros_like(prev))
    return (1.0 - ratio).clamp(0.0, _BETA_MAX)


def alphas_cumprod_from(
    q: Tensor, family: str = "cosine", parameterisation: str = "chen2023", T: int = 1000, clip_min: float = 1e-9
) -> Tensor:
    """abar_t for t = 0..T-1 (float64) of schedule ``q`` = (start, end, tau, eps); differentiable in q.

    Pure function: zeroth-order perturbations of q evaluate it without touching a module.
    """
    return torch.cumprod(1.0 - betas_from(q, family, parameterisation, T, clip_min), dim=0)


def _to_json(x: float) -> float | None:
    """Infinite bounds become ``None`` so configs are strict JSON."""
    return x if math.isfinite(x) else None


def _from_json(x: float | None, default: float) -> float:
    return default if x is None else float(x)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


class NoiseSchedule(nn.Module):
    """A learnable schedule: four scalar float64 ``nn.Parameter``s ``start``, ``end``, ``tau``, ``eps``.

    Args:
        family: ``"cosine"`` (16) or ``"sigmoid"`` (34).
        parameterisation: ``"chen2023"`` (default, endpoint-normalised) or ``"paper"`` (released form).
        T: number of diffusion steps.
        start, end, tau, eps: initial values; ``None`` takes the family default
            (cosine: DDIM default (0, 1, 1, 0.008); sigmoid: Chen's (-3, 3, 1, 0)).
        clip_min: lower clip of the chen2023 abar(t) (Chen's 1e-9).
        bounds: ``{name: (low, high)}`` projection bounds overriding :data:`RELEASED_BOUNDS`.

    Raises:
        ConfigError: infeasible initial values (see :meth:`check_feasible`).
    """

    def __init__(
        self,
        family: str = "cosine",
        parameterisation: str = "chen2023",
        T: int = 1000,
        start: float | None = None,
        end: float | None = None,
        tau: float | None = None,
        eps: float | None = None,
        clip_min: float = 1e-9,
        bounds: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        super().__init__()
        _check_kind(family, parameterisation)
        if int(T) != T or T < 2:
            raise ConfigError(f"T (number of diffusion steps) must be an integer >= 2, got {T!r}.")
        if not 0 < clip_min < 1e-3:
            raise ConfigError(f"clip_min must lie in (0, 1e-3), got {clip_min!r}.")
        self.family, self.parameterisation, self.T, self.clip_min = family, parameterisation, int(T), float(clip_min)
        self.bounds = {k: (float(lo), float(hi)) for k, (lo, hi) in RELEASED_BOUNDS[family].items()}
        for key, pair in dict(bounds or {}).items():
            if key not in NAMES:
                raise ConfigError(f"unknown bound {key!r}; bounds may name {list(NAMES)}.")
            lo, hi = (float(v) for v in pair)
            if not lo <= hi:
                raise ConfigError(f"bound for {key!r} must have low <= high, got ({lo}, {hi}).")
            self.bounds[key] = (lo, hi)
        init = dict(_FAMILY_DEFAULT[family])
        init.update({k: v for k, v in dict(start=start, end=end, tau=tau, eps=eps).items() if v is not None})
        for name in NAMES:
            self.register_parameter(name, nn.Parameter(torch.tensor(float(init[name]), dtype=torch.float64)))
        self.check_feasible()

    # -- values -----------------------------------------------------------------------------
    @property
    def q(self) -> Tensor:
        """The 4-vector (start, end, tau, eps), differentiable w.r.t. the parameters."""
        return torch.stack([getattr(self, n) for n in NAMES])

    def alphas_cumprod(self) -> Tensor:
        """abar_t, t = 0..T-1 (float64, differentiable in q)."""
        return alphas_cumprod_from(self.q, self.family, self.parameterisation, self.T, self.clip_min)

    def betas(self) -> Tensor:
        """beta_t, t = 1..T (float64, differentiable in q)."""
        return betas_from(self.q, self.family, self.parameterisation, self.T, self.clip_min)

    def forward(self) -> Tensor:
        return self.alphas_cumprod()

    def hyperparameters(self) -> dict[str, float]:
        return {n: float(getattr(self, n).detach()) for n in NAMES}

    @torch.no_grad()
    def set_hyperparameters(self, values: Mapping[str, float]) -> None:
        """Set some of start/end/tau/eps in place (parameters and optimizers stay valid); checks feasibility."""
        unknown = sorted(set(values) - set(NAMES))
        if unknown:
            raise ConfigError(f"unknown schedule parameter(s) {unknown}; valid names: {list(NAMES)}.")
        old = self.hyperparameters()
        for name, value in values.items():
            getattr(self, name).fill_(float(value))
        try:
            self.check_feasible()
        except ConfigError:
            for name, value in old.items():
                getattr(self, name).fill_(value)
            raise

    # -- feasibility ---------------------------------------------------------------------------
    def check_feasible(self) -> None:
        """Raise a one-line ``ConfigError`` if q is not an admissible schedule.

        Rules: all finite; end > start; tau > 0; cosine also needs 0 <= start, end <= 1, eps >= 0
        (the cosine argument stays in [0, pi/2], so abar is monotone, docs/algorithms.md §3.2). abar must be finite and
        start at data (abar_0 >= 0.5);
        abar_T > 1e-2 (sampling from N(0, I) would not match the training marginal at t = T) is an
        error for chen2023 (it cannot happen for admissible q) and a ``UserWarning`` for ``paper``,
        whose released form has that property by design (docs/algorithms.md §3.2).
        """
        h = self.hyperparameters()
        s, e, tau, eps = (h[n] for n in NAMES)
        bad = [n for n in NAMES if not math.isfinite(h[n])]
        if bad:
            raise ConfigError(f"schedule parameter(s) {bad} must be finite, got {h}.")
        if not e > s:
            raise ConfigError(f"`end` must be > `start`, got start={_fmt(s)} end={_fmt(e)}; pick end in (start, "
                              f"{'1]' if self.family == 'cosine' else 'inf)'}.")
        if not tau > 0:
            raise ConfigError(f"`tau` must be > 0, got tau={_fmt(tau)}; pick a positive power/temperature (default 1).")
        if self.family == "cosine":
            if s < 0:
                raise ConfigError(f"cosine `start` must be >= 0, got start={_fmt(s)}; pick start in [0, end).")
            if e > 1:
                raise ConfigError(f"cosine `end` must be <= 1, got end={_fmt(e)}; pick end in (start, 1].")
            if eps < 0:
                raise ConfigError(f"cosine `eps` must be >= 0, got eps={_fmt(eps)}; pick a small offset such as 0.008.")
        with torch.no_grad():
            curve = _signal_curve(self.q, self.family, self.parameterisation, self.T, self.clip_min)
            abar = self.alphas_cumprod()
        if not (bool(torch.isfinite(curve).all()) and bool(torch.isfinite(abar).all())):
            raise ConfigError(f"schedule {h} gives non-finite alphas_cumprod (saturated curve); move tau/eps towards "
                              f"the defaults {_FAMILY_DEFAULT[self.family]}.")
        if float(abar[0]) < _ABAR_0_MIN:
            raise ConfigError(f"schedule {h} starts at alphas_cumprod[0]={float(abar[0]):.3g} < {_ABAR_0_MIN}, not "
                              f"data; move tau/eps towards the defaults {_FAMILY_DEFAULT[self.family]}.")
        last = float(abar[-1])
        if last > _ABAR_T_MAX:
            if self.parameterisation == "chen2023":
                raise ConfigError(f"schedule {h} ends at alphas_cumprod[T-1]={last:.3g} > {_ABAR_T_MAX}, not noise; "
                                  "widen end - start or lower tau.")
            warnings.warn(
                f"paper-form {self.family} schedule {h} ends at alphas_cumprod[T-1]={last:.3g} > {_ABAR_T_MAX}: "
                "sampling from N(0, I) does not match the training marginal at t=T; use parameterisation='chen2023' to "
                "avoid this.",
                stacklevel=2,
            )

    @torch.no_grad()
    def project_(self) -> dict[str, float]:
        """Clamp q into ``self.bounds`` (and end >= start + 1e-10) in place; warn if anything moved.

        Returns the clamped hyperparameters.
        """
        before = self.hyperparameters()
        after = dict(before)
        for name in ("start", "tau", "eps"):
            lo, hi = self.bounds[name]
            after[name] = min(max(after[name], lo), hi)
        lo, hi = self.bounds["end"]
        after["end"] = min(max(after["end"], lo, after["start"] + _END_GAP), max(hi, after["start"] + _END_GAP))
        moved = {n: (before[n], after[n]) for n in NAMES if after[n] != before[n]}
        if moved:
            text = ", ".join(f"{n} {a:.6g}->{b:.6g}" for n, (a, b) in moved.items())
            warnings.warn(f"projected the noise schedule onto its bounds: {text}.", stacklevel=2)
            for name in moved:
                getattr(self, name).fill_(after[name])
        return after

    # -- export / config ---------------------------------------------------------------------
    def to_diffusers(self, **overrides: Any):
        """A ``diffusers.DDIMScheduler`` with ``trained_betas`` = our betas (alphas_cumprod match to ~1e-7)."""
        from diffusers import DDIMScheduler

        kwargs: dict[str, Any] = dict(
            num_train_timesteps=self.T,
            trained_betas=self.betas().detach().cpu().tolist(),
            clip_sample=False,
            set_alpha_to_one=True,
            steps_offset=0,
            prediction_type="epsilon",
        )
        kwargs.update(overrides)
        return DDIMScheduler(**kwargs)

    def to_config(self) -> dict[str, Any]:
        """JSON-able dict recording family, parameterisation (learned values are not transferable between forms)."""
        return {
            "family": self.family,
            "parameterisation": self.parameterisation,
            "T": self.T,
            **self.hyperparameters(),
            "clip_min": self.clip_min,
            "bounds": {k: [_to_json(lo), _to_json(hi)] for k, (lo, hi) in self.bounds.items()},
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NoiseSchedule:
        known = {"family", "parameterisation", "T", "clip_min", "bounds", *NAMES}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"unknown NoiseSchedule config key(s) {unknown}; valid keys: {sorted(known)}.")
        kwargs = dict(config)
        if "bounds" in kwargs and kwargs["bounds"] is not None:
            kwargs["bounds"] = {
                k: (_from_json(lo, -math.inf), _from_json(hi, math.inf)) for k, (lo, hi) in kwargs["bounds"].items()
            }
        return cls(**kwargs)

    def extra_repr(self) -> str:
        h = self.hyperparameters()
        return f"family={self.family}, parameterisation={self.parameterisation}, T={self.T}, " + ", ".join(
            f"{k}={_fmt(v)}" for k, v in h.items()
        )
